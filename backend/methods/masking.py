"""The selection mask: results shaped by it, the scene kept outside it, latents kept too.

A request may carry a `mask` input at its own size whose alpha is the painter's
selection (docs/protocol.md, "Selection masks"). Three things follow from it:

1. every output layer but `blended` has its alpha multiplied by the mask (`multiply_alpha`);
2. `blended` is the method's *scene input* where the mask is 0, the generated blend where it
   is 255, and their premultiplied mix between (`blend_over_scene`): the background input
   for the methods that put a foreground into a scene, the foreground input (with its
   alpha) for those that make a background for it; alpha × mask without a scene input;
3. generation is confined to the selection in latent space (`kept_latents`): before each
   UNet call the latents outside the mask are the kept ones noised to that step (the
   denoise loop's `keep`), as diffusers' and A1111's inpainting with a plain model does.
   A foreground keeps the foreground it reworks, or an empty transparent layer; the blend
   of a background-scene method keeps the background; the others keep nothing.

Rules 1 and 2 make the pixels outside the selection exact (byte for byte); rule 3 makes
what is generated inside fit them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from protocol import METHOD_SPECS, LayerRole, Method

from ..model_set import ModelSet
from .framing import Framing
from .request import GenerationRequest, GenerationResult
from .sizing import fit_rgba
from .stages import encode_condition, encode_transparent_source

_FG, _BG, _BLEND = LayerRole.FOREGROUND, LayerRole.BACKGROUND, LayerRole.BLENDED


@dataclass(frozen=True)
class KeptLatents:
    """Latents a run keeps outside the selection, one row per latent row of a pass.

    Attributes:
        latents: (rows, 4, h, w) scaled latents to keep (zeros where nothing is kept).
        generate: (rows, 1, h, w) in [0, 1]: 1 where the run generates, 0 where it keeps.
    """

    latents: torch.Tensor
    generate: torch.Tensor

    def repeated(self, times: int) -> KeptLatents:
        """The rows repeated `times` times, as a pass of `times` results lays its frames."""
        if times == 1:
            return self
        return KeptLatents(
            self.latents.repeat(times, 1, 1, 1), self.generate.repeat(times, 1, 1, 1)
        )

    def blend(self, sample: torch.Tensor, kept: torch.Tensor) -> torch.Tensor:
        """`sample` where the run generates, `kept` (these latents, noised or not) elsewhere."""
        generate = self.generate.to(sample.dtype)
        return sample * generate + kept.to(sample.dtype) * (1 - generate)


def selection(request: GenerationRequest) -> np.ndarray | None:
    """The mask's alpha, (height, width) uint8 at the request's size, or None without one."""
    mask = request.inputs.get(LayerRole.MASK)
    return None if mask is None else mask[..., 3]


def scene_role(method: Method) -> LayerRole | None:
    """The input a method's blend shows outside the selection: its given layer (background
    or foreground) when it makes a blend from one, else None (`sd15_joint`)."""
    spec = METHOD_SPECS[method]
    if _BLEND not in spec.outputs:
        return None
    given = [role for role in spec.required_inputs if role in (_FG, _BG)]
    return given[0] if given else None


def multiply_alpha(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Straight RGBA with its alpha × mask / 255, rounded to the nearest: exactly 0 where
    the mask is 0 and unchanged where it is 255; the colour is kept."""
    result = image.copy()
    alpha = image[..., 3].astype(np.uint32) * mask.astype(np.uint32)
    result[..., 3] = (alpha + 127) // 255
    return result


