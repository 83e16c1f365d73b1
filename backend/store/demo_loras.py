"""Tiny random LoRAs in the released few-step files' layout, for the demo model set.

DMD2's extraction script (tianweiy/DMD2 `main/sdxl/extract_lora_module.py`), LCM-LoRA's
training scripts and SDXL-Lightning write the same thing: kohya keys in diffusers block
names (`lora_unet_<module with _ for .>.lora_down.weight`, `.lora_up.weight`, `.alpha`)
on fourteen module types of the UNet, and nothing for the text encoders. The demo files
have that layout on the demo UNet at a small rank, with alpha ≠ rank so that the scale
`alpha / rank` is exercised.
"""

from __future__ import annotations

import torch
from torch import nn

FEW_STEP_TARGETS = (
    "to_q",
    "to_k",
    "to_v",
    "to_out.0",
    "proj_in",
    "proj_out",
    "ff.net.0.proj",
    "ff.net.2",
    "conv1",
    "conv2",
    "conv_shortcut",
    "downsamplers.0.conv",
    "upsamplers.0.conv",
    "time_emb_proj",
)
"""The module names (their last parts) the released few-step LoRAs patch."""

DEMO_RANK = 4
DEMO_ALPHA = 2.0


def few_step_lora_state_dict(
    unet: nn.Module, seed: int, *, rank: int = DEMO_RANK, alpha: float = DEMO_ALPHA
) -> dict[str, torch.Tensor]:
    """A random kohya-format LoRA on every target module of `unet`.

    Down is (rank, in, kh, kw) for a conv and (rank, in) for a linear; up is
    (out, rank, 1, 1) or (out, rank); `.alpha` a scalar tensor. Up is small, so a merged
    demo UNet stays numerically tame, but not zero: the LoRA visibly changes results.
    """
    generator = torch.Generator().manual_seed(seed)
    state: dict[str, torch.Tensor] = {}
    for name, module in unet.named_modules():
        if not any(name == target or name.endswith("." + target) for target in FEW_STEP_TARGETS):
            continue
        weight = getattr(module, "weight", None)
        if weight is None or weight.dim() < 2:
            continue
        key = "lora_unet_" + name.replace(".", "_")
        out_features, in_features = weight.shape[:2]
        kernel = tuple(weight.shape[2:])
        down = torch.randn((rank, in_features, *kernel), generator=generator)
        up = torch.randn((out_features, rank, *(1 for _ in kernel)), generator=generator)
        state[f"{key}.lora_down.weight"] = down / in_features**0.5
        state[f"{key}.lora_up.weight"] = up * 0.05
        state[f"{key}.alpha"] = torch.tensor(alpha)
    return state
