"""The one thread that owns the GPU: runs jobs one at a time, reports every step.

The event loop never touches torch (style rule 8). It hands jobs over through a
thread-safe queue; the worker reports back through a `WorkerListener` whose methods
it calls from this thread (the server's listener hops to the loop with
`call_soon_threadsafe`). Cancel is a `threading.Event` checked after every sampler
step, so a running job stops within one step. A job's body is `runner.run_job`, the
same code a cluster replica runs.
"""

from __future__ import annotations

import queue
import threading
from dataclasses import dataclass
from typing import Protocol

from protocol import ErrorInfo

from ..model_set import ModelSet
from .job import Job, JobResult, JobState
from .runner import Preview, run_job


class WorkerListener(Protocol):
    """What the worker reports; called from the worker thread."""

    def job_started(self, job: Job) -> None: ...

    def job_progress(self, job: Job, step: int, total: int, preview: Preview | None) -> None: ...

    def job_result(self, job: Job, result: JobResult) -> None: ...

    def job_finished(self, job: Job, state: JobState, error: ErrorInfo | None) -> None: ...


class GpuWorker:
    """Runs queued jobs on the model set, one at a time, in its own thread.

    Args:
        models: the loaded models; only this thread uses them.
        listener: receives started / progress / result / finished reports.
        preview_side: longest side of progress previews.
    """

    def __init__(self, models: ModelSet, listener: WorkerListener, preview_side: int = 128) -> None:
        self.models = models
        self.listener = listener
        self.preview_side = preview_side
        self._queue: queue.SimpleQueue[Job | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="gpu-worker", daemon=True)
        self.current: Job | None = None

    def start(self) -> None:
        self._thread.start()

    def enqueue(self, job: Job) -> None:
        """Queue a job; a job whose state is no longer QUEUED when its turn comes is skipped."""
        self._queue.put(job)

    def stop(self, timeout: float = 10.0) -> bool:
        """Cancel the running job, let the thread finish; True if it ended in time."""
        current = self.current
        if current is not None:
            current.cancel_requested.set()
        self._queue.put(None)
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def _run(self) -> None:
        while True:
            job = self._queue.get()
            if job is None:
                return
            if job.state is not JobState.QUEUED or job.cancel_requested.is_set():
                continue  # cancelled while queued: the loop has already ended it
            self.current = job
            try:
                self._run_job(job)
            finally:
                self.current = None

    def _run_job(self, job: Job) -> None:
        self.listener.job_started(job)
        reports = _JobReports(self.listener, job)
        end = run_job(job.work(), self.models, reports, job.cancel_requested, self.preview_side)
        self.listener.job_finished(job, end.state, end.error)


@dataclass(frozen=True)
class _JobReports:
    """`run_job`'s reports of one job, passed on to the listener."""

    listener: WorkerListener
    job: Job

    def progress(self, step: int, total: int, preview: Preview | None) -> None:
        self.listener.job_progress(self.job, step, total, preview)

    def result(self, result: JobResult) -> None:
        self.listener.job_result(self.job, result)
