"""One GPU of the cluster: the model set on its device, running jobs with the shared runner.

`GpuReplica` is the class of the Serve deployment (`cluster.py` wraps it with one GPU
per replica and `max_ongoing_requests=1`). `run` starts `run_job` in a thread, as the
one-machine worker does, and bridges its reports into the async generator Serve
streams to the gateway. A cancel from the gateway (or the gateway going away) arrives
as the generator's cancellation or closing: it sets the job's flag, and the thread
stops at the next sampler step. The next job waits for that thread, so a GPU never
runs two jobs.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import threading
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass

from protocol import ModelInfo

from ..errors import to_wire_error
from ..jobs.job import JobEnd, JobResult, JobState, JobWork
from ..jobs.runner import Preview, run_job
from ..store.model_sets import open_model_set
from .config import ModelOptions
from .events import Finished, Progress, ReplicaEvent, Result, Started

log = logging.getLogger(__name__)

THREAD_POLL_SECONDS = 0.01


@dataclass(frozen=True)
class ReplicaInfo:
    """What a replica runs, and where."""

    model: ModelInfo
    pid: int
    node: str
    device: str
    gpu_ids: str  # CUDA_VISIBLE_DEVICES as Ray set it ("" without one)


class GpuReplica:
    """The deployment's replica: loads the model once, then runs one job at a time.

    Args:
        options: where the model comes from (the same on every node).
        preview_side: longest side of progress previews.
    """

    def __init__(self, options: ModelOptions, preview_side: int = 128) -> None:
        self.models = open_model_set(**asdict(options))
        self.preview_side = preview_side
        models = self.models
        self.info = ReplicaInfo(
            model=ModelInfo(models.base.name, models.family, models.is_demo, models.warning),
            pid=os.getpid(),
            node=socket.gethostname(),
            device=str(models.device),
            gpu_ids=os.environ.get("CUDA_VISIBLE_DEVICES", ""),
        )
        self._thread: threading.Thread | None = None
        log.info("replica %d ready: %s on %s", self.info.pid, models.base.name, models.device)

    def describe(self) -> ReplicaInfo:
        return self.info

    async def run(self, work: JobWork) -> AsyncIterator[ReplicaEvent]:
        """Run one job; yields Started, a Progress per step, its Results, then Finished."""
        while self._thread is not None and self._thread.is_alive():
            await asyncio.sleep(THREAD_POLL_SECONDS)  # a cancelled job's last step
        loop = asyncio.get_running_loop()
        events: asyncio.Queue[ReplicaEvent] = asyncio.Queue()
        cancelled = threading.Event()
        reports = _Bridge(loop, events)

        def body() -> None:
            try:
                end = run_job(work, self.models, reports, cancelled, self.preview_side)
            except BaseException:  # run_job reports a job's failures; this is a bug
                log.exception("job %s: the runner failed", work.label)
                end = JobEnd(JobState.FAILED, to_wire_error(None))
            loop.call_soon_threadsafe(events.put_nowait, Finished(end))

        self._thread = threading.Thread(target=body, name=f"job {work.label}", daemon=True)
        self._thread.start()
        try:
            yield Started(self.info.pid, self.info.node, self.info.device)
            while True:
                event = await events.get()
                yield event
                if isinstance(event, Finished):
                    return
        finally:  # cancelled, or the stream closed: stop at the next step
            cancelled.set()


class _Bridge:
    """`run_job`'s reports, from its thread onto the replica's event loop."""

    def __init__(
        self, loop: asyncio.AbstractEventLoop, events: asyncio.Queue[ReplicaEvent]
    ) -> None:
        self.loop = loop
        self.events = events

    def progress(self, step: int, total: int, preview: Preview | None) -> None:
        self.loop.call_soon_threadsafe(self.events.put_nowait, Progress(step, total, preview))

    def result(self, result: JobResult) -> None:
        self.loop.call_soon_threadsafe(self.events.put_nowait, Result(result))
