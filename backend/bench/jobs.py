"""Whole jobs as the methods run them: total time, time per sampler step, peak memory,
and where one job's time goes outside the sampler loop."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import numpy as np
import torch

from protocol import LayerRole, Method

from ..layerdiffuse import attach_sd15_layer_model
from ..methods.denoise import denoise, seeded_noise
from ..methods.registry import run_method
from ..methods.request import GenerationRequest
from ..methods.stages import encode_text, transparent_decode, vae_decode
from ..model_set import ModelSet
from .models import random_sd15_model_set, random_sdxl_model_set
from .report import BenchReport, Timing

Job = tuple[str, Method, int, int, dict[LayerRole, np.ndarray]]


class _StepClock:
    """Records when each sampler step ends, to time the denoising loop alone."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.times: list[float] = []

    def __call__(self, step: int, total: int, latents: torch.Tensor) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.times.append(time.perf_counter())

    def per_step_ms(self) -> float:
        """Median step time, leaving out the first step (warm-up inside a run)."""
        gaps = [b - a for a, b in zip(self.times, self.times[1:], strict=False)]
        return statistics.median(gaps) * 1000 if gaps else float("nan")


def bench_jobs(
    report: BenchReport,
    models: ModelSet,
    jobs: list[Job],
    stage: str,
    repeat: int,
    steps: int,
) -> None:
    """Each job after a warm-up job: median total, median step, peak memory."""
    device = models.device
    cuda = device.type == "cuda"
    for name, method, width, height, inputs in jobs:
        request = GenerationRequest(
            method=method,
            prompt="a glass cup",
            negative_prompt="bad, ugly",
            inputs=inputs,
            width=width,
            height=height,
            steps=steps,
        )
        run_method(request, models)  # warm-up: loads the layer file, picks kernels
        totals, steps_ms = [], []
        if cuda:
            torch.cuda.reset_peak_memory_stats(device)
        for _ in range(max(1, repeat // 2)):
            clock = _StepClock(device)
            started = time.perf_counter()
            run_method(request, models, clock)
            if cuda:
                torch.cuda.synchronize(device)
            totals.append((time.perf_counter() - started) * 1000)
            steps_ms.append(clock.per_step_ms())
        peak = torch.cuda.max_memory_allocated(device) / 2**20 if cuda else None
        report.add(
            Timing(f"{stage} job", f"{name}, {steps} steps", statistics.median(totals), peak)
        )
        report.add(Timing(f"{stage} step", name, statistics.median(steps_ms), peak))


def bench_sd15_jobs(
    report: BenchReport,
    device: torch.device,
    dtype: torch.dtype,
    repeat: int,
    steps: int = 20,
    scale: int = 1,
) -> None:
    """Each SD1.5 method at the seed README's sizes (512², 512×640) divided by `scale`."""
    models = random_sd15_model_set(device, dtype)
    wide, tall = 512 // scale, 640 // scale
    layer = np.full((tall, wide, 4), 255, dtype=np.uint8)
    fg, bg = LayerRole.FOREGROUND, LayerRole.BACKGROUND
    jobs: list[Job] = [
        (f"transparent {wide}x{wide}", Method.SD15_TRANSPARENT, wide, wide, {}),
        (f"transparent img2img {wide}x{wide}", Method.SD15_TRANSPARENT, wide, wide, {fg: layer}),
        (f"joint {wide}x{tall} (fg+bg+blend)", Method.SD15_JOINT, wide, tall, {}),
        (f"fg2bg {wide}x{tall} (bg+blend)", Method.SD15_FG_TO_BG, wide, tall, {fg: layer}),
        (f"bg2fg {wide}x{tall} (fg+blend)", Method.SD15_BG_TO_FG, wide, tall, {bg: layer}),
    ]
    bench_jobs(report, models, jobs, "SD1.5", repeat, steps)
    bench_breakdown(report, models, wide, steps)


def bench_sdxl_jobs(
    report: BenchReport,
    device: torch.device,
    dtype: torch.dtype,
    repeat: int,
    steps: int = 20,
    scale: int = 1,
) -> None:
    """SDXL at 1024² divided by `scale`: transparent (attention, conv) and the one-click
    background workflow (two steps)."""
    models = random_sdxl_model_set(device, dtype)
    side = 1024 // scale
    layer = np.full((side, side, 4), 255, dtype=np.uint8)
    jobs: list[Job] = [
        (f"transparent attn {side}x{side}", Method.SDXL_TRANSPARENT_ATTN, side, side, {}),
        (f"transparent conv {side}x{side}", Method.SDXL_TRANSPARENT_CONV, side, side, {}),
        (
            f"fg2bg workflow {side}x{side} (2 x steps)",
            Method.SDXL_FG_TO_BG,
            side,
            side,
            {LayerRole.FOREGROUND: layer},
        ),
    ]
    bench_jobs(report, models, jobs, "SDXL", repeat, steps)


def bench_breakdown(report: BenchReport, models: ModelSet, side: int, steps: int) -> None:
    """One SD1.5 transparent job stage by stage, to see what costs outside the sampler."""
    device = models.device

    def timed(label: str, function: Callable[[], object]) -> object:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        started = time.perf_counter()
        value = function()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        report.add(Timing("SD1.5 job breakdown", label, (time.perf_counter() - started) * 1000))
        return value

    with torch.no_grad():
        context, uncond = timed(
            "text encode", lambda: encode_text(models, ["a glass cup"], ["bad, ugly"])
        )
        state = timed(
            "layer file (cached)", lambda: models.layer_state_dict("layer_sd15_transparent_attn")
        )
        handle = timed(
            "attach (merge LoRA), first job",
            lambda: attach_sd15_layer_model(models.base.unet, state),
        )
        try:  # the UNet gets its processors back even if the sampler fails
            noise, generators = timed(
                "seeded noise",
                lambda: seeded_noise([1], (4, side // 8, side // 8), device, models.dtype),
            )
            latents = timed(
                f"sampler, {steps} steps",
                lambda: denoise(
                    unet=models.base.unet,
                    sampler=GenerationRequest(method=Method.SD15_TRANSPARENT).sampler,
                    scheduler_config=models.base.scheduler_config,
                    latents=None,
                    noise=noise,
                    generators=generators,
                    context=context,
                    uncond_context=uncond,
                    cfg_scale=7.0,
                    steps=steps,
                    use_layer_model=handle.set_active,
                ),
            )
        finally:
            timed("detach", handle.detach)

        def switch_on_and_off() -> None:
            with models.sd15_layer_model("layer_sd15_transparent_attn"):
                pass

        switch_on_and_off()  # attached once and kept, switched off, as a job leaves it
        timed("switch on+off, next jobs", switch_on_and_off)
        pixels = timed("VAE decode", lambda: vae_decode(models, latents))
        timed(
            "transparent decode (8 views) + to uint8",
            lambda: transparent_decode(models, latents, pixels),
        )
