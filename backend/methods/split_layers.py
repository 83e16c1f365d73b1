"""Split into Layers: one picture in, `request.layers` transparent layers out (issue #19).

The request's `layer` input is the picture (straight RGBA at any size; it is fitted to
`width` × `height` with `resize_mode`, as other inputs are). With a selection (`mask`),
what lies outside it is made transparent before the split, so the model sees only the
selected part, and the registry's mask step clears it from every layer afterwards.

Qwen-Image-Layered runs at an area of 640² (the card's recommendation) or 1024² (its
other trained bucket) when the request is at least that large and `fit_to_native` is
off; the layers come back at the request's size (`split.split_into_layers`). `steps`
and `cfg_scale` (true CFG, 1 = no negative pass) are the request's; `prompt` may be
empty (the model captions the picture); the sampler, Stop At, weight and LoRAs do not
apply. Each of `batch_size × batch_count` results is one split of its own seed
(`seed + i`), and holds its layers as one (N, H, W, 4) stack, bottom first.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from protocol import LayerRole

from ..errors import InvalidRequest
from ..split import split_into_layers
from ..split.layered import generation_size, unpack_frames
from .denoise import StepCallback, no_progress
from .masking import multiply_alpha, selection
from .request import GenerationRequest, GenerationResult
from .sizing import fit_rgba


def resolution_for(request: GenerationRequest, resolutions: tuple[int, int]) -> int:
    """The side of the area the split runs at, of the set's `(small, large)` (640 and 1024
    for the release): the large for a request at least as large (unless
    `fit_to_native`), else the small."""
    small, large = resolutions
    is_large = request.width * request.height >= large * large
    return large if is_large and not request.fit_to_native else small


def run(
    request: GenerationRequest, models: Any, on_step: StepCallback = no_progress
) -> GenerationResult:
    """`split_layers`: per result, {LAYER: (layers, height, width, 4) uint8}, bottom first.

    Args:
        models: a `LayeredModelSet`.

    Raises:
        InvalidRequest: a picture with nothing visible (in the selection).
    """
    picture = request.inputs[LayerRole.LAYER]
    if picture.shape[:2] != (request.height, request.width):
        picture = fit_rgba(picture, request.width, request.height, request.resize_mode)
    mask = selection(request)
    if mask is not None:
        picture = multiply_alpha(picture, mask)
    if not picture[..., 3].any():
        raise InvalidRequest("inputs.layer", "the picture to split has nothing visible")
    components = models.base.components
    resolution = resolution_for(request, models.resolutions)
    size = generation_size(request.width, request.height, resolution)
    count = request.image_count
    images: list[dict[LayerRole, np.ndarray]] = []
    seeds: list[int] = []
    for index in range(count):
        seed = request.seed + index

        def report(step: int, total: int, latents: torch.Tensor, index: int = index) -> None:
            on_step(index * total + step, count * total, _composite(latents, size))

        layers = split_into_layers(
            components,
            picture,
            request.layers,
            prompt=request.prompt,
            steps=request.steps,
            cfg=request.cfg_scale,
            seed=seed,
            resolution=resolution,
            on_step=report,
        )
        images.append({LayerRole.LAYER: np.stack(layers)})
        seeds.append(seed)
    return GenerationResult(images=images, seeds=seeds, generation_size=size)


def _composite(latents: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Frame 0 (the composite the model regenerates) of packed latents, as (1, 16, h, w)
    normalised latents for a preview."""
    width, height = size
    rows, columns = height // 16, width // 16
    frames = latents.shape[1] // (rows * columns)
    return unpack_frames(latents, frames, rows, columns)[:, 0]
