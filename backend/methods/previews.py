"""Cheap progress previews: latents → a small RGB image by a fixed linear map.

The factors are the widely used "latent RGB factors" of the SD1.5 and SDXL latent spaces
(as ComfyUI and A1111 use for their fast previews). LayerDiffuse's transparent latents
are close enough for a preview: the point is to show the composition forming.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from protocol import ModelFamily

_FACTORS = {
    ModelFamily.SD15: (
        [
            [0.3512, 0.2297, 0.3227],
            [0.3250, 0.4974, 0.2350],
            [-0.2829, 0.1762, 0.2721],
            [-0.2120, -0.2616, -0.7177],
        ],
        [0.0, 0.0, 0.0],
    ),
    ModelFamily.SDXL: (
        [
            [0.3651, 0.4232, 0.4341],
            [-0.2533, -0.0042, 0.1068],
            [0.1076, 0.1111, -0.0362],
            [-0.3165, -0.2492, -0.2188],
        ],
        [0.1084, -0.0175, -0.0011],
    ),
}


@torch.no_grad()
def latent_preview(
    latents: torch.Tensor, family: ModelFamily, max_side: int
) -> tuple[int, int, bytes]:
    """A preview of the first row of `latents`.

    Args:
        latents: (B, 4, h, w) scaled latents as the sampler holds them.
        family: which latent space.
        max_side: the preview's longest side in pixels (it is never larger than 8× the latent).

    Returns:
        (width, height, RGBA bytes), alpha 255.
    """
    factors, bias = _FACTORS[family]
    weight = torch.tensor(factors, dtype=torch.float32, device=latents.device)
    rgb = torch.einsum("chw,cr->rhw", latents[0].float(), weight)
    rgb = rgb + torch.tensor(bias, device=latents.device)[:, None, None]
    height, width = rgb.shape[-2:]
    scale = min(8.0, max_side / max(height, width))
    size = (max(1, round(height * scale)), max(1, round(width * scale)))
    rgb = F.interpolate(rgb[None], size=size, mode="bilinear", align_corners=False)[0]
    image = ((rgb.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
    alpha = np.full((*image.shape[:2], 1), 255, dtype=np.uint8)
    return size[1], size[0], np.concatenate([image, alpha], axis=-1).tobytes()
