"""The plugin's `BackendClient` against the server's idle limit: closed, back at once, served.

An idle close is no failure: the client reconnects at once without a red dot.

The server runs in this process (its idle limit made short through `ServerConfig`, which
`layerdiffuse serve` has no flag for); the client is the plugin's own, unchanged.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

import pytest

from krita_plugin.client import BackendClient, ConnectionState, new_job_id
from protocol import GenerationParameters, Method, Submit

from .conftest import RunningServer

TIMEOUT = 30.0


@contextlib.asynccontextmanager
async def plugin_client(
    server: RunningServer, states: list[ConnectionState]
) -> AsyncIterator[BackendClient]:
    """The plugin's client, connecting; `states` collects the states it goes through."""
    client = BackendClient(
        server.url,
        on_state=lambda state, _: states.append(state),
        retry_delays=(0.1, 0.2, 0.5),
    )
    task = asyncio.create_task(client.run())
    try:
        yield client
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def job(steps: int = 2, width: int = 64) -> Submit:
    request = GenerationParameters(
        method=Method.SD15_TRANSPARENT, prompt="a glass", width=width, height=width, steps=steps
    )
    return Submit(new_job_id(), request)


def test_the_plugin_client_reconnects_after_an_idle_close_and_runs_a_job(
    with_server, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="backend.server.admission")

    async def scenario(server: RunningServer) -> None:
        states: list[ConnectionState] = []
        async with plugin_client(server, states) as client:
            first = await client.wait_connected(TIMEOUT)
            assert states == [ConnectionState.CONNECTING, ConnectionState.CONNECTED]
            states.clear()
            # Idle: the server closes it (4002) and the client is back with the same
            # session at once, never showing the painter a lost connection.
            while ConnectionState.CONNECTING not in states:
                await asyncio.sleep(0.02)
            again = await client.wait_connected(TIMEOUT)
            assert again.session == first.session
            assert states[:2] == [ConnectionState.CONNECTING, ConnectionState.CONNECTED]
            assert ConnectionState.DISCONNECTED not in states
            assert any("idle for 0.3 s, closed" in line for line in caplog.messages)
            # A job longer than the idle limit is not cut off, whatever the client sends.
            states.clear()
            results = await asyncio.wait_for(client.run_job(job(steps=40, width=128), {}), TIMEOUT)
            assert len(results) == 1
            assert ConnectionState.DISCONNECTED not in states, "closed while the job ran"

    with_server(scenario, idle_timeout_seconds=0.3)


def test_the_plugin_client_is_never_closed_for_its_hello(with_server) -> None:
    """It says hello as soon as the websocket opens, well within the hello timeout."""

    async def scenario(server: RunningServer) -> None:
        states: list[ConnectionState] = []
        async with plugin_client(server, states) as client:
            await client.wait_connected(TIMEOUT)
            await asyncio.sleep(1.5)  # three hello timeouts
            assert states == [ConnectionState.CONNECTING, ConnectionState.CONNECTED]
            assert client.state is ConnectionState.CONNECTED
            assert server.server.admission.pending == 0
            assert server.server.admission.established == 1

    with_server(scenario, hello_timeout_seconds=0.5)
