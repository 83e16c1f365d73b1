"""A generation job as the server tracks it, and what it produces."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from enum import Enum

from protocol import ErrorInfo, JobStatus, LayerRole, PixelFormat

from ..methods.request import GenerationRequest


class JobState(str, Enum):
    """Where a job is; the last three are final."""

    QUEUED = "queued"
    RUNNING = "running"
    COMPLETED = "completed"
    CANCELLED = "cancelled"
    FAILED = "failed"

    @property
    def finished(self) -> bool:
        return self in (JobState.COMPLETED, JobState.CANCELLED, JobState.FAILED)

    @property
    def status(self) -> JobStatus:
        """The wire status of a finished job."""
        return JobStatus(self.value)


@dataclass(frozen=True)
class EncodedLayer:
    """One result layer ready for the wire: pixels already in the client's format."""

    role: LayerRole
    width: int
    height: int
    data: bytes


@dataclass(frozen=True)
class JobResult:
    """One result of a job (a set of layers with its seed)."""

    index: int
    seed: int
    layers: tuple[EncodedLayer, ...]


@dataclass(frozen=True)
class JobWork:
    """What a GPU needs to run one job, and nothing else: it holds no lock or event, so it
    pickles (a cluster sends it to another process, maybe another machine).

    Attributes:
        label: `session/job`, for log lines.
        request: the validated generation request, input pixels included.
        result_format: the pixel format results are encoded in.
        previews: whether progress reports carry a preview.
    """

    label: str
    request: GenerationRequest
    result_format: PixelFormat
    previews: bool


@dataclass(frozen=True)
class JobEnd:
    """How a run ended: COMPLETED, CANCELLED or FAILED (with the error a client sees)."""

    state: JobState
    error: ErrorInfo | None = None


@dataclass
class Job:
    """A submitted job.

    Attributes:
        id: the client's job id, unique within its session while unfinished.
        session_id: the session it belongs to.
        request: the validated generation request.
        result_format: pixel format the client wants results in.
        previews: whether the client wants progress previews.
        state: where it is; changed on the event loop only.
        cancel_requested: set from the event loop, read by the GPU worker at each step.
        results: results made so far, held until delivered.
        error: why it failed.
    """

    id: str
    session_id: str
    request: GenerationRequest
    result_format: PixelFormat
    previews: bool = True
    state: JobState = JobState.QUEUED
    cancel_requested: threading.Event = field(default_factory=threading.Event)
    results: list[JobResult] = field(default_factory=list)
    error: ErrorInfo | None = None
    submitted_at: float = field(default_factory=time.monotonic)

    @property
    def key(self) -> tuple[str, str]:
        """Unique across sessions."""
        return (self.session_id, self.id)

    @property
    def label(self) -> str:
        """`session/job`, for log lines."""
        return f"{self.session_id}/{self.id}"

    def work(self) -> JobWork:
        """What a GPU needs to run it (`runner.run_job`), free of the server's state."""
        return JobWork(self.label, self.request, self.result_format, self.previews)
