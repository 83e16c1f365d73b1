"""`layerdiffuse serve --cluster` and `layerdiffuse cluster status` as a studio runs them.

The first test is the README's "For studios" section on one machine: a gateway with a
one-node Ray of two stand-in GPUs, a job through it, the status, and Ctrl-C taking
the gateway and its Ray down together.
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from websockets.asyncio.client import connect

from backend.cli import main
from protocol import JobStatus
from tests.backend.server.conftest import ProtocolClient

from .conftest import require_ray

pytestmark = pytest.mark.cluster

ROOT = Path(__file__).resolve().parents[3]
README_SERVE = ["serve", "--demo", "--cluster", "local", "--gpus", "2"]
"""The README's studio command (on a free port here)."""
START_TIMEOUT = 180.0
STOP_TIMEOUT = 60.0


def session_processes(session: int) -> list[int]:
    """Live processes of a process session (the gateway's: it and its Ray)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if os.getsid(int(entry.name)) == session:
                stat = (entry / "stat").read_text()
                if stat.rpartition(")")[2].split()[0] != "Z":
                    pids.append(int(entry.name))
        except (ProcessLookupError, PermissionError, FileNotFoundError):
            continue
    return pids


def test_the_readme_studio_section_runs_on_one_machine(demo_xdg_cache: Path) -> None:
    require_ray()
    with subprocess.Popen(
        [sys.executable, "-m", "backend", *README_SERVE, "--port", "0"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its Ray is in its session, so we can see it go
    ) as gateway:
        try:
            _serve_one_job_and_stop(gateway)
        finally:
            if gateway.poll() is None:
                os.killpg(gateway.pid, signal.SIGKILL)
                gateway.wait()
        assert gateway.stderr is not None
        stderr = gateway.stderr.read()
    assert "2 GPU worker(s) ready with demo-sd15" in stderr
    assert "Traceback" not in stderr


def _serve_one_job_and_stop(gateway: subprocess.Popen[str]) -> None:
    port = _listening_port(gateway)

    async def one_job() -> JobStatus:
        url = f"ws://127.0.0.1:{port}"
        async with connect(url, compression=None, max_size=2**26) as websocket:
            client = ProtocolClient(websocket)
            welcome = (await client.hello()).welcome
            assert welcome.model.demo
            await client.submit("j1", steps=2)
            events = await client.until_done("j1")
            return events[-1].done.status

    assert asyncio.run(one_job()) is JobStatus.COMPLETED
    status = subprocess.run(
        [sys.executable, "-m", "backend", "cluster", "status"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=STOP_TIMEOUT,
    )
    assert status.returncode == 0, status.stderr
    assert "1 node(s), 2 GPU(s), 0 free" in status.stdout
    assert "layerdiffuse-demo-sd15: running, replicas 2 running" in status.stdout
    assert "  queue: 0 running, 0 waiting from 0 client(s)" in status.stdout

    assert len(session_processes(gateway.pid)) > 1  # the gateway and its Ray
    gateway.send_signal(signal.SIGINT)  # Ctrl-C
    assert gateway.wait(STOP_TIMEOUT) == 0
    deadline = time.monotonic() + STOP_TIMEOUT
    while session_processes(gateway.pid):
        assert time.monotonic() < deadline, "the gateway's Ray outlived it"
        time.sleep(0.2)


def _listening_port(gateway: subprocess.Popen[str]) -> int:
    assert gateway.stdout is not None
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        line = gateway.stdout.readline()
        if not line:
            stderr = gateway.stderr.read() if gateway.stderr else ""
            raise AssertionError(f"the gateway stopped: {gateway.wait()}: {stderr}")
        found = re.fullmatch(r"listening on ws://127\.0\.0\.1:(\d+)\n", line)
        if found:
            return int(found.group(1))
    raise AssertionError(f"the gateway did not listen within {START_TIMEOUT:g} s")


def test_an_address_where_no_ray_answers_is_said_at_once(
    capsys: pytest.CaptureFixture[str],
) -> None:
    require_ray()
    code = main(["serve", "--demo", "--cluster", "127.0.0.1:1", "--port", "0"])
    assert code == 3
    assert capsys.readouterr().err.splitlines()[-1] == (
        "error: no Ray cluster at 127.0.0.1:1 (connection refused): start its head there "
        "with `ray start --head --port 6379`, or give the address it printed"
    )


def test_cluster_flags_need_cluster(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["serve", "--demo", "--gpus", "2"]) == 2
    assert capsys.readouterr().err == "error: --gpus needs --cluster (docs/cluster.md)\n"


def test_without_ray_the_cluster_commands_say_how_to_install_it(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    real = importlib.util.find_spec

    def find_spec(name: str, *rest: object) -> object:
        return None if name == "ray" else real(name, *rest)  # type: ignore[arg-type]

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    assert main(["serve", "--demo", "--cluster", "local", "--port", "0"]) == 3
    assert main(["cluster", "status"]) == 3
    hint = "pip install -e '.[cluster]' (or pip install 'krita-layerdiffuse[cluster]')"
    assert capsys.readouterr().err.splitlines() == [
        f"error: --cluster needs Ray Serve: {hint}",
        f"error: cluster status needs Ray Serve: {hint}",
    ]
