"""docs/protocol.md's refusal examples are what a live server sends, frame for frame."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosedOK

from backend.errors import INTERNAL_ERROR_TEXT
from protocol import Done, ErrorCode, ErrorReceived, JobDone, decode_message, pack_chunk

from .conftest import TIMEOUT, RunningServer

DOC = Path(__file__).resolve().parents[3] / "docs" / "protocol.md"
HELLO = '{"type":"hello","protocol":[1,0],"client":"doc-test","session":null}'
BINARY = re.compile(r"binary: \[len\](\{.*\})\[(\d+) bytes\]")


def _exchange(name: str) -> list[tuple[str, str]]:
    """The (direction, frame) lines of one `<!-- exchange: name -->` block of the doc."""
    pattern = rf"<!-- exchange: {name} -->\n```text\n(.*?)\n```"
    match = re.search(pattern, DOC.read_text(), re.DOTALL)
    assert match is not None, f"no exchange {name!r} in docs/protocol.md"
    lines = [line.split(" ", 1) for line in match.group(1).splitlines()]
    assert all(direction in ("->", "<-") for direction, _ in lines)
    return [(direction, frame) for direction, frame in lines]


async def _replay(websocket: ClientConnection, lines: list[tuple[str, str]]) -> None:
    for direction, frame in lines:
        if direction == "->":
            binary = BINARY.fullmatch(frame)
            if binary is None:
                await websocket.send(frame)
            else:
                header = json.loads(binary.group(1))
                payload = bytes(int(binary.group(2)))
                await websocket.send(pack_chunk(header["image"], header["offset"], payload))
            continue
        while True:  # progress frames are left out of the doc
            received = await websocket.recv(decode=True)
            if '"type":"progress"' not in received:
                break
        assert received == frame


def test_the_refusals_before_hello_are_as_documented(with_server: Callable[..., None]) -> None:
    async def scenario(running: RunningServer) -> None:
        async with connect(running.url, compression=None) as websocket:
            await _replay(websocket, _exchange("before-hello"))
            with pytest.raises(ConnectionClosedOK):
                await websocket.recv()
            assert websocket.close_code == 1000

    with_server(scenario)


def test_the_refusals_after_welcome_are_as_documented(with_server: Callable[..., None]) -> None:
    async def scenario(running: RunningServer) -> None:
        async with connect(running.url, compression=None) as websocket:
            await websocket.send(HELLO)
            assert '"type":"welcome"' in await websocket.recv(decode=True)
            await _replay(websocket, _exchange("after-welcome"))

    with_server(scenario)


def test_a_ninth_unfinished_job_is_refused_with_the_documented_message(
    with_server: Callable[..., None],
) -> None:
    async def scenario(running: RunningServer) -> None:
        async with running.client() as client:
            await client.hello()
            for index in range(9):
                await client.submit(f"q{index}", steps=150)
            event = await client.next_event(TIMEOUT)
            while not isinstance(event, ErrorReceived):
                event = await client.next_event(TIMEOUT)
            refusal = event.error
            for index in range(8):
                await client.send(client.protocol.send_cancel(f"q{index}"))
            done: set[str] = set()
            while len(done) < 8:
                event = await client.next_event(TIMEOUT)
                if isinstance(event, JobDone):
                    done.add(event.done.job)
        assert (refusal.code, refusal.message, refusal.job) == (
            ErrorCode.QUEUE_FULL,
            "8 jobs are unfinished; the limit is 8",
            "q8",
        )
        assert "`queue_full`, `8 jobs are\nunfinished; the limit is 8`" in DOC.read_text()

    with_server(scenario)


def test_the_documented_failed_done_carries_the_servers_fixed_text() -> None:
    frame = re.search(r'`(\{"type":"done","job":"j9","status":"failed".*?\})`', DOC.read_text())
    assert frame is not None
    done = decode_message(frame.group(1))
    assert isinstance(done, Done) and done.error is not None
    assert (done.error.code, done.error.message) == (ErrorCode.INTERNAL_ERROR, INTERNAL_ERROR_TEXT)
