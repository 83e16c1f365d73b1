"""Where admitted jobs run: the seam between the job queue and the GPUs.

    JobQueue ── submit / cancel ──▶ Executor ── reports, on the loop ──▶ JobQueue
                                      ├── LocalExecutor: one GpuWorker thread here
                                      └── backend.cluster.ClusterExecutor: a Ray Serve
                                          deployment, one replica per GPU

The queue owns sessions, admission and delivery; an executor only runs what it is
given and says what happened, always on the event loop. Both executors run a job's
body with the same `runner.run_job`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Protocol

from protocol import ErrorInfo, LoRAInfo, ModelInfo

from ..model_set import ModelSet
from .job import Job, JobResult, JobState
from .runner import Preview
from .worker import GpuWorker


class JobReports(Protocol):
    """What an executor reports about its jobs, on the event loop (the job queue)."""

    def on_started(self, job: Job) -> None: ...

    def on_progress(self, job: Job, step: int, total: int, preview: Preview | None) -> None: ...

    def on_result(self, job: Job, result: JobResult) -> None: ...

    def on_finished(self, job: Job, state: JobState, error: ErrorInfo | None) -> None: ...


class Executor(Protocol):
    """Runs admitted jobs somewhere and reports on them; every method runs on the loop.

    Attributes:
        model: the model its GPUs run (for `welcome` and for checking requests).
        loras: the LoRAs a request may name, by name (for `welcome` and the checks).
    """

    model: ModelInfo
    loras: Mapping[str, LoRAInfo]

    def start(self, reports: JobReports, loop: asyncio.AbstractEventLoop) -> None:
        """Begin taking jobs; reports go to `reports`, called on `loop`."""

    def submit(self, job: Job) -> int:
        """Take a job; returns its place in the queue (0 = runs next, or now).

        Raises:
            protocol.QueueFull: it holds as many waiting jobs as it may.
        """

    def position(self, job: Job) -> int:
        """The job's place in the queue now (0 once it runs)."""

    def cancel(self, job: Job) -> None:
        """Its `cancel_requested` is set: drop it if waiting, interrupt it if running."""

    async def stop(self, timeout: float) -> bool:
        """Drop waiting jobs, interrupt running ones; True if all ended within `timeout`."""


class LocalExecutor:
    """This machine's one GPU worker thread, jobs first come, first served.

    Args:
        models: the loaded models (the worker thread's from `start` on).
        preview_side: longest side of progress previews.
    """

    def __init__(self, models: ModelSet, preview_side: int = 128) -> None:
        self.models = models
        self.model = ModelInfo(models.base.name, models.family, models.is_demo, models.warning)
        self.loras = dict(models.offered_loras)
        self.preview_side = preview_side
        self.worker: GpuWorker | None = None
        self._order: list[Job] = []  # unfinished jobs, oldest first (the running one too)

    def start(self, reports: JobReports, loop: asyncio.AbstractEventLoop) -> None:
        self.worker = GpuWorker(self.models, _LoopListener(self, reports, loop), self.preview_side)
        self.worker.start()

    def submit(self, job: Job) -> int:
        assert self.worker is not None, "start() first"
        self._order.append(job)
        self.worker.enqueue(job)
        return self._order.index(job)

    def position(self, job: Job) -> int:
        return self._order.index(job) if job in self._order else 0

    def cancel(self, job: Job) -> None:
        if job.state is JobState.QUEUED and job in self._order:
            self._order.remove(job)  # the worker skips it when its turn comes

    async def stop(self, timeout: float) -> bool:
        for job in self._order:
            job.cancel_requested.set()
        self._order.clear()
        if self.worker is None:
            return True
        return await asyncio.to_thread(self.worker.stop, timeout)

    def _finished(self, job: Job) -> None:
        if job in self._order:
            self._order.remove(job)


class _LoopListener:
    """The worker's listener: every report hops from the worker thread to the loop."""

    def __init__(
        self, executor: LocalExecutor, reports: JobReports, loop: asyncio.AbstractEventLoop
    ) -> None:
        self.executor = executor
        self.reports = reports
        self.loop = loop

    def job_started(self, job: Job) -> None:
        self.loop.call_soon_threadsafe(self.reports.on_started, job)

    def job_progress(self, job: Job, step: int, total: int, preview: Preview | None) -> None:
        self.loop.call_soon_threadsafe(self.reports.on_progress, job, step, total, preview)

    def job_result(self, job: Job, result: JobResult) -> None:
        self.loop.call_soon_threadsafe(self.reports.on_result, job, result)

    def job_finished(self, job: Job, state: JobState, error: ErrorInfo | None) -> None:
        self.loop.call_soon_threadsafe(self._finished, job, state, error)

    def _finished(self, job: Job, state: JobState, error: ErrorInfo | None) -> None:
        self.executor._finished(job)
        self.reports.on_finished(job, state, error)
