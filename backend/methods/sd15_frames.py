"""The recipe all four SD1.5 methods share: frames diffused together by attention sharing.

A method names its layer file, what each frame is, and (for fg2bg / bg2fg) which input
is the control image. Rows of a pass are `batch_size` results × frames, interleaved as
the released models expect ([f0, f1, (f2), f0, f1, …]); the caller never deals with
"batch size must be divisible by 3". Row r of a pass uses seed + r, as A1111 gives
consecutive seeds to a batch, so the original's results for a seed are reproducible.
"""

from __future__ import annotations

import numpy as np
import torch

from protocol import LayerRole

from ..model_set import ModelSet
from .denoise import Conditioning, StepCallback, UNetTiles, sample_passes
from .framing import Framing, framing_for
from .masking import kept_latents
from .prompts import layer_prompt
from .request import GenerationRequest, GenerationResult
from .sizing import composite_on_gray
from .stages import encode_text, opaque_rgba, refined_sources, transparent_decode, vae_decode

NATIVE_AREA = 512 * 512


def framing_of(request: GenerationRequest) -> Framing:
    """Where an SD1.5 request's pixels lie in the generation it runs at."""
    return framing_for(
        request.width, request.height, fit_to_native=request.fit_to_native, native_area=NATIVE_AREA
    )


def control_image(request: GenerationRequest, role: LayerRole, framing: Framing) -> torch.Tensor:
    """A condition layer as the control encoder takes it: mapped into the generation and
    composited over 50 % gray, (1, 3, h, w) in [0, 1]."""
    image = framing.input_at_generation(request.inputs[role], request.resize_mode)
    return torch.from_numpy(composite_on_gray(image)).movedim(-1, 0)[None]


def run_frames(
    request: GenerationRequest,
    models: ModelSet,
    on_step: StepCallback,
    *,
    layer_file: str,
    frame_roles: tuple[LayerRole, ...],
    control_role: LayerRole | None = None,
    source: torch.Tensor | None = None,
) -> GenerationResult:
    """Run an SD1.5 layer model and return each result's layers at the requested size.

    Args:
        layer_file: the released attention-sharing file.
        frame_roles: what frame 0, 1, (2) is; the foreground frame is decoded with alpha.
        control_role: the input layer fed to the control encoder, if the file has one.
        source: (1, 4, h, w) scaled latents for img2img, or None. A second pass
            (`request.refine`) starts each frame from its own first-pass layer instead.
    """
    # 1. Sizes: the model runs at multiples of 64; inputs go in and results come back by
    #    one exact map, so every layer lies on its input.
    framing = framing_of(request)
    width, height = framing.generation_size
    frames = len(frame_roles)
    rows = request.batch_size * frames

    # 2. Prompts: each frame's own layer prompt ("<layer>, <prompt>") replaces only the
    #    positive context, and only while the layer model is on, as the original's
    #    cond_overwrite does inside the attention-sharing units (they are every
    #    cross-attention of SD1.5's UNet); after Stop At the UNet sees the prompt.
    frame_prompts = [
        layer_prompt(request.layer_prompts.get(role, ""), request.prompt) for role in frame_roles
    ]
    layered = frame_prompts != [request.prompt] * frames
    prompts = [request.prompt] * rows + (frame_prompts * request.batch_size if layered else [])
    contexts, uncond = encode_text(models, prompts, [request.negative_prompt] * len(prompts))
    uncond = uncond[:rows]
    context, layer_context = contexts[:rows], (contexts[rows:] if layered else None)

    # 3. Where each frame starts (a second pass: from its first-pass layer) and, with a
    #    selection, what it keeps outside it.
    if request.refine:
        source = refined_sources(models, request, framing, frame_roles)
    keep = kept_latents(models, request, framing, frame_roles)

    # 4. The layer model, with its control image; the UNet is restored whatever happens.
    #    Above 4 native areas (`models.tiling`) the UNet predicts in blended tiles.
    images: list[dict[LayerRole, np.ndarray]] = []
    seeds: list[int] = []
    grid = models.tiling.unet_grid(width, height, NATIVE_AREA)
    with models.sd15_layer_model(layer_file) as handle:
        tiles = None if grid is None else UNetTiles(grid)
        if control_role is not None:
            control = control_image(request, control_role, framing)
            handle.set_control(control)
            if grid is not None:  # each tile's UNet call sees its part of the control image
                tiles = UNetTiles(grid, ((control, 8),), handle.set_control)
        conditioning = Conditioning(context, uncond, layer_context=layer_context)
        passes = sample_passes(
            request,
            models,
            on_step,
            rows=rows,
            size=(width, height),
            conditioning=conditioning,
            use_layer_model=handle.set_active,
            source=source,
            keep=keep,
            tiles=tiles,
        )
        # 5. Each pass: one seed per row, consecutive across the job.
        for pass_seeds, latents in passes:
            # 6. Decode every row; the foreground frame also through the transparent decoder.
            layers = _decode_frames(models, latents, frame_roles)
            for index in range(request.batch_size):
                images.append(
                    {
                        role: framing.to_request(layers[index * frames + f])
                        for f, role in enumerate(frame_roles)
                    }
                )
                seeds.append(pass_seeds[index * frames])
    return GenerationResult(images=images, seeds=seeds, generation_size=(width, height))


def _decode_frames(
    models: ModelSet, latents: torch.Tensor, frame_roles: tuple[LayerRole, ...]
) -> list[np.ndarray]:
    """RGBA per row: transparent for foreground frames, opaque for the others."""
    pixels = vae_decode(models, latents)
    layers = opaque_rgba(pixels)
    frames = len(frame_roles)
    if LayerRole.FOREGROUND in frame_roles:
        offset = frame_roles.index(LayerRole.FOREGROUND)
        foreground_rows = list(range(offset, len(layers), frames))
        rgba = transparent_decode(models, latents[foreground_rows], pixels[foreground_rows])
        for row, image in zip(foreground_rows, rgba, strict=True):
            layers[row] = image
    return layers
