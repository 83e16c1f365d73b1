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
from .denoise import Conditioning, StepCallback, sample_passes
from .request import GenerationRequest, GenerationResult
from .sizing import fit_rgba, generation_size
from .stages import (
    condition_latents,
    encode_text_sdxl,
    opaque_rgba,
    transparent_decode,
    vae_decode,
)

NATIVE_AREA = 1024 * 1024


def generation_size_for(request: GenerationRequest) -> tuple[int, int]:
    """(width, height) an SDXL method runs at for this request."""
    native = NATIVE_AREA if request.fit_to_native else None
    return generation_size(request.width, request.height, native_area=native)


def run_layer_file(
    request: GenerationRequest,
    models: ModelSet,
    on_step: StepCallback,
    *,
    layer_file: str,
    output: LayerRole,
    transparent: bool,
    condition: tuple[LayerRole, ...] = (),
    inputs: dict[LayerRole, np.ndarray] | None = None,
    source: torch.Tensor | None = None,
) -> GenerationResult:
    """Run one SDXL layer file and return each result's `output` layer at the requested size.

    Args:
        layer_file: the released `layer_xl_*` file.
        output: the role of the produced layer.
        transparent: decode through the SDXL transparent decoder (else opaque).
        condition: input roles whose latents are concatenated to the sample, in order.
        inputs: the layers to take conditions from (default: the request's inputs).
        source: (1, 4, h, w) scaled latents for img2img, or None.
    """
    # 1. Sizes: multiples of 64; results go back to the asked size.
    width, height = generation_size_for(request)
    rows = request.batch_size

    # 2. Prompts and SDXL's added conditions (pooled text, size ids).
    context, uncond, added = encode_text_sdxl(
        models, [request.prompt] * rows, [request.negative_prompt] * rows, width, height
    )

    # 3. Merge the layer file; the file itself stays in host memory.
    state = models.layer_state_dict(layer_file, on_device=False)
    handle = attach_sdxl_layer_model(models.base.unet, state, weight=request.weight)
    images: list[dict[LayerRole, np.ndarray]] = []
    seeds: list[int] = []
    try:
        if condition:
            layers = request.inputs if inputs is None else inputs
            handle.set_condition(
                condition_latents(models, layers, condition, width, height, request.resize_mode)
            )
        passes = sample_passes(
            request,
            models,
            on_step,
            rows=rows,
            size=(width, height),
            conditioning=Conditioning(context, uncond, added),
            use_layer_model=handle.set_active,
            source=source,
        )
        for batch_seeds, latents in passes:
            # 4. Decode: the SD VAE, then the transparent decoder where the layer has alpha.
            pixels = vae_decode(models, latents)
            decoded = (
                transparent_decode(models, latents, pixels) if transparent else opaque_rgba(pixels)
            )
            for rgba, seed in zip(decoded, batch_seeds, strict=True):
                fitted = fit_rgba(rgba, request.width, request.height, request.resize_mode)
                images.append({output: fitted})
                seeds.append(seed)
    finally:
        handle.detach()
    return GenerationResult(images=images, seeds=seeds, generation_size=(width, height))
