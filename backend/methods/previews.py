"""Cheap progress previews: latents → a small RGB image by a fixed linear map.

The factors are the widely used "latent RGB factors" of the SD1.5, SDXL and FLUX.1 latent
spaces (as ComfyUI and A1111 use for their fast previews; FLUX's 16 channels are
ComfyUI's `latent_formats.Flux`). LayerDiffuse's transparent latents
are close enough for a preview: the point is to show the composition forming.
Qwen-Image-Layered's RGBA VAE is fine-tuned from Qwen-Image's, whose latent space is
Wan 2.1's (ComfyUI's `latent_formats.Wan21` factors, on normalised latents, as the split
holds them); its previews are of the composite frame, and only roughly coloured.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from protocol import ModelFamily

_FACTORS = {
    ModelFamily.QWEN_LAYERED: (
        [
            [-0.1299, -0.1692, 0.2932],
            [0.0671, 0.0406, 0.0442],
            [0.3568, 0.2548, 0.1747],
            [0.0372, 0.2344, 0.1420],
            [0.0313, 0.0189, -0.0328],
            [0.0296, -0.0956, -0.0665],
            [-0.3477, -0.4059, -0.2925],
            [0.0166, 0.1902, 0.1975],
            [-0.0412, 0.0267, -0.1364],
            [-0.1293, 0.0740, 0.1636],
            [0.0680, 0.3019, 0.1128],
            [0.0032, 0.0581, 0.0639],
            [-0.1251, 0.0927, 0.1699],
            [0.0060, -0.0633, 0.0005],
            [0.3477, 0.2275, 0.2950],
            [0.1984, 0.0913, 0.1861],
        ],
        [-0.1835, -0.0868, -0.3360],
    ),
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
    ModelFamily.FLUX: (
        [
            [-0.0346, 0.0244, 0.0681],
            [0.0034, 0.0210, 0.0687],
            [0.0275, -0.0668, -0.0433],
            [-0.0174, 0.0160, 0.0617],
            [0.0859, 0.0721, 0.0329],
            [0.0004, 0.0383, 0.0115],
            [0.0405, 0.0861, 0.0915],
            [-0.0236, -0.0185, -0.0259],
            [-0.0245, 0.0250, 0.1180],
            [0.1008, 0.0755, -0.0421],
            [-0.0515, 0.0201, 0.0011],
            [0.0428, -0.0012, -0.0036],
            [0.0817, 0.0765, 0.0749],
            [-0.1264, -0.0522, -0.1103],
            [-0.0280, -0.0881, -0.0499],
            [-0.1262, -0.0982, -0.0778],
        ],
        [-0.0329, -0.0718, -0.0851],
    ),
}


@torch.no_grad()
def latent_preview(
    latents: torch.Tensor, family: ModelFamily, max_side: int
) -> tuple[int, int, bytes]:
    """A preview of the first row of `latents`.

    Args:
        latents: (B, C, h, w) scaled latents as the sampler holds them (C = 4, or 16
            for FLUX).
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
