"""The transparent decode: the reference's sequential 8-view loop against our batched one."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from ..layerdiffuse import TransparentVAEDecoder, use_reduction_group_norm
from ..layerdiffuse.transparent_vae_decoder import use_pointwise_convs
from .models import build_random
from .report import BenchReport, time_stage


def bench_transparent_decoder(
    report: BenchReport, device: torch.device, dtype: torch.dtype, size: int, repeat: int
) -> None:
    """One pass, the reference's sequential 8-view loop, and our batched variants."""
    decoder = build_random(TransparentVAEDecoder, device, dtype)
    pixel = torch.rand(1, 3, size, size, device=device, dtype=dtype)
    latent = torch.randn(1, 4, size // 8, size // 8, device=device, dtype=dtype)
    stage, reference = "transparent decode", "reference: 8 passes in a loop"

    def variant(name: str, function: Callable[[], Any], baseline: str | None = reference) -> None:
        time_stage(report, stage, name, function, device, repeat, baseline)

    # The reference's modules: native GroupNorm, and (on a CPU) oneDNN's 1×1 convolutions.
    use_reduction_group_norm(decoder, enabled=False)
    use_pointwise_convs(decoder, enabled=False)
    variant(reference, lambda: decoder.estimate_augmented_sequential(pixel, latent), None)
    variant(
        "8 views batched, native GroupNorm", lambda: decoder.estimate_augmented(pixel, latent, 8)
    )
    use_reduction_group_norm(decoder, enabled=True)
    use_pointwise_convs(decoder, enabled=True)
    variant(
        "8 passes in a loop, reduction GroupNorm",
        lambda: decoder.estimate_augmented_sequential(pixel, latent),
    )
    for views in (2, 4, 8):
        variant(
            f"ours: {views} views per batch",
            lambda views=views: decoder.estimate_augmented(pixel, latent, views),
        )
    decoder.to(memory_format=torch.channels_last)
    pixel_last = pixel.to(memory_format=torch.channels_last)
    variant(
        "ours: 8 views, channels_last", lambda: decoder.estimate_augmented(pixel_last, latent, 8)
    )
    decoder.to(memory_format=torch.contiguous_format)
    time_stage(
        report,
        "transparent 1 pass",
        "one view (no TTA)",
        lambda: decoder(pixel, latent),
        device,
        repeat,
    )
