"""Errors the backend raises on purpose, each with a message a user can act on.

    BackendError
    ├── InvalidRequest        a request names a value outside what a method accepts
    ├── ModelError            a model could not be found, fetched, checked or loaded
    │   ├── ModelNotFound     not in the models folder or cache, and not downloadable now
    │   ├── ModelHashMismatch a file's sha256 differs from the catalogue's
    │   └── UnsupportedModel  a file in a format or family we do not load (pickles, unknown keys)
    ├── OutputError           the results cannot be written where they were asked for
    └── Cancelled             the job was cancelled while it ran

Messages are lowercase, without a final period, and name the value at fault.
`to_wire_error` is the one place these become the wire's `{code, message}`.
"""

from __future__ import annotations

from protocol import ErrorCode, ErrorInfo

INTERNAL_ERROR_TEXT = "internal error: the server log has the details"


class BackendError(Exception):
    """Root of the backend's deliberate errors."""


class InvalidRequest(BackendError):
    """A request field is missing, of the wrong kind or out of range."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


class ModelError(BackendError):
    """A model file or base model could not be used."""


class ModelNotFound(ModelError):
    """The model is neither on disk nor downloadable at the moment."""


class ModelHashMismatch(ModelError):
    """A file's content differs from what the catalogue says it is."""


class UnsupportedModel(ModelError):
    """A file is in a format or of a family this backend does not load."""


class OutputError(BackendError):
    """The output folder is a file, not writable or full, or a result file cannot be written."""


class Cancelled(BackendError):
    """The job was cancelled; nothing it produced is kept."""


def to_wire_error(error: BaseException | None) -> ErrorInfo:
    """The `{code, message}` a client sees for an exception.

    Deliberate errors keep their message; anything unexpected becomes `internal_error`
    with a fixed text (the traceback goes to the server log only: it may hold paths or
    data the client should not see).
    """
    if isinstance(error, InvalidRequest):
        return ErrorInfo(ErrorCode.INVALID_REQUEST, str(error))
    if isinstance(error, ModelError):
        return ErrorInfo(ErrorCode.MODEL_UNAVAILABLE, str(error))
    if isinstance(error, Cancelled):
        return ErrorInfo(ErrorCode.INTERNAL_ERROR, "the job was cancelled")
    return ErrorInfo(ErrorCode.INTERNAL_ERROR, INTERNAL_ERROR_TEXT)
