"""The gateway's executor for a cluster: fair turns, streaming handles, cancel, one retry.

Jobs wait in the gateway (`backend.jobs.turns`), not in Ray: at most one job per
replica is handed to the deployment at a time, so the next job is chosen fairly
between clients when a GPU frees, and the waiting line is bounded with a clear
"busy". Each handed-out job is one streaming call (`handle.options(stream=True)`); its
events become the queue's reports.

A replica that dies while it runs a job makes Serve raise `ActorDiedError` to us
(Serve never retries a request that had started). A job is seeded, so running it
again gives the same result: it is retried once, on whichever replica Serve picks
(another, or the dead one's replacement); if that one dies too, the job fails with a
sentence saying so.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from ray.actor import ActorHandle
from ray.exceptions import NodeDiedError, RayActorError, TaskCancelledError, WorkerCrashedError
from ray.serve.exceptions import BackPressureError, ReplicaUnavailableError
from ray.serve.handle import DeploymentHandle, DeploymentResponseGenerator

from protocol import ErrorCode, ErrorInfo, LoRAInfo, ModelInfo, QueueFull

from ..errors import to_wire_error
from ..jobs.executor import JobReports
from ..jobs.job import Job, JobEnd, JobResult, JobState
from ..jobs.turns import Turns
from .events import Finished, Progress, Result, Started

log = logging.getLogger(__name__)

ATTEMPTS = 2
"""A job runs at most twice: once, and once more if its replica died."""

REPLICA_LOST = (RayActorError, WorkerCrashedError, NodeDiedError, ReplicaUnavailableError)
"""What a stream raises when the process or machine running the job went away."""

LOST_TWICE = (
    "the GPU worker running this job stopped, and so did the one that ran it again: "
    "the job was not finished; try again, and tell whoever runs the studio's GPUs"
)
BUSY = "the studio's GPUs are busy: try again in a moment"
PUBLISH_SECONDS = 0.5
"""How often the status board gets the queue, when it changed."""


@dataclass
class RunningJob:
    """A job handed to the deployment.

    Attributes:
        job: the job.
        attempt: 1, or 2 once retried.
        replica_pid: the process running it now (None until it started).
        replica_node: that process's machine.
        stream: the streaming call of the current attempt.
    """

    job: Job
    attempt: int = 1
    replica_pid: int | None = None
    replica_node: str | None = None
    stream: DeploymentResponseGenerator | None = None
    task: asyncio.Task[None] | None = field(default=None, repr=False)


class ClusterExecutor:
    """Runs the gateway's jobs on a Serve deployment, one job per replica at a time.

    Args:
        handle: the deployment of `GpuReplica`s.
        model: what its replicas run.
        gpus: its replicas (one per GPU): jobs handed out at once.
        per_client: jobs of one session running at once.
        max_waiting: jobs waiting for a GPU, all sessions together, before "busy".
        board: a `status.GatewayBoard` actor kept up to date with `snapshot()`.
    """

    def __init__(
        self,
        handle: DeploymentHandle,
        model: ModelInfo,
        gpus: int,
        *,
        per_client: int,
        max_waiting: int,
        board: ActorHandle | None = None,
    ) -> None:
        self.handle = handle
        self.model = model
        # The replicas' LoRAs are not advertised through the gateway yet: none offered,
        # so a request naming one is refused at the gateway, clearly.
        self.loras: dict[str, LoRAInfo] = {}
        self.gpus = gpus
        self.max_waiting = max_waiting
        self.turns = Turns(per_client)
        self.running: dict[tuple[str, str], RunningJob] = {}
        self.retried = 0  # jobs run again after their replica died
        self.lost = 0  # jobs that failed because two replicas died under them
        self.board = board
        self._reports: JobReports | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._publisher: asyncio.Task[None] | None = None

    # The Executor interface (on the loop) -------------------------------------------

    def start(self, reports: JobReports, loop: asyncio.AbstractEventLoop) -> None:
        self._reports = reports
        self._loop = loop
        if self.board is not None:
            self._publisher = loop.create_task(self._publish(self.board), name="status board")

    def submit(self, job: Job) -> int:
        waiting = len(self.turns)
        if waiting >= self.max_waiting:
            raise QueueFull(
                f"the studio's GPUs are busy: the line of jobs waiting for them is full "
                f"({waiting}); try again when some have finished",
                job=job.id,
            )
        self.turns.add(job)
        self._dispatch()
        return self.position(job)

    def position(self, job: Job) -> int:
        if job not in self.turns:
            return 0
        return self.turns.position(job, self._running_by_session())

    def cancel(self, job: Job) -> None:
        if self.turns.remove(job):
            return  # it never left the gateway: the queue ends it
        running = self.running.get(job.key)
        if running is not None and running.stream is not None:
            running.stream.cancel()  # the replica stops at its next step

    async def stop(self, timeout: float) -> bool:
        if self._publisher is not None:
            self._publisher.cancel()
        while (job := self.turns.take({})) is not None:
            job.cancel_requested.set()
        tasks = [running.task for running in self.running.values() if running.task is not None]
        for running in self.running.values():
            running.job.cancel_requested.set()
            if running.stream is not None:
                running.stream.cancel()
        if not tasks:
            return True
        _, pending = await asyncio.wait(tasks, timeout=timeout)
        return not pending

    # Status -----------------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        """What `layerdiffuse cluster status` shows of this gateway (no session ids)."""
        waiting = Counter(job.session_id for job in self.turns.waiting())
        return {
            "model": {"name": self.model.name, "family": self.model.family.value},
            "demo": self.model.demo,
            "gpus": self.gpus,
            "per_client": self.turns.per_session,
            "max_waiting": self.max_waiting,
            "running": [
                {"attempt": r.attempt, "pid": r.replica_pid, "node": r.replica_node}
                for r in self.running.values()
            ],
            "waiting": sum(waiting.values()),
            "waiting_clients": len(waiting),
            "retried": self.retried,
            "lost": self.lost,
        }

    async def _publish(self, board: ActorHandle) -> None:
        last = None
        while True:
            snapshot = self.snapshot()
            if snapshot != last:
                board.publish.remote(snapshot)  # not awaited: status may lag, jobs never
                last = snapshot
            await asyncio.sleep(PUBLISH_SECONDS)

    # Handing out jobs --------------------------------------------------------------------

    def _running_by_session(self) -> Counter[str]:
        return Counter(session for session, _ in self.running)

    def _dispatch(self) -> None:
        """Hand out jobs in fair turns while a replica is free."""
        assert self._loop is not None, "start() first"
        while len(self.running) < self.gpus:
            job = self.turns.take(self._running_by_session())
            if job is None:
                return
            if job.state is not JobState.QUEUED or job.cancel_requested.is_set():
                continue  # ended while it waited
            running = RunningJob(job)
            self.running[job.key] = running
            running.task = self._loop.create_task(self._run(running), name=f"job {job.label}")

    async def _run(self, running: RunningJob) -> None:
        job = running.job
        try:
            end, results = await self._attempts(running)
        except Exception:
            log.exception("job %s: the gateway failed", job.label)
            end, results = JobEnd(JobState.FAILED, to_wire_error(None)), []
        finally:
            del self.running[job.key]
        assert self._reports is not None
        for result in results:
            self._reports.on_result(job, result)
        self._reports.on_finished(job, end.state, end.error)
        self._dispatch()

    async def _attempts(self, running: RunningJob) -> tuple[JobEnd, list[JobResult]]:
        job = running.job
        assert self._reports is not None
        for attempt in range(1, ATTEMPTS + 1):
            running.attempt = attempt
            results: list[JobResult] = []  # a dead replica's results are not kept
            stream = self.handle.options(stream=True).run.remote(job.work())
            running.stream = stream
            if job.cancel_requested.is_set():
                stream.cancel()
            try:
                async for event in stream:
                    if isinstance(event, Started):
                        running.replica_pid, running.replica_node = event.pid, event.node
                        log.info("job %s runs on %s pid %d", job.label, event.node, event.pid)
                        self._reports.on_started(job)
                    elif isinstance(event, Progress):
                        self._reports.on_progress(job, event.step, event.total, event.preview)
                    elif isinstance(event, Result):
                        results.append(event.result)
                    elif isinstance(event, Finished):
                        return event.end, results
                raise RuntimeError(f"the stream of job {job.label} ended without its end")
            except TaskCancelledError:  # Serve's RequestCancelledError is one
                return JobEnd(JobState.CANCELLED), []
            except BackPressureError:
                return JobEnd(JobState.FAILED, ErrorInfo(ErrorCode.QUEUE_FULL, BUSY)), []
            except REPLICA_LOST as error:
                if job.cancel_requested.is_set():
                    return JobEnd(JobState.CANCELLED), []
                where = f"pid {running.replica_pid}" if running.replica_pid else "a replica"
                if attempt < ATTEMPTS:
                    self.retried += 1
                    log.warning(
                        "job %s: its GPU worker (%s) stopped (%s); running it again",
                        job.label,
                        where,
                        type(error).__name__,
                    )
                    running.replica_pid = running.replica_node = None
                    continue
                self.lost += 1
                log.error("job %s: its GPU worker (%s) stopped again; failed", job.label, where)
        return JobEnd(JobState.FAILED, ErrorInfo(ErrorCode.INTERNAL_ERROR, LOST_TWICE)), []
