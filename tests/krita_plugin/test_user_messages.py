"""Wire errors and connection failures become sentences a painter understands."""

from __future__ import annotations

import socket

import pytest
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosedError, InvalidStatus, InvalidURI
from websockets.frames import Close
from websockets.http11 import Response

from krita_plugin.user_messages import for_close, for_connection_failure, for_error, server_label
from protocol import CloseCode, ErrorCode, UnsupportedVersion

URL = "ws://127.0.0.1:8870"


def status(code: int) -> InvalidStatus:
    return InvalidStatus(Response(code, "refused", Headers()))


@pytest.mark.parametrize("code", [code for code in ErrorCode])
def test_every_error_code_has_a_sentence(code: ErrorCode) -> None:
    sentence = for_error(code.value, "detail text")
    assert sentence.endswith(".") or sentence.endswith(")")
    assert "detail text" in sentence


def test_known_codes_read_as_advice() -> None:
    assert for_error("limit_exceeded", "request.width: 9000 exceeds the limit of 8192") == (
        "The work area is too big for the backend. Select a smaller area. "
        "(request.width: 9000 exceeds the limit of 8192)"
    )
    assert for_error("queue_full", "").startswith("The backend's queue is full.")
    assert "different releases" in for_error("unsupported_version", "major 2 vs 1")


def test_an_unknown_code_from_a_newer_backend_is_still_shown() -> None:
    assert for_error("gpu_on_fire", "too hot") == (
        "Something went wrong between the plugin and the backend (gpu_on_fire: too hot)."
    )


def test_server_label() -> None:
    assert server_label("ws://127.0.0.1:8870/") == "127.0.0.1:8870"
    assert server_label("wss://example.org") == "example.org:443"
    assert server_label("nonsense") == "nonsense"


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (ConnectionRefusedError(111, "refused"), "Can't reach the LayerDiffuse backend at "
         "127.0.0.1:8870. Start it with `layerdiffuse serve`"),
        (TimeoutError(), "Can't reach the LayerDiffuse backend"),
        (status(401), "needs a token, and the one in the docker is missing or wrong"),
        (status(403), "refused the connection (origin not allowed)"),
        (status(503), "too many connections"),
        (status(500), "refused the connection (HTTP 500)"),
        (socket.gaierror(-2, "Name or service not known"), "Can't find the server"),
        (ConnectionClosedError(Close(1011, "x"), None), "was lost. Reconnecting…"),
        (UnsupportedVersion("protocol 2.0 is not compatible with 1.0"), "different releases"),
        (OSError(113, "No route to host"), "(No route to host)"),
        (RuntimeError("odd"), "failed (odd)"),
    ],
)  # fmt: skip
def test_connection_failures(error: BaseException, expected: str) -> None:
    assert expected in for_connection_failure(URL, error)


def test_a_bad_address_says_what_one_looks_like() -> None:
    assert for_connection_failure("http://x", InvalidURI("http://x", "bad scheme")) == (
        "“http://x” is not a server address. It looks like ws://127.0.0.1:8870."
    )


def test_the_backends_close_codes_become_sentences() -> None:
    url = "ws://127.0.0.1:8870"
    assert "too many connections" in for_close(url, CloseCode.TOO_MANY_CONNECTIONS)
    assert "make room for another client" in for_close(url, CloseCode.EVICTED)
    assert for_close(url, 1000) == (
        "The backend at 127.0.0.1:8870 closed the connection. Reconnecting…"
    )
