"""Few-step mode against the 20-step eager path: time, and how far the layer's alpha moves.

The rows (issue #13): an SD1.5 transparent job at 20 steps (DPM++ 2M Karras, CFG 7) as the
baseline, then with each few-step LoRA at its advised sampler, steps and CFG, on the same
seed. Besides the time, each few-step row says how its alpha compares with the 20-step
result: the mean |Δα| (0–255) and the IoU of the parts with α ≥ 128. On CUDA the models
are SD1.5 at real size with random weights and a random LoRA in the released files'
layout at rank 64 (DMD2's and Lightning's rank); on a CPU the demo set and its tiny
LoRAs. Random weights make the alpha figures a check that the path holds together (a
broken merge or sampler gives noise or a flat layer), not a verdict on the released
LoRAs' quality, which needs their weights.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch

from protocol import Hires, LayerRole, LoRAInfo, Method

from ..methods.registry import run_method
from ..methods.request import GenerationRequest
from ..model_set import ModelSet
from ..store.demo_loras import few_step_lora_state_dict
from ..store.model_sets import open_model_set
from .models import random_sd15_model_set
from .report import BenchReport, Timing, measure

RANK = 64
ALPHA = 8.0


def bench_few_step(
    report: BenchReport, device: torch.device, dtype: torch.dtype, repeat: int
) -> None:
    """The 20-step baseline and each few-step LoRA of the family, same seed."""
    cuda = device.type == "cuda"
    if cuda:
        models = random_sd15_model_set(device, dtype)
        _offer_random_loras(models)
        side = 512
    else:
        models = open_model_set(demo=True, device=str(device), dtype="float32")
        side = 128
    baseline_request = GenerationRequest(
        method=Method.SD15_TRANSPARENT,
        prompt="a glass cup",
        negative_prompt="bad, ugly",
        width=side,
        height=side,
        steps=20,
        seed=12345,
        hires=Hires.OFF,
    )
    stage = f"SD1.5 transparent {side}²"
    baseline = "20 steps, DPM++ 2M Karras, CFG 7"
    reference = _alpha(run_method(baseline_request, models))
    ms, peak = measure(lambda: run_method(baseline_request, models), device, 1, repeat)
    report.add(Timing(stage, baseline, ms, peak))
    try:
        for info in models.offered_loras.values():
            if info.sampler is None or info.steps is None or info.cfg_scale is None:
                continue
            request = replace(
                baseline_request,
                steps=info.steps,
                sampler=info.sampler,
                cfg_scale=info.cfg_scale,
                lora=info.name,
                lora_weight=info.weight,
            )
            alpha = _alpha(run_method(request, models))
            ms, peak = measure(lambda r=request: run_method(r, models), device, 1, repeat)
            difference = float(np.abs(alpha.astype(np.int16) - reference).mean())
            inside, before = alpha >= 128, reference >= 128
            union = np.logical_or(inside, before).sum()
            iou = float(np.logical_and(inside, before).sum() / union) if union else 1.0
            variant = (
                f"{info.label}: {info.steps} steps {info.sampler.label}, CFG {info.cfg_scale:g}"
                f" (|Δα| {difference:.1f}, IoU {iou:.2f})"
            )
            report.add(Timing(stage, variant, ms, peak, baseline))
    finally:
        models.use_lora(None)


def _alpha(result: object) -> np.ndarray:
    image = result.images[0][LayerRole.FOREGROUND]  # type: ignore[attr-defined]
    return image[..., 3].astype(np.int16)


def _offer_random_loras(models: ModelSet) -> None:
    """Real-size random LoRAs under the catalogue's SD1.5 few-step names and settings."""
    from ..store.catalogue import FEW_STEP_LORAS
    from ..store.model_sets import few_step_offer

    offer: dict[str, LoRAInfo] = few_step_offer(FEW_STEP_LORAS, models.family)
    unet = models.base.unet
    models.offered_loras = offer
    models.load_lora_file = lambda name: few_step_lora_state_dict(
        unet, seed=sum(map(ord, name)), rank=RANK, alpha=ALPHA
    )