def blend_over_scene(generated: np.ndarray, scene: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The scene where the mask is 0 (byte for byte), `generated` where it is 255, and
    between them m · generated + (1 − m) · scene on premultiplied colour.

    Args:
        generated / scene: (H, W, 4) uint8 straight RGBA.
        mask: (H, W) uint8.
    """
    weight = mask.astype(np.float64)[..., None] / 255.0
    alpha_g = generated[..., 3:].astype(np.float64) / 255.0
    alpha_s = scene[..., 3:].astype(np.float64) / 255.0
    alpha = weight * alpha_g + (1 - weight) * alpha_s
    colour = weight * alpha_g * generated[..., :3] + (1 - weight) * alpha_s * scene[..., :3]
    colour = np.divide(colour, alpha, out=np.zeros_like(colour), where=alpha > 0)
    mixed = np.concatenate([colour, alpha * 255.0], axis=-1)
    result = np.rint(np.clip(mixed, 0, 255)).astype(np.uint8)
    result = np.where(mask[..., None] == 0, scene, result)
    return np.where(mask[..., None] == 255, generated, result)


def apply_mask(request: GenerationRequest, result: GenerationResult) -> GenerationResult:
    """A run's results shaped by the request's mask (rules 1 and 2); as they are without one."""
    mask = selection(request)
    if mask is None:
        return result
    role = scene_role(request.method)
    scene = None
    if role is not None:
        scene = _at_request_size(request, request.inputs[role])
    images = [_shaped(layers, mask, scene) for layers in result.images]
    return GenerationResult(
        images=images, seeds=result.seeds, generation_size=result.generation_size
    )


def _shaped(
    layers: Mapping[LayerRole, np.ndarray], mask: np.ndarray, scene: np.ndarray | None
) -> dict[LayerRole, np.ndarray]:
    shaped = {}
    for role, image in layers.items():
        if role is _BLEND and scene is not None:
            shaped[role] = blend_over_scene(image, scene, mask)
        else:
            shaped[role] = multiply_alpha(image, mask)
    return shaped


def _at_request_size(request: GenerationRequest, image: np.ndarray) -> np.ndarray:
    if image.shape[:2] == (request.height, request.width):
        return image
    return fit_rgba(image, request.width, request.height, request.resize_mode)


def latent_mask(request: GenerationRequest, framing: Framing) -> torch.Tensor | None:
    """Where a run generates, at latent resolution: (1, 1, h/8, w/8) float32 in [0, 1], the
    mask mapped into the generation and averaged over each 8 × 8 block; None without one."""
    mask = request.inputs.get(LayerRole.MASK)
    if mask is None:
        return None
    alpha = framing.to_generation(mask)[..., 3].astype(np.float32) / 255.0
    return F.avg_pool2d(torch.from_numpy(alpha)[None, None], 8)


def kept_latents(
    models: ModelSet,
    request: GenerationRequest,
    framing: Framing,
    frame_roles: tuple[LayerRole, ...],
) -> KeptLatents | None:
    """What each frame of a pass keeps outside the selection (rule 3), or None without a mask.

    Args:
        frame_roles: what each latent row of one result is (one role for the SDXL files).

    Returns:
        One row per frame; `repeated(batch_size)` lays them out for a pass.
    """
    generate = latent_mask(request, framing)
    if generate is None:
        return None
    rows: list[torch.Tensor | None] = []
    for role in frame_roles:
        if role is _FG:
            source = request.inputs.get(_FG)
            if source is None or _FG not in METHOD_SPECS[request.method].optional_inputs:
                width, height = framing.generation_size
                rows.append(encode_transparent_source(models, _empty(width, height)))
            else:
                layer = framing.input_at_generation(source, request.resize_mode)
                rows.append(encode_transparent_source(models, layer))
        elif role is _BLEND and scene_role(request.method) is _BG:
            layer = framing.input_at_generation(request.inputs[_BG], request.resize_mode)
            rows.append(encode_condition(models, layer))
        else:
            rows.append(None)
    if all(row is None for row in rows):
        return None
    shape = next(row for row in rows if row is not None).shape
    zeros = torch.zeros(shape, device=models.device, dtype=models.dtype)
    ones = torch.ones((1, 1, *shape[2:]), device=models.device, dtype=torch.float32)
    generate = generate.to(models.device)
    return KeptLatents(
        latents=torch.cat([zeros if row is None else row for row in rows]),
        generate=torch.cat([ones if row is None else generate for row in rows]),
    )


def _empty(width: int, height: int) -> np.ndarray:
    return np.zeros((height, width, 4), dtype=np.uint8)
