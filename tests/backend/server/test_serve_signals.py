"""`layerdiffuse serve` stops when told: SIGTERM while idle with a client connected, and
while a job runs (the job is interrupted at its next step).

The process is the real console entry (`python -m backend serve --demo`); the bound on
the exit is the behaviour asked for (a service manager waits a few seconds before it
kills), not a speed figure: the exit times are printed with `-s`.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from websockets.asyncio.client import connect

from protocol import ClientProtocol, GenerationParameters, Method, ProgressReceived, Submit

ROOT = Path(__file__).resolve().parents[3]
EXIT_BOUND = 5.0
"""Seconds a stopped server may take to exit (the goal is 2 s idle, one step busy)."""


def start_server(folder: Path, *options: str) -> tuple[subprocess.Popen[str], int, list[str]]:
    """The demo backend started with `options`; its port and the lines it printed first."""
    environment = dict(
        os.environ, XDG_CACHE_HOME=str(folder / "cache"), PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1"
    )
    environment.pop("LAYERDIFFUSE_TOKEN", None)
    process = subprocess.Popen(
        [sys.executable, "-m", "backend", "serve", "--demo", "--port", "0", *options],
        cwd=ROOT,
        env=environment,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert process.stdout is not None
    deadline = time.monotonic() + 120
    before: list[str] = []
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        match = re.search(r"listening on ws://127\.0\.0\.1:(\d+)", line)
        if match:
            return process, int(match.group(1)), before
        before.append(line.strip())
        if not line and process.poll() is not None:
            break
    process.kill()
    raise RuntimeError("the demo backend did not start")


def seconds_to_exit(process: subprocess.Popen[str]) -> float:
    started = time.monotonic()
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(5)
        return float("inf")
    return time.monotonic() - started


@pytest.mark.parametrize("busy", [False, True], ids=["idle", "busy"])
def test_sigterm_stops_the_server_promptly(tmp_path: Path, busy: bool) -> None:
    """Idle, it was started with `--warm-up on`: its first job ran before it listened."""
    process, port, before = start_server(tmp_path, *([] if busy else ["--warm-up", "on"]))
    warmed = [line for line in before if line.startswith("warmed up in ")]
    assert len(warmed) == (0 if busy else 1), before

    async def scenario() -> float:
        async with connect(f"ws://127.0.0.1:{port}", max_size=None) as websocket:
            client = ClientProtocol("signal-test")
            for frame in client.send_hello():
                await websocket.send(frame)
            client.receive_text(await websocket.recv())  # welcome
            if busy:
                request = GenerationParameters(
                    method=Method.SD15_TRANSPARENT, prompt="a glass", width=512, height=512,
                    steps=150, fit_to_native=False,
                )  # fmt: skip
                for frame in client.send_submit(Submit("long-job", request), {}):
                    await websocket.send(frame)
                while True:  # until the job is running
                    message = await websocket.recv()
                    events = (
                        client.receive_text(message)
                        if isinstance(message, str)
                        else client.receive_binary(message)
                    )
                    if any(isinstance(event, ProgressReceived) for event in events):
                        break
            return await asyncio.to_thread(seconds_to_exit, process)

    try:
        seconds = asyncio.run(asyncio.wait_for(scenario(), 120))
    finally:
        if process.poll() is None:
            process.kill()
        if process.stdout is not None:
            process.stdout.close()
    print(f"{'busy' if busy else 'idle'}: exited {seconds:.2f} s after SIGTERM")
    assert seconds < EXIT_BOUND
    assert process.returncode == 0
