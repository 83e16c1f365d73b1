"""Running one job on a model set: the GPU code both executors share.

`run_job` is the body of a job wherever it runs: in the one-machine server's worker
thread (`worker.py`) and in a cluster replica (`backend.cluster.replica`), which calls
it in a thread of its own. It reports each sampler step (with a preview) and each
result through `RunReports`, stops within one step once `cancelled` is set, and
returns how the job ended; it never raises for a job's own failure.

What it needs travels as a `JobWork` (`job.py`), which pickles.
"""

from __future__ import annotations

import logging
import threading
from typing import Protocol

import torch

from protocol import ErrorCode, ErrorInfo, LayerRole

from ..errors import Cancelled, to_wire_error
from ..methods.previews import latent_preview
from ..methods.registry import run_method
from ..model_set import ModelSet
from .job import EncodedLayer, JobEnd, JobResult, JobState, JobWork
from .pixels import encode_image

log = logging.getLogger(__name__)

OUT_OF_MEMORY = "out of GPU memory: try a smaller size, fewer images or fewer layers"

Preview = tuple[int, int, bytes]
"""A progress preview: width, height and RGBA bytes."""


class RunReports(Protocol):
    """Where `run_job` reports; called from the thread that runs the job."""

    def progress(self, step: int, total: int, preview: Preview | None) -> None: ...

    def result(self, result: JobResult) -> None: ...


def run_job(
    work: JobWork,
    models: ModelSet,
    reports: RunReports,
    cancelled: threading.Event,
    preview_side: int = 128,
) -> JobEnd:
    """Run a job's method, reporting every step and result; returns how it ended.

    Args:
        work: the job.
        models: the loaded models (used by this thread only while it runs).
        reports: receives progress (after every sampler step) and results (after the run).
        cancelled: checked after every step; once set, the job ends CANCELLED at the
            next step boundary and reports no result.
        preview_side: longest side of progress previews.
    """
    log.info("job %s started: %s", work.label, work.request.method.value)

    def on_step(step: int, total: int, latents: torch.Tensor) -> None:
        if cancelled.is_set():
            raise Cancelled(f"job {work.label} cancelled")
        preview = None
        if work.previews:
            preview = latent_preview(latents, models.family, preview_side)
        reports.progress(step, total, preview)

    try:
        generated = run_method(work.request, models, on_step)
    except Cancelled:
        return _ended(work, JobEnd(JobState.CANCELLED))
    except torch.cuda.OutOfMemoryError:
        torch.cuda.empty_cache()
        error = ErrorInfo(ErrorCode.LIMIT_EXCEEDED, OUT_OF_MEMORY)
        return _ended(work, JobEnd(JobState.FAILED, error))
    except Exception as error:
        if to_wire_error(error).code is ErrorCode.INTERNAL_ERROR:
            log.exception("job %s failed", work.label)
        return _ended(work, JobEnd(JobState.FAILED, to_wire_error(error)))

    for index, (layers, seed) in enumerate(zip(generated.images, generated.seeds, strict=True)):
        encoded = tuple(
            EncodedLayer(
                role, image.shape[1], image.shape[0], encode_image(image, work.result_format)
            )
            for role, images in layers.items()
            # a split's layers are one (N, H, W, 4) stack: N layers of role `layer`, in order
            for image in (images if role is LayerRole.LAYER else [images])
        )
        reports.result(JobResult(index=index, seed=seed, layers=encoded))
    return _ended(work, JobEnd(JobState.COMPLETED))


def _ended(work: JobWork, end: JobEnd) -> JobEnd:
    log.info("job %s %s", work.label, end.state.value)
    return end
