"""The demo job a newcomer runs first, stage by stage, on the machine at hand.

`layerdiffuse generate --demo -p …` (SD1.5 transparent, 512², 20 steps) spends its time
in five places: starting Python and importing torch and diffusers, opening the demo
model set, the sampler loop, decoding, and the interpreter's exit. Only the sampler and
the decoders are the models' own work; this stage times each of the others beside them,
what the command does about them against what it did before, and the whole command as
a user runs it.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from ..layerdiffuse.transparent_vae_decoder import (
    TTA_VIEWS,
    lower_median_of_8,
    use_pointwise_convs,
)
from ..store.model_sets import open_model_set
from .jobs import bench_breakdown
from .report import BenchReport, Timing, time_stage

DEMO_SIDE = 512
DEMO_STEPS = 20
DEMO_COMMAND = ["generate", "--demo", "-p", "a glass cup, high quality"]
"""The README's quick-start command, without its output folder."""

_LIBRARIES = "import backend.methods.registry, backend.store.model_sets"
_AS_THE_CLI = (
    "from backend.startup import importing_libraries\n"
    f"with importing_libraries():\n    {_LIBRARIES}"
)


def bench_demo(
    report: BenchReport, device: torch.device, repeat: int, side: int = DEMO_SIDE
) -> None:
    """Time the demo job: start-up, the model set, each stage of a job, exit, the whole.

    Args:
        side: the image side; the quick start's is 512 (smaller only to test this).
    """
    runs = max(1, min(repeat, 3))  # whole processes take seconds each
    stage = "demo start-up"
    report.add(Timing(stage, "python -c pass", _process_ms(["-c", "pass"], runs)))
    report.add(Timing(stage, "import torch", _process_ms(["-c", "import torch"], runs)))
    plain = "import torch, diffusers, methods"
    report.add(Timing(stage, plain, _import_ms(_LIBRARIES, runs)))
    report.add(
        Timing(
            stage,
            "… collector off, then frozen (the CLI)",
            _import_ms(_AS_THE_CLI, runs),
            None,
            plain,
        )
    )
    exit_plain = "exit after those imports"
    report.add(Timing(stage, exit_plain, _exit_ms(_LIBRARIES, runs)))
    report.add(Timing(stage, "… frozen (the CLI)", _exit_ms(_AS_THE_CLI, runs), None, exit_plain))

    started = time.perf_counter()
    models = open_model_set(demo=True, device=str(device), dtype="float32")
    report.add(Timing(stage, "open the demo model set", (time.perf_counter() - started) * 1000))

    bench_breakdown(report, models, side, DEMO_STEPS)
    _bench_decode(report, models.transparent_decoder(), device, repeat, side)

    with tempfile.TemporaryDirectory() as folder:
        script = [
            "-c",
            "import sys; from backend.cli import main; sys.exit(main(sys.argv[1:]))",
            *DEMO_COMMAND,
            *([] if side == DEMO_SIDE else ["-W", str(side), "-H", str(side)]),
            "--device",
            str(device),
            "-o",
            folder,
        ]
        total = _process_ms(script, runs)
    command = " ".join(["layerdiffuse", *DEMO_COMMAND[:2], "…"])
    report.add(Timing("demo command", f"{command} at {side}², whole", total))


def _bench_decode(
    report: BenchReport, decoder: torch.nn.Module, device: torch.device, repeat: int, side: int
) -> None:
    """The demo's transparent decode as it was and as it is, and its median alone."""
    pixel = torch.rand(1, 3, side, side, device=device)
    latent = torch.randn(1, 4, side // 8, side // 8, device=device)
    stage = f"demo decode {side}²"
    before = "before: 1×1 convs by oneDNN, torch.median"
    use_pointwise_convs(decoder, enabled=False)
    try:
        time_stage(
            report,
            stage,
            before,
            lambda: decoder.estimate_augmented_sequential(pixel, latent),
            device,
            repeat,
        )
    finally:
        use_pointwise_convs(decoder, enabled=True)
    time_stage(
        report,
        stage,
        "1×1 convs as matrix products, torch.median",
        lambda: decoder.estimate_augmented_sequential(pixel, latent),
        device,
        repeat,
        baseline=before,
    )
    for views in (8, 1):
        time_stage(
            report,
            stage,
            f"ours: … and the min/max median, {views} view{'s' if views > 1 else ''} per pass",
            lambda views=views: decoder.estimate_augmented(pixel, latent, views),
            device,
            repeat,
            baseline=before,
        )

    outputs = [torch.rand(1, 4, side, side, device=device) for _ in TTA_VIEWS]
    stage = f"median of 8 views at {side}²"
    time_stage(
        report,
        stage,
        "torch.median",
        lambda: torch.median(torch.stack(outputs), dim=0).values,
        device,
        repeat,
    )
    time_stage(
        report,
        stage,
        "min/max network",
        lambda: lower_median_of_8(outputs),
        device,
        repeat,
        baseline="torch.median",
    )


def _process_ms(arguments: list[str], runs: int) -> float:
    """Median wall time of `python <arguments>` in a fresh process, in ms."""
    samples = []
    for _ in range(runs):
        started = time.perf_counter()
        _python(arguments)
        samples.append((time.perf_counter() - started) * 1000)
    return statistics.median(samples)


def _import_ms(code: str, runs: int) -> float:
    """Median time `code` takes inside a fresh process, in ms."""
    timed = f"import time\nstarted = time.perf_counter()\n{code}\n"
    timed += "print((time.perf_counter() - started) * 1000)"
    return statistics.median(float(_python(["-c", timed])) for _ in range(runs))


def _exit_ms(code: str, runs: int) -> float:
    """Median time from the end of `code` to the end of its process, in ms."""
    timed = f"{code}\nimport time\nprint(time.time())"
    samples = []
    for _ in range(runs):
        finished = float(_python(["-c", timed]))
        samples.append((time.time() - finished) * 1000)
    return statistics.median(samples)


def _python(arguments: list[str]) -> str:
    """Run `python <arguments>` in the repository; its standard output."""
    return subprocess.run(
        [sys.executable, *arguments],
        cwd=Path(__file__).resolve().parents[2],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
