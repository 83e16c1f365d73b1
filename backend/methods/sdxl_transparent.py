"""SDXL: only generate a transparent image, by attention injection (LoRA) or conv injection.

`layer_xl_transparent_attn` (a rank-256 LoRA on attention) or `layer_xl_transparent_conv`
(deltas of every other weight) moves SDXL into the transparent latent space; the SDXL
transparent decoder turns each result into straight RGBA. A foreground input is
reworked through the SDXL transparent encoder (transparent img2img).
"""

from __future__ import annotations

from protocol import LayerRole

from ..model_set import ModelSet
from .denoise import StepCallback, no_progress
from .request import GenerationRequest, GenerationResult
from .sdxl_recipe import framing_of, run_layer_file
from .stages import img2img_source


def run_attention(
    request: GenerationRequest, models: ModelSet, on_step: StepCallback = no_progress
) -> GenerationResult:
    """Transparent images with the attention-injection LoRA (the original's default)."""
    return _run(request, models, on_step, "layer_xl_transparent_attn")


def run_conv(
    request: GenerationRequest, models: ModelSet, on_step: StepCallback = no_progress
) -> GenerationResult:
    """Transparent images with the conv-injection deltas."""
    return _run(request, models, on_step, "layer_xl_transparent_conv")


def _run(
    request: GenerationRequest, models: ModelSet, on_step: StepCallback, layer_file: str
) -> GenerationResult:
    source = img2img_source(models, request, framing_of(request))
    return run_layer_file(
        request,
        models,
        on_step,
        layer_file=layer_file,
        output=LayerRole.FOREGROUND,
        transparent=True,
        source=source,
    )
