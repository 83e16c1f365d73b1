"""Every argument error of `layerdiffuse`: one line naming the flag typed, exit 2, in < 1 s.

Each bad invocation runs through the installed console script, as a user types it, and
must answer before torch or diffusers is imported (they alone take seconds): the same
invocations run in one fresh interpreter that must not have imported them afterwards.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from backend.store.catalogue import CATALOGUE

REPOSITORY = Path(__file__).resolve().parents[2]
LIMIT_SECONDS = 1.0
HEAVY = ("torch", "diffusers", "transformers")
KNOWN_NAMES = ", ".join(sorted(CATALOGUE))

# (argv, the one line on stderr); run in a folder holding `afile` and nothing else.
CASES: list[tuple[list[str], str]] = [
    (["generate", "-W", "0"], "error: -W: 0 outside 8..4096"),
    (["generate", "--width", "5000"], "error: --width: 5000 outside 8..4096"),
    (["generate", "-H", "abc"], "error: -H: 'abc' is not an integer in 8..4096"),
    (["generate", "--steps", "0"], "error: --steps: 0 outside 1..150"),
    (["generate", "--stop-at", "2"], "error: --stop-at: 2.0 outside 0.0..1.0"),
    (["generate", "--weight", "-5"], "error: --weight: -5.0 outside 0.0..2.0"),
    (["generate", "--batch-size", "1000"], "error: --batch-size: 1000 outside 1..64"),
    (
        ["generate", "--batch-size", "8", "--batch-count", "9"],
        "error: --batch-size: 72 images in all exceed the limit of 64",
    ),
    (["generate", "--cfg", "31"], "error: --cfg: 31.0 outside 1.0..30.0"),
    (["generate", "--cfg", "x"], "error: --cfg: 'x' is not a number in 1.0..30.0"),
    (["generate", "--seed", "-1"], "error: --seed: -1 outside 0..4294967295"),
    (["generate", "--denoise", "1.5"], "error: --denoise: 1.5 outside 0.0..1.0"),
    (["generate", "-p", "a" * 4001], "error: -p: 4001 characters exceed 4000"),
    (
        ["generate", "--sampler", "euler_b"],
        "error: --sampler: 'euler_b' is not one of dpmpp_2m_karras, dpmpp_2m_sde_karras, "
        "euler_a, euler, unipc, ddim, lcm, lcm_sgm_uniform, euler_sgm_uniform",
    ),
    (
        ["generate", "--method", "sd15_magic"],
        "error: --method: 'sd15_magic' is not one of sd15_transparent, sd15_joint, sd15_fg2bg, "
        "sd15_bg2fg, sdxl_transparent_attn, sdxl_transparent_conv, sdxl_fg2ble, "
        "sdxl_fgble2bg, sdxl_bg2ble, sdxl_bgble2fg, sdxl_fg2bg, sdxl_bg2fg, flux_transparent, "
        "split_layers, sd15_matted, sdxl_matted",
    ),
    (
        ["generate", "--method", "sd15_fg2bg"],
        "error: --foreground: sd15_fg2bg needs a foreground layer",
    ),
    (
        ["generate", "--background", "missing.png"],
        "error: --background: sd15_transparent takes no background layer",
    ),
    (
        ["generate", "--fg-prompt", "glass"],
        "error: --fg-prompt: sd15_transparent takes no foreground prompt",
    ),
    (
        ["generate", "--demo", "sdxl"],
        "error: --demo sdxl: sd15_transparent runs on sd15 models; give --demo sd15, or a "
        "method of the sdxl family",
    ),
    (
        ["generate", "--init", "missing.png"],
        "error: --init: cannot read missing.png: [Errno 2] No such file or directory: "
        "'missing.png'",
    ),
    (["generate", "-o", "afile"], "error: -o: afile is a file, not a folder"),
    (
        ["generate", "--output", "afile/results"],
        "error: --output: afile/results is inside afile, which is a file, not a folder",
    ),
    (
        ["generate", "--device", "gpu"],
        "error: argument --device: 'gpu' is not a device: auto, cpu, cuda, cuda:N, mps "
        "(see `layerdiffuse generate --help`)",
    ),
    (
        ["generate", "--no-such-option"],
        "error: unrecognized arguments: --no-such-option (see `layerdiffuse --help`)",
    ),
    (
        ["serve", "--host", "0.0.0.0"],
        "error: binding 0.0.0.0 exposes the server to the network: give a --token (or set "
        "LAYERDIFFUSE_TOKEN), or bind 127.0.0.1",
    ),
    (["serve", "--port", "70000"], "error: --port: 70000 is not 0..65535"),
    (
        ["serve", "--allow-origin", "example.com"],
        "error: --allow-origin 'example.com' is not an origin as browsers send it: "
        "scheme://host[:port] in lowercase, no path, like http://localhost:5173",
    ),
    (
        ["serve", "--models-dir", "afile"],
        "error: argument --models-dir: afile is a file, not a folder "
        "(see `layerdiffuse serve --help`)",
    ),
    (
        ["models", "download", "layer_sd99_magic"],
        f"error: NAME: unknown model file 'layer_sd99_magic'; known names: {KNOWN_NAMES}",
    ),
    (
        ["models", "download", "--family", "sd21"],
        "error: --family: 'sd21' is not one of sd15, sdxl, flux",
    ),
    (
        ["models", "list", "--models-dir", "nowhere"],
        "error: argument --models-dir: nowhere does not exist "
        "(see `layerdiffuse models list --help`)",
    ),
    (["bench", "--size", "32"], "error: --size: 32 is not a multiple of 64, 64..4096"),
    (["bench", "--repeat", "0"], "error: --repeat: 0 is not 1..1000"),
    (
        ["bench", "--stages", "decoder,nope"],
        "error: argument --stages: unknown stage 'nope'; known: decoder, sd15, sdxl, methods, "
        "sdxl_methods, transport, demo, cluster, hires, fewstep, compile (see "
        "`layerdiffuse bench --help`)",
    ),
    (
        ["bench", "--json", "nowhere/report.json"],
        "error: argument --json: nowhere/report.json: its folder nowhere does not exist "
        "(see `layerdiffuse bench --help`)",
    ),
]


def _console_script() -> Path:
    """The `layerdiffuse` the project installs beside this interpreter (no skip if absent)."""
    beside = Path(sys.executable).parent / "layerdiffuse"
    found = beside if beside.exists() else shutil.which("layerdiffuse")
    assert found is not None, "the layerdiffuse console script is not installed"
    return Path(found)


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    folder = tmp_path / "work"
    folder.mkdir()
    (folder / "afile").write_text("not a folder")
    return folder


@pytest.fixture
def isolated_environment(tmp_path: Path) -> dict[str, str]:
    """No token, no network, caches in tmp_path."""
    environment = {key: value for key, value in os.environ.items() if key != "LAYERDIFFUSE_TOKEN"}
    environment.update(
        XDG_CACHE_HOME=str(tmp_path / "xdg-cache"),
        HF_HOME=str(tmp_path / "hf-home"),
        HF_HUB_OFFLINE="1",
    )
    return environment


@pytest.fixture(scope="module")
def interpreter_start_seconds() -> float:
    """The best of three bare interpreter starts, to tell a slow machine from a slow CLI."""
    best = float("inf")
    for _ in range(3):
        started = time.perf_counter()
        subprocess.run([sys.executable, "-c", "pass"], check=True)
        best = min(best, time.perf_counter() - started)
    return best


def _limit(interpreter_start: float) -> float:
    # The CLI answers in ~0.1 s where a bare interpreter starts in ~0.03 s. Only a box so
    # loaded that the interpreter alone takes more than 0.3 s to start gets more time.
    return LIMIT_SECONDS + max(0.0, interpreter_start - 0.3)


def _run(
    argv: list[str], cwd: Path, environment: dict[str, str]
) -> tuple[subprocess.CompletedProcess[str], float]:
    started = time.perf_counter()
    done = subprocess.run(
        [str(_console_script()), *argv],
        cwd=cwd,
        env=environment,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return done, time.perf_counter() - started


@pytest.mark.parametrize(("argv", "message"), CASES, ids=lambda value: str(value)[:60])
def test_a_bad_invocation_fails_at_once_in_one_line_naming_the_flag(
    argv: list[str],
    message: str,
    workdir: Path,
    isolated_environment: dict[str, str],
    interpreter_start_seconds: float,
) -> None:
    done, elapsed = _run(argv, workdir, isolated_environment)
    assert (done.returncode, done.stdout, done.stderr) == (2, "", message + "\n")
    assert elapsed < _limit(interpreter_start_seconds)
    assert sorted(path.name for path in workdir.iterdir()) == ["afile"]  # nothing written


@pytest.fixture
def busy_port() -> Iterator[int]:
    with socket.create_server(("127.0.0.1", 0)) as listener:
        yield listener.getsockname()[1]


def test_serve_on_a_port_in_use_fails_at_once(
    busy_port: int,
    workdir: Path,
    isolated_environment: dict[str, str],
    interpreter_start_seconds: float,
) -> None:
    done, elapsed = _run(
        ["serve", "--demo", "--port", str(busy_port)], workdir, isolated_environment
    )
    assert (done.returncode, done.stdout, done.stderr) == (
        2,
        "",
        f"error: cannot listen on 127.0.0.1:{busy_port}: address already in use\n",
    )
    assert elapsed < _limit(interpreter_start_seconds)


def test_no_bad_invocation_imports_torch_or_diffusers(
    busy_port: int, workdir: Path, isolated_environment: dict[str, str]
) -> None:
    """The proof behind the timing: each error comes before the heavy imports."""
    cases = [argv for argv, _ in CASES] + [["serve", "--demo", "--port", str(busy_port)]]
    code = (
        "import json, sys\n"
        "from backend.cli import main\n"
        f"heavy = {HEAVY!r}\n"
        "report = []\n"
        "for argv in json.loads(sys.argv[1]):\n"
        "    code = main(argv)\n"
        "    report.append([argv, code, [m for m in heavy if m in sys.modules]])\n"
        "print(json.dumps(report))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, json.dumps(cases)],
        cwd=workdir,
        env={**isolated_environment, "PYTHONPATH": str(REPOSITORY)},
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    report = json.loads(done.stdout)
    assert [(argv, code, imported) for argv, code, imported in report] == [
        (argv, 2, []) for argv in cases
    ]
