"""The recipe every SDXL method shares: one layer file merged into the UNet, one output layer.

A method names its layer file, the layer it produces, whether that layer is decoded
with alpha, and which input layers are its condition (concatenated latents, in the
reference's order). The file's patches are merged with the request's weight and
swapped out again at Stop At and at the end, whatever happens.
"""

from __future__ import annotations

import numpy as np
import torch

from protocol import LayerRole

from ..layerdiffuse import attach_sdxl_layer_model
from ..model_set import ModelSet
from .denoise import Conditioning, StepCallback, UNetTiles, sample_passes
from .framing import Framing, framing_for
from .masking import kept_latents
from .request import GenerationRequest, GenerationResult
from .stages import (
    condition_latents,
    encode_text_sdxl,
    opaque_rgba,
    refined_sources,
    transparent_decode,
    vae_decode,
)

NATIVE_AREA = 1024 * 1024


def framing_of(request: GenerationRequest) -> Framing:
    """Where an SDXL request's pixels lie in the generation it runs at."""
    return framing_for(
        request.width, request.height, fit_to_native=request.fit_to_native, native_area=NATIVE_AREA
    )


def run_layer_file(
    request: GenerationRequest,
    models: ModelSet,
    on_step: StepCallback,
    *,
    layer_file: str,
    output: LayerRole,
    transparent: bool,
    condition: tuple[LayerRole, ...] = (),
    source: torch.Tensor | None = None,
) -> GenerationResult:
    """Run one SDXL layer file and return each result's `output` layer at the requested size.

    Args:
        layer_file: the released `layer_xl_*` file.
        output: the role of the produced layer.
        transparent: decode through the SDXL transparent decoder (else opaque).
        condition: input roles whose latents are concatenated to the sample, in order.
        source: (1, 4, h, w) scaled latents for img2img, or None.
    """
    # 1. Sizes: inputs go into the generation and results come back by one exact map.
    framing = framing_of(request)
    conditions = [
        framing.input_at_generation(request.inputs[role], request.resize_mode) for role in condition
    ]
    layers, seeds = sample_layer_file(
        request,
        models,
        on_step,
        framing=framing,
        layer_file=layer_file,
        output=output,
        transparent=transparent,
        conditions=conditions,
        source=source,
    )
    return GenerationResult(
        images=[{output: framing.to_request(layer)} for layer in layers],
        seeds=seeds,
        generation_size=framing.generation_size,
    )


def sample_layer_file(
    request: GenerationRequest,
    models: ModelSet,
    on_step: StepCallback,
    *,
    framing: Framing,
    layer_file: str,
    output: LayerRole,
    transparent: bool,
    conditions: list[np.ndarray],
    source: torch.Tensor | None = None,
) -> tuple[list[np.ndarray], list[int]]:
    """Run one SDXL layer file at the generation size.

    Args:
        framing: the request's framing (its generation size is the one used).
        output: the role of the layer it makes (what it keeps outside a selection, and
            which first-pass layer a second pass starts from).
        conditions: the condition layers at the generation size, in the reference's
            order ((h, w, 4) uint8 straight RGBA); their latents are concatenated.
        source: (1, 4, h, w) scaled latents for img2img, or None; a second pass
            (`request.refine`) starts from its first-pass `output` layer instead.

    Returns:
        Each result's layer at the generation size, (h, w, 4) uint8 straight RGBA, and
        its seed.
    """
    width, height = framing.generation_size
    rows = request.batch_size

    # 2. Prompts and SDXL's added conditions (pooled text, size ids).
    context, uncond, added = encode_text_sdxl(
        models, [request.prompt] * rows, [request.negative_prompt] * rows, width, height
    )

    # 3. Where it starts (a second pass: from its first-pass layer) and, with a
    #    selection, what it keeps outside it.
    if request.refine:
        source = refined_sources(models, request, framing, (output,))
    keep = kept_latents(models, request, framing, (output,))

    # 4. Merge the layer file; the file itself stays in host memory. Above 4 native areas
    #    (`models.tiling`) the UNet predicts in blended tiles.
    state = models.layer_state_dict(layer_file, on_device=False)
    handle = attach_sdxl_layer_model(models.base.unet, state, weight=request.weight)
    layers: list[np.ndarray] = []
    seeds: list[int] = []
    grid = models.tiling.unet_grid(width, height, NATIVE_AREA)
    try:
        tiles = None if grid is None else UNetTiles(grid)
        if conditions:
            condition = condition_latents(models, conditions)
            handle.set_condition(condition)
            if grid is not None:  # each tile's UNet call sees its part of the condition
                tiles = UNetTiles(grid, ((condition, 1),), handle.set_condition)
        passes = sample_passes(
            request,
            models,
            on_step,
            rows=rows,
            size=(width, height),
            conditioning=Conditioning(context, uncond, added),
            use_layer_model=handle.set_active,
            source=source,
            keep=keep,
            tiles=tiles,
        )
        for batch_seeds, latents in passes:
            # 5. Decode: the SD VAE, then the transparent decoder where the layer has alpha.
            pixels = vae_decode(models, latents)
            decoded = (
                transparent_decode(models, latents, pixels) if transparent else opaque_rgba(pixels)
            )
            layers += decoded
            seeds += batch_seeds
    finally:
        handle.detach()
    return layers, seeds
