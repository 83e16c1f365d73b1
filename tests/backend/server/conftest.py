"""A real server on 127.0.0.1 (port 0) with the demo models, and a small protocol client."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import numpy as np
import pytest
from websockets.asyncio.client import ClientConnection, connect

from backend.config import ServerConfig
from backend.model_set import ModelSet
from backend.server.serve import LayerDiffuseServer
from protocol import (
    ClientEvent,
    ClientProtocol,
    GenerationParameters,
    ImageRef,
    JobDone,
    LayerImage,
    LayerRole,
    Method,
    PixelFormat,
    Submit,
    WelcomeReceived,
)

TIMEOUT = 60.0


class ProtocolClient:
    """One websocket connection speaking the protocol through `ClientProtocol`."""

    def __init__(self, websocket: ClientConnection, name: str = "test-client") -> None:
        self.websocket = websocket
        self.protocol = ClientProtocol(name)
        self.welcome = None
        self.fragment_binary_frames = False
        self._events: list[ClientEvent] = []

    async def send(self, frames: list[str | bytes]) -> None:
        for frame in frames:
            if self.fragment_binary_frames and isinstance(frame, bytes):
                await self.websocket.send([frame[:7], frame[7:]])  # one message, two parts
            else:
                await self.websocket.send(frame)

    async def hello(self, session: str | None = None) -> WelcomeReceived:
        await self.send(self.protocol.send_hello(session))
        event = await self.next_event()
        assert isinstance(event, WelcomeReceived), event
        self.welcome = event.welcome
        return event

    async def next_event(self, timeout: float = TIMEOUT) -> ClientEvent:
        while not self._events:
            message = await asyncio.wait_for(self.websocket.recv(), timeout)
            if isinstance(message, str):
                self._events.extend(self.protocol.receive_text(message))
            else:
                self._events.extend(self.protocol.receive_binary(message))
        return self._events.pop(0)

    async def until_done(self, job: str) -> list[ClientEvent]:
        """Every event up to and including the job's `done` (other jobs' events too)."""
        events = []
        while True:
            event = await self.next_event()
            events.append(event)
            if isinstance(event, JobDone) and event.done.job == job:
                return events

    async def submit(
        self,
        job: str,
        method: Method = Method.SD15_TRANSPARENT,
        inputs: dict[LayerRole, np.ndarray] | None = None,
        result_format: PixelFormat = PixelFormat.BGRA8,
        **parameters: Any,
    ) -> None:
        fields = {"prompt": "a glass", "width": 64, "height": 64, "steps": 2, **parameters}
        layers, images = [], {}
        for role, rgba in (inputs or {}).items():
            height, width = rgba.shape[:2]
            ref = ImageRef.raw(f"{job}/{role.value}", width, height, PixelFormat.BGRA8)
            layers.append(LayerImage(role, ref))
            images[ref.id] = np.ascontiguousarray(rgba[..., [2, 1, 0, 3]]).tobytes()
        submit = Submit(
            job=job,
            request=GenerationParameters(method=method, **fields),
            inputs=tuple(layers),
            result_format=result_format,
        )
        await self.send(self.protocol.send_submit(submit, images))


@dataclasses.dataclass
class RunningServer:
    server: LayerDiffuseServer
    port: int

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    @asynccontextmanager
    async def client(self, **options: Any) -> AsyncIterator[ProtocolClient]:
        async with connect(self.url, compression=None, max_size=2**26, **options) as websocket:
            yield ProtocolClient(websocket)


def run_with_server(
    models: ModelSet,
    scenario: Callable[[RunningServer], Awaitable[None]],
    **config: Any,
) -> None:
    """Start a server on a free port, run the scenario against it, stop it."""

    async def main() -> None:
        server = LayerDiffuseServer(ServerConfig(port=0, demo=True, **config), models)
        await server.start()
        try:
            await asyncio.wait_for(scenario(RunningServer(server, server.port)), TIMEOUT * 2)
        finally:
            await server.stop()

    asyncio.run(main())


@pytest.fixture
def with_server(demo_models: ModelSet) -> Callable[..., None]:
    """`with_server(scenario, **config)` runs an async scenario against a live server."""

    def run(scenario: Callable[[RunningServer], Awaitable[None]], **config: Any) -> None:
        run_with_server(demo_models, scenario, **config)

    return run


@pytest.fixture
def with_sdxl_server(demo_sdxl_models: ModelSet) -> Callable[..., None]:
    """Like `with_server`, with the SDXL-shaped demo models."""

    def run(scenario: Callable[[RunningServer], Awaitable[None]], **config: Any) -> None:
        run_with_server(demo_sdxl_models, scenario, **config)

    return run
