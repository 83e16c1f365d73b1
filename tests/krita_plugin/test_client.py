"""The backend client against a real `layerdiffuse serve --demo` on 127.0.0.1."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from krita_plugin.client import ConnectionState, new_job_id
from krita_plugin.errors import JobCancelled, JobFailed, JobLost, NotConnected
from protocol import (
    GenerationParameters,
    ImageRef,
    LayerImage,
    LayerRole,
    Method,
    PixelFormat,
    Submit,
)

from .conftest import DemoServer, running_client, start_demo_server, wait_for

TIMEOUT = 60.0


def run(scenario: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(scenario(), TIMEOUT * 2))


def submit(
    method: Method = Method.SD15_TRANSPARENT,
    width: int = 40,
    height: int = 30,
    inputs: tuple[LayerRole, ...] = (),
    **parameters: Any,
) -> tuple[Submit, dict[str, bytes]]:
    job = new_job_id()
    layers, images = [], {}
    for role in inputs:
        ref = ImageRef.raw(f"{job}/{role.value}", width, height, PixelFormat.BGRA8)
        layers.append(LayerImage(role, ref))
        images[ref.id] = bytes((90, 120, 200, 255)) * (width * height)
    fields = {"prompt": "a glass", "steps": 3, "seed": 5, **parameters}
    request = GenerationParameters(method=method, width=width, height=height, **fields)
    return Submit(job, request, tuple(layers)), images


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_connects_and_says_so(demo_server: DemoServer) -> None:
    async def scenario() -> None:
        async with running_client(demo_server.url) as client:
            welcome = await client.wait_connected(TIMEOUT)
            assert client.state is ConnectionState.CONNECTED
            assert client.status == (
                f"Connected to 127.0.0.1:{demo_server.port}: SD1.5 — demo models, "
                "pictures are noise."
            )
            assert [state for state, _ in client.states] == [  # type: ignore[attr-defined]
                ConnectionState.CONNECTING,
                ConnectionState.CONNECTED,
            ]
            assert Method.SD15_JOINT in welcome.capabilities.methods
            assert welcome.model.demo

    run(scenario)


def test_a_job_streams_progress_and_returns_layers_at_the_requested_size(
    demo_server: DemoServer,
) -> None:
    async def scenario() -> None:
        async with running_client(demo_server.url) as client:
            await client.wait_connected(TIMEOUT)
            progress: list[tuple[int, int, int | None]] = []

            def on_progress(step: int, total: int, preview: tuple[int, int, bytes] | None) -> None:
                if preview is not None:
                    width, height, data = preview
                    assert len(data) == width * height * 4
                progress.append((step, total, None if preview is None else preview[0]))

            job, images = submit(steps=3, seed=5)
            results = await client.run_job(job, images, on_progress)
            assert [(step, total) for step, total, _ in progress] == [(1, 3), (2, 3), (3, 3)]
            assert all(width is not None for _, _, width in progress)
            assert len(results) == 1
            assert results[0].seed == 5
            assert list(results[0].layers) == [LayerRole.FOREGROUND]
            assert len(results[0].layers[LayerRole.FOREGROUND]) == 40 * 30 * 4

    run(scenario)


def test_a_job_sends_its_input_layer(demo_server: DemoServer) -> None:
    async def scenario() -> None:
        async with running_client(demo_server.url) as client:
            await client.wait_connected(TIMEOUT)
            job, images = submit(Method.SD15_FG_TO_BG, 48, 32, inputs=(LayerRole.FOREGROUND,))
            (result,) = await client.run_job(job, images)
            assert set(result.layers) == {LayerRole.BACKGROUND, LayerRole.BLENDED}
            assert all(len(data) == 48 * 32 * 4 for data in result.layers.values())

    run(scenario)


def test_cancel_ends_the_job_with_no_results_and_the_connection_goes_on(
    demo_server: DemoServer,
) -> None:
    async def scenario() -> None:
        async with running_client(demo_server.url) as client:
            await client.wait_connected(TIMEOUT)
            started = asyncio.Event()
            job, images = submit(width=64, height=64, steps=150)
            running = asyncio.create_task(client.run_job(job, images, lambda *_: started.set()))
            await asyncio.wait_for(started.wait(), TIMEOUT)
            await client.cancel(job.job)
            with pytest.raises(JobCancelled, match=r"^Cancelled\. Nothing was inserted\.$"):
                await running
            again, images = submit()
            assert len(await client.run_job(again, images)) == 1

    run(scenario)


def test_the_backend_refusing_a_job_is_a_sentence_with_its_code(demo_server: DemoServer) -> None:
    async def scenario() -> None:
        async with running_client(demo_server.url) as client:
            await client.wait_connected(TIMEOUT)
            job, images = submit(cfg_scale=99.0)
            with pytest.raises(JobFailed) as caught:
                await client.run_job(job, images)
            assert caught.value.code == "invalid_request"
            assert str(caught.value).startswith("The backend can't run this with these settings.")
            assert "cfg_scale" in str(caught.value)

    run(scenario)


def test_limits_are_checked_before_anything_is_sent(demo_server: DemoServer) -> None:
    async def scenario() -> None:
        async with running_client(demo_server.url) as client:
            await client.wait_connected(TIMEOUT)
            job, images = submit(steps=151)
            with pytest.raises(JobFailed) as caught:
                await client.run_job(job, images)
            assert caught.value.code == "limit_exceeded"
            assert "request.steps: 151 exceeds the limit of 150" in str(caught.value)

    run(scenario)


def test_without_a_backend_it_says_how_to_start_one_and_keeps_trying() -> None:
    async def scenario() -> None:
        url = f"ws://127.0.0.1:{closed_port()}"
        async with running_client(url) as client:
            await wait_for(lambda: len(client.states) >= 4)  # type: ignore[attr-defined]
            assert client.state is not ConnectionState.CONNECTED
            sentences = {text for state, text in client.states  # type: ignore[attr-defined]
                         if state is ConnectionState.DISCONNECTED}  # fmt: skip
            assert sentences == {
                f"Can't reach the LayerDiffuse backend at {url[5:]}. Start it with "
                "`layerdiffuse serve` (or check the address in the docker)."
            }
            job, images = submit()
            with pytest.raises(NotConnected):
                await client.run_job(job, images)

    run(scenario)


def test_reconnects_after_the_backend_restarts(tmp_path: Path) -> None:
    server = start_demo_server(tmp_path / "first")
    port = server.port

    async def scenario() -> None:
        nonlocal server
        async with running_client(server.url) as client:
            first = await client.wait_connected(TIMEOUT)
            job, images = submit(width=64, height=64, steps=150)
            started = asyncio.Event()
            running = asyncio.create_task(client.run_job(job, images, lambda *_: started.set()))
            await asyncio.wait_for(started.wait(), TIMEOUT)
            await asyncio.to_thread(server.stop)
            await wait_for(lambda: client.state is not ConnectionState.CONNECTED)
            server = await asyncio.to_thread(start_demo_server, tmp_path / "second", port)
            second = await client.wait_connected(TIMEOUT)
            assert second.session != first.session
            # The running job went down with the first backend; nothing of it arrives.
            with pytest.raises(JobLost, match=r"^The backend restarted, and the running job"):
                await asyncio.wait_for(running, TIMEOUT)
            job, images = submit()
            assert len(await client.run_job(job, images)) == 1
            disconnected = [text for state, text in client.states  # type: ignore[attr-defined]
                            if state is ConnectionState.DISCONNECTED]  # fmt: skip
            assert disconnected and all("127.0.0.1" in text for text in disconnected)

    try:
        run(scenario)
    finally:
        server.stop()


def test_a_dropped_connection_keeps_the_session_and_its_running_job(
    demo_server: DemoServer,
) -> None:
    async def scenario() -> None:
        async with running_client(demo_server.url) as client:
            first = await client.wait_connected(TIMEOUT)
            job, images = submit(width=64, height=64, steps=40)
            started = asyncio.Event()
            running = asyncio.create_task(client.run_job(job, images, lambda *_: started.set()))
            await asyncio.wait_for(started.wait(), TIMEOUT)
            websocket = client._websocket  # drop the connection under the client
            assert websocket is not None
            await websocket.close()
            await wait_for(lambda: client.state is not ConnectionState.CONNECTED)
            second = await client.wait_connected(TIMEOUT)
            assert second.session == first.session
            results = await asyncio.wait_for(running, TIMEOUT)
            assert len(results[0].layers[LayerRole.FOREGROUND]) == 64 * 64 * 4

    run(scenario)


def test_a_token_is_sent_and_a_wrong_one_explained(tmp_path: Path) -> None:
    server = start_demo_server(tmp_path, token="t0k3n")

    async def scenario() -> None:
        async with running_client(server.url) as client:
            await wait_for(lambda: "token" in client.status)
            assert client.state is ConnectionState.DISCONNECTED
            assert client.status == (
                f"The backend at 127.0.0.1:{server.port} needs a token, and the one in the "
                "docker is missing or wrong."
            )
            await client.configure(server.url, "t0k3n")
            await client.wait_connected(TIMEOUT)
            job, images = submit()
            assert len(await client.run_job(job, images)) == 1

    try:
        run(scenario)
    finally:
        server.stop()


def test_configure_moves_to_another_address(demo_server: DemoServer) -> None:
    async def scenario() -> None:
        async with running_client(f"ws://127.0.0.1:{closed_port()}") as client:
            await wait_for(lambda: "Can't reach" in client.status)
            await client.configure(demo_server.url, "")
            await client.wait_connected(TIMEOUT)
            assert client.url == demo_server.url

    run(scenario)
