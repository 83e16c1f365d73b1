"""The demo job a newcomer runs first, stage by stage, on the machine at hand.

`layerdiffuse generate --demo -p …` (SD1.5 transparent, 512², 20 steps) spends its time
in four places: starting Python and importing torch and diffusers, opening the demo
model set, the sampler loop, and decoding. Only the sampler is the model's own work;
this stage times each of the others beside it, and the whole command as a user runs it.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from ..store.model_sets import open_model_set
from .jobs import bench_breakdown
from .report import BenchReport, Timing, time_stage

DEMO_SIDE = 512
DEMO_STEPS = 20
DEMO_COMMAND = ["generate", "--demo", "-p", "a glass cup, high quality"]
"""The README's quick-start command, without its output folder."""


def bench_demo(
    report: BenchReport, device: torch.device, repeat: int, side: int = DEMO_SIDE
) -> None:
    """Time the demo job: start-up, the model set, each stage of a job, the whole command.

    Args:
        side: the image side; the quick start's is 512 (smaller only to test this).
    """
    runs = max(1, min(repeat, 3))  # whole processes take seconds each
    stage = "demo start-up"
    report.add(Timing(stage, "python -c pass", _process_ms(["-c", "pass"], runs)))
    report.add(Timing(stage, "import torch", _process_ms(["-c", "import torch"], runs)))
    imports = "import backend.methods.registry, backend.store.model_sets"
    report.add(
        Timing(stage, "import torch, diffusers, methods", _process_ms(["-c", imports], runs))
    )

    started = time.perf_counter()
    models = open_model_set(demo=True, device=str(device), dtype="float32")
    report.add(Timing(stage, "open the demo model set", (time.perf_counter() - started) * 1000))

    bench_breakdown(report, models, side, DEMO_STEPS)
    decoder = models.transparent_decoder()
    pixel = torch.rand(1, 3, side, side, device=device)
    latent = torch.randn(1, 4, side // 8, side // 8, device=device)
    decode = f"demo decode {side}²"
    baseline = "8 views per pass"
    for views in (8, 4, 1):
        time_stage(
            report,
            decode,
            f"{views} view{'s' if views > 1 else ''} per pass",
            lambda views=views: decoder.estimate_augmented(pixel, latent, views),
            device,
            repeat,
            baseline=None if views == 8 else baseline,
        )

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


def _process_ms(arguments: list[str], runs: int) -> float:
    """Median wall time of `python <arguments>` in a fresh process, in ms."""
    samples = []
    for _ in range(runs):
        started = time.perf_counter()
        subprocess.run(
            [sys.executable, *arguments],
            cwd=Path(__file__).resolve().parents[2],
            check=True,
            capture_output=True,
        )
        samples.append((time.perf_counter() - started) * 1000)
    return statistics.median(samples)
