"""The one thread that owns the GPU: runs jobs one at a time, reports every step.

The event loop never touches torch (style rule 8). It hands jobs over through a
thread-safe queue; the worker reports back through a `WorkerListener` whose methods
it calls from this thread (the server's listener hops to the loop with
`call_soon_threadsafe`). Cancel is a `threading.Event` checked after every sampler
step, so a running job stops within one step.
"""

from __future__ import annotations

import logging
import queue
import threading
from typing import Protocol

import torch

from protocol import ErrorCode, ErrorInfo

from ..errors import Cancelled, to_wire_error
from ..methods.previews import latent_preview
from ..methods.registry import run_method
from ..model_set import ModelSet
from .job import EncodedLayer, Job, JobResult, JobState
from .pixels import encode_image

log = logging.getLogger(__name__)


class WorkerListener(Protocol):
    """What the worker reports; called from the worker thread."""

    def job_started(self, job: Job) -> None: ...

    def job_progress(
        self, job: Job, step: int, total: int, preview: tuple[int, int, bytes] | None
    ) -> None: ...

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
        log.info("job %s/%s started: %s", job.session_id, job.id, job.request.method.value)

        def on_step(step: int, total: int, latents: torch.Tensor) -> None:
            if job.cancel_requested.is_set():
                raise Cancelled(f"job {job.id} cancelled")
            preview = None
            if job.previews:
                preview = latent_preview(latents, self.models.family, self.preview_side)
            self.listener.job_progress(job, step, total, preview)

        try:
            generated = run_method(job.request, self.models, on_step)
        except Cancelled:
            self._finish(job, JobState.CANCELLED, None)
            return
        except torch.cuda.OutOfMemoryError:
            torch.cuda.empty_cache()
            message = "out of GPU memory: try a smaller size, fewer images or fewer layers"
            self._finish(job, JobState.FAILED, ErrorInfo(ErrorCode.LIMIT_EXCEEDED, message))
            return
        except Exception as error:
            if to_wire_error(error).code is ErrorCode.INTERNAL_ERROR:
                log.exception("job %s/%s failed", job.session_id, job.id)
            self._finish(job, JobState.FAILED, to_wire_error(error))
            return

        for index, (layers, seed) in enumerate(zip(generated.images, generated.seeds, strict=True)):
            encoded = tuple(
                EncodedLayer(
                    role, image.shape[1], image.shape[0], encode_image(image, job.result_format)
                )
                for role, image in layers.items()
            )
            self.listener.job_result(job, JobResult(index=index, seed=seed, layers=encoded))
        self._finish(job, JobState.COMPLETED, None)

    def _finish(self, job: Job, state: JobState, error: ErrorInfo | None) -> None:
        log.info("job %s/%s %s", job.session_id, job.id, state.value)
        self.listener.job_finished(job, state, error)
