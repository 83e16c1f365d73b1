"""Hypothesis throws arbitrary frames at a live server: it answers with errors and keeps serving."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from backend.config import ServerConfig
from backend.model_set import ModelSet
from backend.server.serve import LayerDiffuseServer
from protocol import ErrorCode, pack_chunk

HELLO = '{"type":"hello","protocol":[1,0],"client":"fuzz","session":null}'
SERVER_TYPES = {"welcome", "accepted", "progress", "result", "done", "error"}


@pytest.fixture(scope="module")
def live_server(demo_models: ModelSet) -> Iterator[str]:
    """One server for the whole module, on its own loop in a thread."""
    loop = asyncio.new_event_loop()
    started = threading.Event()
    stop = asyncio.Event()
    holder: dict[str, int] = {}

    async def main() -> None:
        server = LayerDiffuseServer(ServerConfig(port=0, demo=True), demo_models)
        await server.start()
        holder["port"] = server.port
        started.set()
        try:
            await stop.wait()
        finally:
            await server.stop()

    thread = threading.Thread(target=loop.run_until_complete, args=(main(),), daemon=True)
    thread.start()
    assert started.wait(30)
    yield f"ws://127.0.0.1:{holder['port']}"
    loop.call_soon_threadsafe(stop.set)
    thread.join(30)
    loop.close()


DRAIN_JOB = "fuzz-drain-0123456789abcdef"  # longer than any fuzzed text: none names it


def _drain(websocket: ClientConnection) -> list[str | bytes]:
    """The replies to everything sent so far: a cancel of a job that does not exist is
    sent last, and the server answers one connection's messages in order, so its
    unknown-job error comes after them (no idle wait)."""
    websocket.send(json.dumps({"type": "cancel", "job": DRAIN_JOB}))
    frames = []
    while True:
        frame = websocket.recv(timeout=10)
        if isinstance(frame, str):
            reply = json.loads(frame)
            if reply.get("code") == ErrorCode.UNKNOWN_JOB.value and reply.get("job") == DRAIN_JOB:
                return frames
        frames.append(frame)


def _still_serves(websocket: ClientConnection) -> None:
    websocket.send('{"type":"cancel","job":"no-such-job"}')
    reply = json.loads(websocket.recv(timeout=10))
    assert reply["type"] == "error" and reply["code"] == ErrorCode.UNKNOWN_JOB.value


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=12,
)
message_like = st.fixed_dictionaries(
    {"type": st.sampled_from(["submit", "cancel", "hello", "welcome", "done", "nope"])},
    optional={
        "job": st.text(max_size=8) | json_values,
        "request": st.fixed_dictionaries({"method": st.sampled_from(["sd15_joint", "x"])})
        | json_values,
        "inputs": st.lists(json_values, max_size=3),
        "protocol": st.lists(st.integers(-1, 3), max_size=3),
    },
)
frames = st.lists(
    st.one_of(
        st.text(max_size=200),
        json_values.map(json.dumps),
        message_like.map(json.dumps),
        st.binary(max_size=200),
        st.builds(
            pack_chunk,
            st.text(min_size=1, max_size=12),
            st.integers(0, 100),
            st.binary(max_size=64),
        ),
    ),
    min_size=1,
    max_size=6,
)


@settings(
    max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(sequence=frames)
def test_arbitrary_frames_get_errors_and_the_server_keeps_serving(
    live_server: str, sequence: list
) -> None:
    with connect(live_server, compression=None, max_size=2**24) as websocket:
        websocket.send(HELLO)
        assert json.loads(websocket.recv(timeout=10))["type"] == "welcome"
        try:
            for frame in sequence:
                websocket.send(frame)
            replies = _drain(websocket)
        except ConnectionClosed:
            pytest.fail("the server closed the connection")
        for reply in replies:
            if isinstance(reply, str):
                assert json.loads(reply)["type"] in SERVER_TYPES
        # Cancel whatever a fuzzed submit may have queued, then check the connection works.
        for reply in replies:
            if isinstance(reply, str) and json.loads(reply)["type"] == "accepted":
                websocket.send(json.dumps({"type": "cancel", "job": json.loads(reply)["job"]}))
        _drain(websocket)
        _still_serves(websocket)
    # And a fresh client is served as usual.
    with connect(live_server, compression=None) as other:
        other.send(HELLO)
        assert json.loads(other.recv(timeout=10))["type"] == "welcome"
        _still_serves(other)
