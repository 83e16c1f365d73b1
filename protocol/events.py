"""What the state machines hand the application: one event per complete message.

A message that announces images becomes an event only once all of its images have
arrived, and then carries their bytes. Image bytes are memoryviews the application now
owns (the buffers the frames were written into; never copied again).
"""

from __future__ import annotations

from dataclasses import dataclass

from .images import ImageRef
from .messages import Accepted, Done, Error, Hello, Progress, Result, Submit, Welcome
from .methods import LayerRole

__all__ = [
    "CancelRequested",
    "ClientEvent",
    "ErrorReceived",
    "HelloReceived",
    "JobAccepted",
    "JobDone",
    "JobSubmitted",
    "ProgressReceived",
    "ResultReceived",
    "ServerEvent",
    "WelcomeReceived",
]


@dataclass(frozen=True)
class HelloReceived:
    """The client said hello in a compatible version; answer with `send_welcome`."""

    hello: Hello


@dataclass(frozen=True)
class JobSubmitted:
    """A submit and all its input images arrived; queue it, then `send_accepted`.

    Attributes:
        submit: the message.
        images: each input's reference and bytes, by role.
    """

    submit: Submit
    images: dict[LayerRole, tuple[ImageRef, memoryview]]


@dataclass(frozen=True)
class CancelRequested:
    """The client cancels a job.

    Attributes:
        job: the job id.
        submitted: False when the job's input images were still arriving: the protocol
            dropped it, no `JobSubmitted` came or will come for it, and the application
            only answers `send_done(job, JobStatus.CANCELLED)`. True otherwise: the
            application cancels the job in its queue, or raises `UnknownJob` when the
            session has no such unfinished job.
    """

    job: str
    submitted: bool = True


ServerEvent = HelloReceived | JobSubmitted | CancelRequested
"""An event of `ServerProtocol`."""


@dataclass(frozen=True)
class WelcomeReceived:
    """The server answered hello; `welcome.limits` now bound what the client sends."""

    welcome: Welcome


@dataclass(frozen=True)
class JobAccepted:
    """A submitted job is queued."""

    accepted: Accepted


@dataclass(frozen=True)
class ProgressReceived:
    """A sampler step finished; `preview` holds the RGBA8 bytes when the message had one."""

    progress: Progress
    preview: memoryview | None


@dataclass(frozen=True)
class ResultReceived:
    """One result and the bytes of its layers, in `result.layers`' formats.

    Attributes:
        result: the message.
        images: each layer's bytes by role, but the `layer` ones.
        stack: the `layer` layers' bytes (a split, since 1.3), bottom of the stack first;
            empty for the other methods.
    """

    result: Result
    images: dict[LayerRole, memoryview]
    stack: tuple[memoryview, ...] = ()


@dataclass(frozen=True)
class JobDone:
    """A job ended; no more messages about it follow."""

    done: Done


@dataclass(frozen=True)
class ErrorReceived:
    """The server reported an error; with `error.job`, a job not yet accepted is over."""

    error: Error


ClientEvent = (
    WelcomeReceived | JobAccepted | ProgressReceived | ResultReceived | JobDone | ErrorReceived
)
"""An event of `ClientProtocol`."""
