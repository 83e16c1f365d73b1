"""Sentences a painter understands, for wire error codes and connection failures.

The backend's own message (lowercase, technical) is kept as the detail in brackets
where it helps; the log always has it whole.
"""

from __future__ import annotations

import asyncio
import socket
from urllib.parse import urlsplit

from .vendor import protocol, websocket_exceptions

__all__ = ["for_close", "for_connection_failure", "for_error", "server_label"]

ErrorCode = protocol.ErrorCode

_SENTENCES: dict[protocol.ErrorCode, str] = {
    ErrorCode.LIMIT_EXCEEDED: "The work area is too big for the backend. Select a smaller area.",
    ErrorCode.QUEUE_FULL: (
        "The backend's queue is full. Wait for a generation to finish, then try again."
    ),
    ErrorCode.INVALID_REQUEST: "The backend can't run this with these settings.",
    ErrorCode.MODEL_UNAVAILABLE: (
        "The backend is missing model files for this. See `layerdiffuse models list` "
        "on the backend's machine."
    ),
    ErrorCode.UNSUPPORTED_VERSION: (
        "The plugin and the backend are from different releases and can't talk to each "
        "other. Install the same release of both."
    ),
    ErrorCode.BAD_IMAGE: "An image was damaged on its way to the backend. Try again.",
    ErrorCode.INTERNAL_ERROR: (
        "The backend hit an internal error. Its log (where `layerdiffuse serve` runs) "
        "has the details."
    ),
}


def for_error(code: str, detail: str) -> str:
    """The sentence for a wire error `{code, message}`.

    Args:
        code: an `ErrorCode` value (unknown codes from a newer backend are allowed).
        detail: the backend's message.
    """
    try:
        sentence = _SENTENCES.get(ErrorCode(code))
    except ValueError:
        sentence = None
    if sentence is None:
        return f"Something went wrong between the plugin and the backend ({code}: {detail})."
    return f"{sentence} ({detail})" if detail else sentence


def server_label(url: str) -> str:
    """`host:port` of a websocket URL, for sentences."""
    parts = urlsplit(url)
    if parts.hostname is None:
        return url
    port = parts.port or (443 if parts.scheme == "wss" else 80)
    return f"{parts.hostname}:{port}"


def for_close(url: str, code: int | None) -> str:
    """The sentence for a connection the backend closed, by its close code."""
    where = server_label(url)
    if code == protocol.CloseCode.TOO_MANY_CONNECTIONS:
        return f"The backend at {where} has too many connections. Close another client."
    if code == protocol.CloseCode.EVICTED:
        return (
            f"The backend at {where} closed this idle connection to make room for "
            "another client. Reconnecting…"
        )
    return f"The backend at {where} closed the connection. Reconnecting…"


def for_connection_failure(url: str, error: BaseException) -> str:
    """The sentence for a failed or lost connection to the backend at `url`."""
    where = server_label(url)
    if isinstance(error, websocket_exceptions.InvalidURI) or not url.startswith(
        ("ws://", "wss://")
    ):
        return f"“{url}” is not a server address. It looks like ws://127.0.0.1:8870."
    if isinstance(error, websocket_exceptions.InvalidStatus):
        status = error.response.status_code
        if status == 401:
            return (
                f"The backend at {where} needs a token, and the one in the docker is "
                "missing or wrong."
            )
        if status == 403:
            return f"The backend at {where} refused the connection (origin not allowed)."
        if status == 503:
            return f"The backend at {where} has too many connections. Close another client."
        return f"The backend at {where} refused the connection (HTTP {status})."
    if isinstance(error, websocket_exceptions.InvalidHandshake):
        return f"{where} answered, but it is not a LayerDiffuse backend."
    if isinstance(error, socket.gaierror):
        return f"Can't find the server {where}. Check the address in the docker."
    # asyncio.TimeoutError is TimeoutError from Python 3.11 on, a class of its own in 3.10
    if isinstance(error, (ConnectionRefusedError, TimeoutError, asyncio.TimeoutError)):
        return (
            f"Can't reach the LayerDiffuse backend at {where}. Start it with "
            "`layerdiffuse serve` (or check the address in the docker)."
        )
    if isinstance(error, websocket_exceptions.ConnectionClosed):
        return f"The connection to the backend at {where} was lost. Reconnecting…"
    if isinstance(error, protocol.ProtocolError):
        return for_error(error.code.value, str(error))
    if isinstance(error, OSError):
        reason = error.strerror or str(error)
        return f"Can't reach the LayerDiffuse backend at {where} ({reason})."
    return f"The connection to the backend at {where} failed ({error})."
