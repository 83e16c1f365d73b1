"""Eager against `torch.compile`d UNet jobs, and what a method switch costs in compiles.

The rows (issue #13): an SD1.5 transparent job at 20 steps eager, then the same job with
the UNet compiled (`methods.compiled`), its first run (the compile) and its steady state
side by side; then a `sd15_joint` job (three frames: a new shape, one new graph) and the
transparent job again (no new graph: the cache keeps both), each variant naming the graphs
compiled so far. The layer's largest difference from the eager result (0–255) is in the
compiled row's name. On CUDA the SD1.5 UNet is at real size with random weights, 512²;
on a CPU the demo set at 128².
"""

from __future__ import annotations

import time
from dataclasses import replace

import numpy as np
import torch

from protocol import Hires, LayerRole, Method

from ..methods.compiled import compile_unet, graph_count
from ..methods.registry import run_method
from ..methods.request import GenerationRequest
from ..store.model_sets import open_model_set
from .models import random_sd15_model_set
from .report import BenchReport, Timing, measure


def bench_compile(
    report: BenchReport,
    device: torch.device,
    dtype: torch.dtype,
    repeat: int,
    *,
    backend: str = "inductor",
    steps: int = 20,
) -> None:
    """Eager and compiled SD1.5 jobs, and the graphs a method switch adds."""
    cuda = device.type == "cuda"
    if cuda:
        models, side = random_sd15_model_set(device, dtype), 512
    else:
        models, side = open_model_set(demo=True, device=str(device), dtype="float32"), 128
    request = GenerationRequest(
        method=Method.SD15_TRANSPARENT,
        prompt="a glass cup",
        negative_prompt="bad, ugly",
        width=side,
        height=side,
        steps=steps,
        seed=12345,
        hires=Hires.OFF,
    )
    stage = f"SD1.5 compile {side}²"
    eager_variant = f"eager, {steps} steps"
    eager = run_method(request, models).images[0][LayerRole.FOREGROUND]
    ms, peak = measure(lambda: run_method(request, models), device, 1, repeat)
    report.add(Timing(stage, eager_variant, ms, peak))

    torch._dynamo.reset()
    before = graph_count()

    def graphs() -> int:
        return graph_count() - before

    compiled = compile_unet(models, backend)
    try:
        started = time.perf_counter()
        first = run_method(request, models).images[0][LayerRole.FOREGROUND]
        compile_ms = (time.perf_counter() - started) * 1000
        report.add(
            Timing(stage, f"compiled ({backend}): first job", compile_ms, None, eager_variant)
        )
        difference = int(np.abs(first.astype(np.int16) - eager.astype(np.int16)).max())
        ms, peak = measure(lambda: run_method(request, models), device, 1, repeat)
        variant = f"compiled: steady (max |Δ| {difference}, {graphs()} graph)"
        report.add(Timing(stage, variant, ms, peak, eager_variant))

        joint = replace(request, method=Method.SD15_JOINT)
        started = time.perf_counter()
        run_method(joint, models)
        joint_ms = (time.perf_counter() - started) * 1000
        report.add(Timing(stage, f"then sd15_joint, first ({graphs()} graphs)", joint_ms))
        ms, peak = measure(lambda: run_method(request, models), device, 0, repeat)
        variant = f"back to transparent ({graphs()} graphs)"
        report.add(Timing(stage, variant, ms, peak, eager_variant))
    finally:
        compiled.undo()
        torch._dynamo.reset()
