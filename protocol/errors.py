"""The wire error codes and the exceptions of the protocol.

Every exception this package raises on bad input is a `ProtocolError`; its `code` is
the `ErrorCode` an `error` frame carries, so the connection layer maps an exception to
a frame in one place (`Error(code=exc.code, message=str(exc), job=exc.job)`).

The tree::

    ProtocolError                  (root; never raised itself)
     ├── BadMessage                bad_message: not JSON, not an object, out of place
     ├── UnknownType               unknown_type: a `type` this side does not take
     ├── MissingField              missing_field: a required field is absent
     ├── InvalidField              invalid_field: wrong type or value, or an unknown field
     ├── UnsupportedVersion        unsupported_version: another major version
     ├── NotReady                  not_ready: anything before the handshake
     ├── LimitExceeded             limit_exceeded: over one of the `Limits`
     ├── QueueFull                 queue_full: too many unfinished jobs
     ├── UnknownJob                unknown_job: no such job
     ├── DuplicateJob              duplicate_job: the job id is in use
     ├── BadImage                  bad_image: a binary frame or image that does not fit
     ├── InvalidRequest            invalid_request: parameters that do not fit the method
     │    └── InvalidParameter     one parameter outside `protocol.PARAMETERS`; `field` names it
     ├── ModelUnavailable          model_unavailable: the model cannot run the method
     └── InternalError             internal_error: anything unexpected

Messages are short, lowercase, without a final period, and name the value at fault
(`request.steps: expected an integer, got 'x'`).
"""

from __future__ import annotations

from enum import Enum
from typing import ClassVar

__all__ = [
    "BadImage",
    "BadMessage",
    "DuplicateJob",
    "ErrorCode",
    "InternalError",
    "InvalidField",
    "InvalidParameter",
    "InvalidRequest",
    "LimitExceeded",
    "MissingField",
    "ModelUnavailable",
    "NotReady",
    "ProtocolError",
    "QueueFull",
    "UnknownJob",
    "UnknownType",
    "UnsupportedVersion",
    "error_for",
]


class ErrorCode(str, Enum):
    """The closed set of error codes an `error` frame or a failed `done` carries."""

    BAD_MESSAGE = "bad_message"
    UNKNOWN_TYPE = "unknown_type"
    MISSING_FIELD = "missing_field"
    INVALID_FIELD = "invalid_field"
    UNSUPPORTED_VERSION = "unsupported_version"
    NOT_READY = "not_ready"
    LIMIT_EXCEEDED = "limit_exceeded"
    QUEUE_FULL = "queue_full"
    UNKNOWN_JOB = "unknown_job"
    DUPLICATE_JOB = "duplicate_job"
    BAD_IMAGE = "bad_image"
    INVALID_REQUEST = "invalid_request"
    MODEL_UNAVAILABLE = "model_unavailable"
    INTERNAL_ERROR = "internal_error"


class ProtocolError(Exception):
    """The root of the tree; `code` is the wire code of each subclass.

    Args:
        message: what went wrong, short and lowercase, naming the value.
        job: the job the error is about, when it could be read.

    Attributes:
        code: the `ErrorCode` this exception travels as.
        message: the text given.
        job: the job id, or None.
    """

    code: ClassVar[ErrorCode] = ErrorCode.INTERNAL_ERROR

    def __init__(self, message: str = "", *, job: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.job = job

    def __str__(self) -> str:
        return self.message


class BadMessage(ProtocolError):
    """A text frame that is not JSON or not an object, or a message out of place."""

    code = ErrorCode.BAD_MESSAGE


class UnknownType(ProtocolError):
    """A message `type` this side does not know or does not take from its peer."""

    code = ErrorCode.UNKNOWN_TYPE


class MissingField(ProtocolError):
    """A required field is absent."""

    code = ErrorCode.MISSING_FIELD


class InvalidField(ProtocolError):
    """A field of the wrong type or value, or an unknown field."""

    code = ErrorCode.INVALID_FIELD


class UnsupportedVersion(ProtocolError):
    """The peer speaks another major version; the server closes after sending it."""

    code = ErrorCode.UNSUPPORTED_VERSION


class NotReady(ProtocolError):
    """A message before the handshake (`hello`, `welcome`) completed."""

    code = ErrorCode.NOT_READY


class LimitExceeded(ProtocolError):
    """A frame, image, batch or step count over one of the `Limits`."""

    code = ErrorCode.LIMIT_EXCEEDED


class QueueFull(ProtocolError):
    """The session has `max_queued_jobs` unfinished jobs already."""

    code = ErrorCode.QUEUE_FULL


class UnknownJob(ProtocolError):
    """A job id that names no job of the session."""

    code = ErrorCode.UNKNOWN_JOB


class DuplicateJob(ProtocolError):
    """A submitted job id that an unfinished job already uses."""

    code = ErrorCode.DUPLICATE_JOB


class BadImage(ProtocolError):
    """A binary frame or image that does not fit its reference."""

    code = ErrorCode.BAD_IMAGE


class InvalidRequest(ProtocolError):
    """Generation parameters that do not fit the method or the model."""

    code = ErrorCode.INVALID_REQUEST


class InvalidParameter(InvalidRequest):
    """One generation parameter outside what `protocol.PARAMETERS` allows.

    Args:
        field: the wire name of the field at fault (`steps`, `layer_prompts`, `inputs`).
        reason: what is wrong with it (`0 outside 1..150`).
        shown_as: how the message names the field (a command-line flag); `field` if None.
        job: the job id, or None.

    Attributes:
        field / reason: as given; the message is `"<shown_as>: <reason>"`.
    """

    def __init__(
        self, field: str, reason: str, *, shown_as: str | None = None, job: str | None = None
    ) -> None:
        super().__init__(f"{shown_as or field}: {reason}", job=job)
        self.field = field
        self.reason = reason


class ModelUnavailable(ProtocolError):
    """The loaded model cannot run the method asked for."""

    code = ErrorCode.MODEL_UNAVAILABLE


class InternalError(ProtocolError):
    """Anything unexpected; the details stay in the server's log."""

    code = ErrorCode.INTERNAL_ERROR


_CLASSES: dict[ErrorCode, type[ProtocolError]] = {
    cls.code: cls
    for cls in (
        BadMessage,
        UnknownType,
        MissingField,
        InvalidField,
        UnsupportedVersion,
        NotReady,
        LimitExceeded,
        QueueFull,
        UnknownJob,
        DuplicateJob,
        BadImage,
        InvalidRequest,
        ModelUnavailable,
        InternalError,
    )
}


def error_for(code: ErrorCode, message: str, job: str | None = None) -> ProtocolError:
    """Build the exception of a wire error, e.g. for a client that raises what it received.

    Args:
        code: the wire code.
        message: the wire message.
        job: the job it is about, or None.

    Returns:
        An instance of the subclass whose `code` is `code`.
    """
    return _CLASSES[ErrorCode(code)](message, job=job)


def describe(value: object) -> str:
    """A short text for a received value in an error message, safe on any input.

    JSON scalars read as JSON (`null`, `true`, `7`, `'x'` with long strings cut at 40
    characters), containers by kind (`a list`, `an object`), anything else by type.
    """
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value) if abs(value) < 10**30 else f"an integer of {value.bit_length()} bits"
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, str):
        return repr(value if len(value) <= 40 else value[:40] + "...")
    if isinstance(value, (list, tuple)):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return f"a {type(value).__name__}"
