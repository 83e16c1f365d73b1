"""The fallback where LayerDiffuse fails: generate opaque on neutral gray, then matte it.

For checkpoints the layer models do not fit (`store.known_failures`: Illustrious-XL,
NoobAI-XL and their merges), `sd15_matted` and `sdxl_matted` run the base model alone, so
its own look survives, on the prompt with a plain gray background asked for, decode with
the ordinary VAE, and matte the picture (`split.matte`). The foreground's colour is then
solved from the composite and the background actually generated: its colour is measured
where the matte says background (near-gray, but a model rarely paints exactly 0.5), and
`I = α·F + (1 − α)·B` gives F exactly where B is known (`split.unmix_foreground`), which a
matte of an unknown background cannot. The result is a FOREGROUND layer like the
transparent methods' (the plugin and the CLI name it as matted; the infotext says so).

A selection shapes the layer (the registry's mask step) but does not confine the
sampling: the latents kept outside it would be the transparent model's, which is not in
play here.
"""

from __future__ import annotations

import numpy as np
import torch

from protocol import LayerRole, ModelFamily

from ..model_set import ModelSet
from ..split import NEUTRAL_GRAY, matte, unmix_foreground
from .denoise import Conditioning, StepCallback, UNetTiles, no_progress, sample_passes
from .request import GenerationRequest, GenerationResult
from .sd15_frames import NATIVE_AREA as SD15_NATIVE_AREA
from .sd15_frames import framing_of as sd15_framing
from .sdxl_recipe import NATIVE_AREA as SDXL_NATIVE_AREA
from .sdxl_recipe import framing_of as sdxl_framing
from .stages import encode_text, encode_text_sdxl, opaque_rgba, vae_decode

GRAY_PROMPT = "plain neutral gray background, simple background"
"""Appended to the prompt: what the matting and the colour solve rely on."""

BACKGROUND_NEGATIVE = "detailed background, scenery, gradient background"
"""Appended to the negative prompt: a busy background is what mattes badly."""

BACKGROUND_ALPHA = 13
"""Alpha (of 255) under which a pixel counts as background when measuring its colour."""

MIN_BACKGROUND_SHARE = 0.01
"""Below this share of background pixels the gray asked for (0.5) is assumed instead."""


def gray_prompts(request: GenerationRequest) -> tuple[str, str]:
    """The prompt and negative prompt with the plain gray background asked for."""
    prompt = f"{request.prompt}, {GRAY_PROMPT}" if request.prompt.strip() else GRAY_PROMPT
    negative = request.negative_prompt.strip()
    negative = f"{negative}, {BACKGROUND_NEGATIVE}" if negative else BACKGROUND_NEGATIVE
    return prompt, negative


def run_sd15(
    request: GenerationRequest, models: ModelSet, on_step: StepCallback = no_progress
) -> GenerationResult:
    """`sd15_matted`: {FOREGROUND: RGBA} per result, matted from a picture on gray."""
    return _run(request, models, on_step, ModelFamily.SD15)


def run_sdxl(
    request: GenerationRequest, models: ModelSet, on_step: StepCallback = no_progress
) -> GenerationResult:
    """`sdxl_matted`: {FOREGROUND: RGBA} per result, matted from a picture on gray."""
    return _run(request, models, on_step, ModelFamily.SDXL)


def matte_picture(rgba: np.ndarray, model: torch.nn.Module) -> np.ndarray:
    """An opaque picture on a flat background → straight-alpha RGBA of its foreground."""
    rgb = np.ascontiguousarray(rgba[..., :3])
    alpha = matte(rgb, model)
    return unmix_foreground(rgb, alpha, background_colour(rgb, alpha))


def background_colour(rgb: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """The background's colour in [0, 1], per channel: the median where the matte is
    background, or the gray asked for when too little of it is."""
    background = alpha < BACKGROUND_ALPHA
    if background.mean() < MIN_BACKGROUND_SHARE:
        return np.full(3, NEUTRAL_GRAY, dtype=np.float32)
    return np.median(rgb[background], axis=0).astype(np.float32) / 255


def _run(
    request: GenerationRequest, models: ModelSet, on_step: StepCallback, family: ModelFamily
) -> GenerationResult:
    sdxl = family is ModelFamily.SDXL
    framing = sdxl_framing(request) if sdxl else sd15_framing(request)
    width, height = framing.generation_size
    rows = request.batch_size
    prompt, negative = gray_prompts(request)
    if sdxl:
        context, uncond, added = encode_text_sdxl(
            models, [prompt] * rows, [negative] * rows, width, height
        )
        conditioning = Conditioning(context, uncond, added)
    else:
        context, uncond = encode_text(models, [prompt] * rows, [negative] * rows)
        conditioning = Conditioning(context, uncond)
    native = SDXL_NATIVE_AREA if sdxl else SD15_NATIVE_AREA
    grid = models.tiling.unet_grid(width, height, native)
    passes = sample_passes(
        request,
        models,
        on_step,
        rows=rows,
        size=(width, height),
        conditioning=conditioning,
        use_layer_model=_no_layer_model,
        tiles=None if grid is None else UNetTiles(grid),
    )
    matting = models.matting_model()
    images: list[dict[LayerRole, np.ndarray]] = []
    seeds: list[int] = []
    for pass_seeds, latents in passes:
        for picture in opaque_rgba(vae_decode(models, latents)):
            images.append(
                {LayerRole.FOREGROUND: framing.to_request(matte_picture(picture, matting))}
            )
        seeds += pass_seeds
    return GenerationResult(images=images, seeds=seeds, generation_size=(width, height))


def _no_layer_model(active: bool) -> None:
    """The base model alone: there is no layer model to switch at Stop At."""
