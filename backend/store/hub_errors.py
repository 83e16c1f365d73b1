"""Hugging Face hub failures in words, and the offline switch.

huggingface_hub reports trouble with its own exception classes, and wraps those of the HTTP
library it uses (requests, httpx, or httpx2, by version). The store turns all of them into
`ModelNotFound` with a sentence saying what happened; these helpers classify and describe
them without importing any particular HTTP library.
"""

from __future__ import annotations

import logging
import os

from huggingface_hub import constants as hub_constants
from huggingface_hub.utils import (
    EntryNotFoundError,
    GatedRepoError,
    HfHubHTTPError,
    LocalEntryNotFoundError,
    OfflineModeIsEnabled,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

log = logging.getLogger(__name__)

_HTTP_LIBRARIES = ("requests", "urllib3", "httpx", "httpx2", "httpcore", "h11", "ssl")
_TRUE_WORDS = ("1", "true", "yes", "on")


def resolve_offline(offline: bool | None) -> bool:
    """Decide whether the hub may be contacted.

    Args:
        offline: An explicit choice, or None to follow huggingface_hub's offline setting:
            its `HF_HUB_OFFLINE` constant (read when it was imported) or the
            `HF_HUB_OFFLINE` environment variable as it is now.

    Returns:
        True when no network access is allowed.
    """
    if offline is not None:
        return offline
    from_environment = os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in _TRUE_WORDS
    return bool(hub_constants.HF_HUB_OFFLINE) or from_environment


def _chain(exc: BaseException) -> list[BaseException]:
    """The exception and its causes and contexts, outermost first, without cycles."""
    seen: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and all(current is not known for known in seen):
        seen.append(current)
        current = current.__cause__ or current.__context__
    return seen


def _from_http_library(exc: BaseException) -> bool:
    return any(
        klass.__module__.split(".")[0] in _HTTP_LIBRARIES for klass in type(exc).__mro__[:-1]
    )


def is_hub_error(exc: BaseException) -> bool:
    """Tell a failure to reach or use the hub from a programming error.

    Args:
        exc: An exception raised by a huggingface_hub call.

    Returns:
        True for huggingface_hub's own errors, OS errors (disk, connection) and errors
        raised by the HTTP library underneath.
    """
    return isinstance(exc, (OSError, EntryNotFoundError, HfHubHTTPError)) or any(
        _from_http_library(link) for link in _chain(exc)
    )


def _status_code(exc: BaseException) -> int | None:
    response = getattr(exc, "response", None)
    status = getattr(response, "status_code", None)
    return status if isinstance(status, int) else None


def _short(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    if len(text) > 160:
        text = text[:157] + "..."
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def describe_hub_error(exc: BaseException) -> str:
    """Say in words why a hub call failed.

    Args:
        exc: An exception for which `is_hub_error` is true.

    Returns:
        A lowercase phrase such as `cannot reach https://huggingface.co (ConnectError: ...)`
        or `the hub answered http 503`.
    """
    chain = _chain(exc)
    for link in chain:
        if isinstance(link, OfflineModeIsEnabled):
            return "huggingface_hub is in offline mode (HF_HUB_OFFLINE is set)"
    for link in chain:
        if isinstance(link, GatedRepoError):
            return (
                "the repository is gated: accept its terms on the hugging face website and "
                "log in with `hf auth login`"
            )
        if isinstance(link, RepositoryNotFoundError):
            return "the repository does not exist on the hub, or it is private"
        if isinstance(link, RevisionNotFoundError):
            return "the revision does not exist in the repository"
        if isinstance(link, EntryNotFoundError) and not isinstance(link, LocalEntryNotFoundError):
            return "the file is not in the repository"
    for link in chain:
        status = _status_code(link)
        if status is not None:
            return f"the hub answered http {status}"
    for link in chain:
        transport = _from_http_library(link) and not isinstance(link, HfHubHTTPError)
        if transport or isinstance(link, ConnectionError):
            return f"cannot reach {hub_constants.ENDPOINT} ({_short(link)})"
    if isinstance(exc, LocalEntryNotFoundError):
        return f"cannot reach {hub_constants.ENDPOINT} and the file is not in the cache"
    return _short(exc)
