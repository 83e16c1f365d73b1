"""`layerdiffuse bench`: per-stage timings, ours beside the reference's way, in one run.

Models are built from the shipped real configs with random weights (timing depends
on shapes, not values), or at demo size on a CPU. Each stage is timed as the median
of several runs after warm-ups, with CUDA synchronised; ratios compare variants
measured in the same process on the same device.

    report.py     Timing, BenchReport, measure()
    models.py     real-size model sets with random weights
    decoder.py    the transparent decode: the reference's loop against ours
    unets.py      text encoders, one UNet step with each layer model, the VAE
    jobs.py       whole jobs as the methods run them, and one job stage by stage
    transport.py  a big layer over loopback websockets, raw against PNG
    run.py        run_bench(): the stages a run asks for, one report
"""

from __future__ import annotations

from .models import build_random, random_sd15_model_set, random_sdxl_model_set
from .report import BenchReport, Timing
from .run import STAGES, run_bench

__all__ = [
    "STAGES",
    "BenchReport",
    "Timing",
    "build_random",
    "random_sd15_model_set",
    "random_sdxl_model_set",
    "run_bench",
]
