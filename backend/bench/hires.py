"""Large canvases: the decodes whole and in tiles, and one pass against two.

At 2048² and 4096² (issue #12) three things decide whether a layer arrives and how fast:
the SD VAE's decode and the transparent decoder, whole or in overlapping tiles (peak
memory against time), and the second pass at the canvas's size against one pass near the
native area scaled up. On CUDA the models are SD1.5 at real size with random weights; on
a CPU, where real-size passes at these sizes take many minutes, the demo model set (the
real structure, tiny widths), so that the tiled and the second-pass code paths are timed
as they run, not the models' full cost.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import replace

import torch

from protocol import Hires, Method

from ..layerdiffuse import Tiling
from ..methods.registry import run_method
from ..methods.request import GenerationRequest
from ..methods.stages import transparent_decode, vae_decode
from ..model_set import ModelSet
from ..store.model_sets import open_model_set
from .models import random_sd15_model_set
from .report import BenchReport, Timing, measure

HIRES_SIDES = (2048, 4096)
WHOLE = Tiling(above_pixels=2**40)
"""A threshold no image reaches: every decode whole."""


def bench_hires(
    report: BenchReport,
    device: torch.device,
    dtype: torch.dtype,
    repeat: int,
    sides: tuple[int, ...] = HIRES_SIDES,
) -> None:
    """For each side: VAE and transparent decode whole and in tiles, then an SD1.5
    transparent job in one pass and in two.

    Args:
        repeat: timed runs per variant, at most 3 here (each is seconds to minutes).
    """
    cuda = device.type == "cuda"
    if cuda:
        models = random_sd15_model_set(device, dtype)
    else:
        models = open_model_set(demo=True, device=str(device), dtype="float32")
    runs = max(1, min(repeat, 3))
    steps = 20 if cuda else 2
    for side in sides:
        _bench_decodes(report, models, side, runs)
        _bench_passes(report, models, side, runs, steps)


def _bench_decodes(report: BenchReport, models: ModelSet, side: int, runs: int) -> None:
    device = models.device
    generator = torch.Generator(device="cpu").manual_seed(side)
    latents = torch.randn(1, 4, side // 8, side // 8, generator=generator)
    latents = latents.to(device=device, dtype=models.dtype)
    tiled = Tiling(above_pixels=0)
    label = f"tiles of {tiled.tile}², overlap {tiled.overlap}"
    kept = models.tiling
    try:
        models.tiling = tiled  # the transparent decoder's input, made once, in tiles
        with torch.no_grad():
            pixels = vae_decode(models, latents)
        for stage, decode in (
            (f"VAE decode {side}²", lambda: vae_decode(models, latents)),
            (f"transparent decode {side}²", lambda: transparent_decode(models, latents, pixels)),
        ):
            for variant, tiling, baseline in (("whole", WHOLE, None), (label, tiled, "whole")):
                models.tiling = tiling
                _timed(report, stage, variant, decode, device, runs, baseline)
    finally:
        models.tiling = kept


def _bench_passes(report: BenchReport, models: ModelSet, side: int, runs: int, steps: int) -> None:
    """A transparent layer at side² in one pass (near 512², scaled up) and in two."""
    one_pass = GenerationRequest(
        method=Method.SD15_TRANSPARENT,
        prompt="a glass cup",
        negative_prompt="bad, ugly",
        width=side,
        height=side,
        steps=steps,
        fit_to_native=True,
        hires=Hires.OFF,
    )
    two_passes = replace(one_pass, hires=Hires.ON, hires_strength=0.5)
    stage = f"SD1.5 transparent {side}², {steps} steps"
    first = "one pass near 512², scaled up"
    for variant, request, baseline in (
        (first, one_pass, None),
        ("two passes, the second at full size (strength 0.5)", two_passes, first),
    ):
        job = lambda r=request: run_method(r, models)  # noqa: E731
        _timed(report, stage, variant, job, models.device, runs, baseline)


def _timed(
    report: BenchReport,
    stage: str,
    variant: str,
    function: Callable[[], object],
    device: torch.device,
    runs: int,
    baseline: str | None,
) -> None:
    """One warm-up and `runs` timed calls; a variant that runs out of memory is reported
    as such (the point of tiles), and a ratio only against a baseline that ran."""
    try:
        with torch.no_grad():
            ms, peak = measure(function, device, warmup=1, repeat=runs)
    except torch.OutOfMemoryError:
        torch.cuda.empty_cache()
        report.add(Timing(stage, f"{variant}: out of memory", math.nan))
        return
    ran = any(t.stage == stage and t.variant == baseline for t in report.timings)
    report.add(Timing(stage, variant, ms, peak, baseline if ran else None))
