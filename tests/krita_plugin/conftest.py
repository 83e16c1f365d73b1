"""A real `layerdiffuse serve --demo` subprocess for the plugin's tests."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import selectors
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from krita_plugin.client import BackendClient, ConnectionState

ROOT = Path(__file__).resolve().parents[2]
START_TIMEOUT = 120.0
WAIT_TIMEOUT = 60.0
LISTENING = re.compile(r"listening on ws://127\.0\.0\.1:(\d+)")


@dataclass
class DemoServer:
    """A `layerdiffuse serve --demo` process we started, and its port."""

    process: subprocess.Popen[str]
    port: int
    log: Path
    token: str | None = None
    family: str = "sd15"

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    def stop(self) -> None:
        """SIGTERM (a clean shutdown), then SIGKILL if it does not exit in 15 s."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        if self.process.stdout is not None:
            self.process.stdout.close()

    def restart(self, folder: Path) -> None:
        """Stop this backend and start a new one (a new session) on the same port."""
        self.stop()
        new = start_demo_server(folder, self.port, self.token, self.family)
        self.process, self.log = new.process, new.log


def start_demo_server(
    folder: Path, port: int = 0, token: str | None = None, family: str = "sd15", nice: int = 0
) -> DemoServer:
    """Start the demo backend on 127.0.0.1 and wait for its `listening on` line.

    Args:
        folder: for its cache (XDG_CACHE_HOME) and its log.
        port: 0 picks a free one.
        token: the backend's token, if any.
        family: the `--demo` set: sd15, sdxl, flux, qwen_layered or sdxl-illustrious.
        nice: run it at this niceness (its own process group always), so that on a small
            machine Krita's UI thread is measured, not a backend sharing its cores.
    """
    folder.mkdir(parents=True, exist_ok=True)
    # One torch thread: the demo models are tiny, and with Krita busy on the other core
    # two spinning OpenMP threads would slow every job tenfold.
    environment = dict(
        os.environ,
        XDG_CACHE_HOME=str(folder / "cache"),
        PYTHONUNBUFFERED="1",
        OMP_NUM_THREADS="1",
    )
    environment.pop("LAYERDIFFUSE_TOKEN", None)
    command = [sys.executable, "-m", "backend", "serve", "--demo", family, "--port", str(port)]
    if nice:
        command = ["nice", "-n", str(nice), *command]
    if token:
        command += ["--token", token]
    log = folder / f"serve-{time.monotonic_ns()}.log"
    with log.open("w") as errors:
        process = subprocess.Popen(
            command,
            cwd=ROOT,
            env=environment,
            stdout=subprocess.PIPE,
            stderr=errors,
            text=True,
            start_new_session=True,
        )
    assert process.stdout is not None
    selector = selectors.DefaultSelector()
    selector.register(process.stdout, selectors.EVENT_READ)
    deadline = time.monotonic() + START_TIMEOUT
    try:
        while time.monotonic() < deadline:
            if not selector.select(timeout=0.5):
                if process.poll() is not None:
                    break
                continue
            line = process.stdout.readline()
            if not line and process.poll() is not None:
                break
            match = LISTENING.search(line)
            if match:
                return DemoServer(process, int(match.group(1)), log, token, family)
    finally:
        selector.close()
    DemoServer(process, 0, log).stop()
    raise RuntimeError(f"the demo backend did not start: {log.read_text()[-2000:]}")


@pytest.fixture(scope="session")
def demo_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DemoServer]:
    """One demo backend for the session (its jobs are small: a few tenths of a second)."""
    server = start_demo_server(tmp_path_factory.mktemp("demo-server"))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def demo_sdxl_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DemoServer]:
    """A demo backend with the SDXL-shaped models (its methods are the SDXL ones)."""
    server = start_demo_server(tmp_path_factory.mktemp("demo-sdxl-server"), family="sdxl")
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def demo_flux_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DemoServer]:
    """A demo backend with the FLUX-shaped models (its one method is flux_transparent)."""
    server = start_demo_server(tmp_path_factory.mktemp("demo-flux-server"), family="flux")
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def demo_qwen_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DemoServer]:
    """A demo backend with a tiny random Qwen-Image-Layered (its one method is
    split_layers; its layers are noise, but as many and as large as asked)."""
    server = start_demo_server(tmp_path_factory.mktemp("demo-qwen-server"), family="qwen_layered")
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def demo_illustrious_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DemoServer]:
    """The SDXL demo set as a single-file checkpoint named as an Illustrious-XL one: its
    welcome warns that LayerDiffuse fails on it, and it offers sdxl_matted."""
    folder = tmp_path_factory.mktemp("demo-illustrious-server")
    server = start_demo_server(folder, family="sdxl-illustrious")
    try:
        yield server
    finally:
        server.stop()


@contextlib.asynccontextmanager
async def running_client(url: str, token: str = "") -> AsyncIterator[BackendClient]:
    """A client whose connection loop runs while the block runs."""
    states: list[tuple[ConnectionState, str]] = []
    client = BackendClient(
        url, token, on_state=lambda *state: states.append(state), retry_delays=(0.1, 0.2, 0.5)
    )
    client.states = states  # type: ignore[attr-defined]
    task = asyncio.create_task(client.run())
    try:
        yield client
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def wait_for(condition: Callable[[], bool], timeout: float = WAIT_TIMEOUT) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        if asyncio.get_running_loop().time() > deadline:
            raise TimeoutError("condition not met")
        await asyncio.sleep(0.02)
