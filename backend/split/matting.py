"""The matting fallback: for checkpoints on which LayerDiffuse fails, generate on gray, matte.

LayerDiffuse's SDXL files were trained against SDXL base; on heavily retrained anime
checkpoints (Illustrious-XL, NoobAI-XL and the merges built on them) the transparent
decoder gives a pink tint or a solid background. The fallback generates an ordinary
picture on a neutral gray (0.5) background, mattes it, and un-mixes the foreground's
colour from the known gray: with the background B known, `I = α·F + (1 − α)·B` gives
`F = (I − (1 − α)·B) / α` exactly, which a matte on an unknown background cannot.

Recognising such a checkpoint (`detect_failing_family`). The weights cannot tell: these
models have SDXL's architecture and key names (`infer_diffusers_model_type` and our
`store.checkpoints` see SDXL). Only markers and names remain, so this is a heuristic:

- `v_pred` (and `ztsnr`) marker tensors in the state dict: ComfyUI reads them in
  `comfy/supported_models.py` (`SDXL.model_type`: "v_pred" → V_PREDICTION, "ztsnr" → zero
  terminal SNR, commented "Some zsnr anime checkpoints"); NoobAI-XL's v-prediction
  release and its merges carry them. LayerDiffuse's eps-trained files do not fit a v model;
- safetensors metadata: Stability's ModelSpec (`modelspec.title`, `modelspec.description`,
  `modelspec.merged_from`, `modelspec.prediction_type`), kohya's training keys
  (`ss_sd_model_name`, `ss_new_sd_model_name`, `ss_output_name`), and the merge recipes
  that A1111's checkpoint merger and SuperMerger write (`sd_merge_recipe`, a JSON string,
  and `sd_merge_models`, JSON mapping sha256 → {"name", "legacy_hash"});
- the file name, where users keep the model site's name (`waiNSFWIllustrious_v140`,
  `noobaiXLNAIXL_vPred10Version`).

A checkpoint with no metadata and a neutral name is not recognised: the user's choice
(a "LayerDiffuse fails on this model" switch) must remain.

The matting model (`matte`). Candidates, MIT-licensed:

- BiRefNet (Zheng et al., arXiv 2401.03407): `ZhengPeng7/BiRefNet_HR-matting` (trained
  at 2048², `model.safetensors`, 444 MB) and `ZhengPeng7/BiRefNet-matting` (1024²,
  885 MB). Neither transformers nor diffusers has the architecture: the hub repos load
  through `AutoModelForImageSegmentation.from_pretrained(..., trust_remote_code=True)`,
  running the repo's `birefnet.py` (~92 kB, Swin backbone + bilateral reference decoder).
  Here the architecture is re-implemented (`split.birefnet`) and `model.safetensors` is
  loaded into it `strict=True`; no remote code;
- InSPyReNet / `transparent-background` (MIT, plemeri): its weights are `.pth` pickles
  (`ckpt_base.pth`, 368 MB, GitHub release 1.2.12), which this backend never loads.

The port is `split.birefnet.BiRefNet` (an independent implementation whose state dict is
the released files'); the store reads `ZhengPeng7/BiRefNet_HR-matting` into it
(`store.matting_models`). The contract it meets is fixed here (RGB normalised with
ImageNet statistics at a square `input_size` in, one logit map out, sigmoid = alpha), and
`MattingNet` is a small documented model of that contract for the library's own tests.
ViTMatte, which transformers does ship, needs a trimap and so a segmentation first: not a
one-model fallback.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

NEUTRAL_GRAY = 0.5
"""The background the fallback generates on (0.5 in [0, 1]: RGB 128)."""

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
"""BiRefNet's input normalisation (its `transform_image`), kept by the stand-in."""

VPRED_FAMILY = "sdxl-vpred"
FAMILY_PATTERNS: dict[str, re.Pattern[str]] = {
    # Most specific first: NoobAI-XL is trained from Illustrious-XL and often says both.
    "noobai": re.compile(r"noob[\W_]*ai|noobxl|\bnai[\W_]*xl", re.IGNORECASE),
    "illustrious": re.compile(r"illustrious", re.IGNORECASE),
}
"""Family → the names that give it away (titles, base-model names, merge parents, files)."""

_NAMED_KEYS = (
    "modelspec.title",
    "modelspec.description",
    "modelspec.merged_from",
    "ss_sd_model_name",
    "ss_new_sd_model_name",
    "ss_output_name",
    "sd_merge_recipe",
)
_VPRED_KEYS = ("v_pred", "edm_vpred.sigma_max")


def detect_failing_family(
    source: Mapping[str, str] | Iterable[str], *, filename: str | None = None
) -> str | None:
    """Tell whether a checkpoint is of a family on which LayerDiffuse fails.

    Args:
        source: the checkpoint's safetensors metadata (a mapping of strings), or its
            state-dict keys (any other iterable of strings).
        filename: the checkpoint's file name, when known.

    Returns:
        `"noobai"`, `"illustrious"` (from names), `"sdxl-vpred"` (a v-prediction marker,
        no name), or None when nothing says so.
    """
    names: list[str] = [filename] if filename else []
    vpred = False
    if isinstance(source, Mapping):
        names += [str(source[key]) for key in _NAMED_KEYS if key in source]
        names += _merge_model_names(source.get("sd_merge_models"))
        vpred = str(source.get("modelspec.prediction_type", "")).lower() in ("v", "v_prediction")
    else:
        keys = set(source)
        vpred = any(key in keys for key in _VPRED_KEYS)
    for family, pattern in FAMILY_PATTERNS.items():
        if any(pattern.search(name) for name in names):
            return family
    return VPRED_FAMILY if vpred else None


def _merge_model_names(value: str | None) -> list[str]:
    """Parent names from `sd_merge_models` (JSON: sha256 → {"name": …}); [] if unreadable."""
    if not value:
        return []
    try:
        models = json.loads(value)
    except (TypeError, ValueError):
        return [value]
    if not isinstance(models, dict):
        return []
    return [str(entry.get("name", "")) for entry in models.values() if isinstance(entry, dict)]


class MattingNet(nn.Module):
    """A small U-Net stand-in with the matting contract (not a released architecture).

    Layout: `encoder.{i}` = conv3×3 (stride 1 for i = 0, else 2) → GroupNorm(1) → SiLU, one
    per width; `decoder.{j}` = upsample ×2, concat the encoder output of the same size,
    conv3×3 → GroupNorm(1) → SiLU; `head` = conv1×1 to one logit.

    Args:
        widths: channels per level; the input side must be divisible by 2^(len − 1).
        input_size: the square side pictures are resized to (BiRefNet: 1024, HR: 2048).
    """

    def __init__(self, widths: Sequence[int] = (8, 16, 32), input_size: int = 64) -> None:
        super().__init__()
        self.input_size = input_size
        self.encoder = nn.ModuleList(
            _block(3 if index == 0 else widths[index - 1], width, 1 if index == 0 else 2)
            for index, width in enumerate(widths)
        )
        self.decoder = nn.ModuleList(
            _block(widths[index + 1] + widths[index], widths[index], 1)
            for index in reversed(range(len(widths) - 1))
        )
        self.head = nn.Conv2d(widths[0], 1, 1)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) normalised RGB → (B, 1, S, S) alpha logits."""
        skips = []
        hidden = pixels
        for block in self.encoder:
            hidden = block(hidden)
            skips.append(hidden)
        for block, skip in zip(self.decoder, reversed(skips[:-1]), strict=True):
            hidden = F.interpolate(hidden, size=skip.shape[-2:], mode="nearest")
            hidden = block(torch.cat([hidden, skip], dim=1))
        return self.head(hidden)


def _block(channels_in: int, channels_out: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(channels_in, channels_out, 3, stride=stride, padding=1),
        nn.GroupNorm(1, channels_out),
        nn.SiLU(),
    )


@torch.no_grad()
def matte(rgb_uint8: np.ndarray, model: nn.Module) -> np.ndarray:
    """Alpha of the foreground in an RGB picture.

    Args:
        rgb_uint8: (H, W, 3) uint8.
        model: takes (1, 3, S, S) RGB normalised with `IMAGENET_MEAN` / `IMAGENET_STD`,
            S = `model.input_size`, and returns (1, 1, S, S) logits (BiRefNet's last
            prediction has this form).

    Returns:
        (H, W) uint8 alpha, 255 = foreground.

    Raises:
        ValueError: the picture is not (H, W, 3) uint8.
    """
    if rgb_uint8.ndim != 3 or rgb_uint8.shape[2] != 3 or rgb_uint8.dtype != np.uint8:
        raise ValueError(f"rgb must be (H, W, 3) uint8, got {rgb_uint8.shape} {rgb_uint8.dtype}")
    height, width = rgb_uint8.shape[:2]
    parameter = next(model.parameters())
    pixels = torch.from_numpy(rgb_uint8).permute(2, 0, 1)[None].float() / 255
    size = (model.input_size, model.input_size)
    pixels = F.interpolate(pixels, size=size, mode="bilinear", align_corners=False, antialias=True)
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    pixels = ((pixels - mean) / std).to(parameter.device, parameter.dtype)
    alpha = model(pixels).float().sigmoid().cpu()
    alpha = F.interpolate(alpha, size=(height, width), mode="bilinear", align_corners=False)
    return (alpha[0, 0].clamp(0, 1).numpy() * 255).round().astype(np.uint8)


def unmix_foreground(
    rgb_uint8: np.ndarray, alpha_uint8: np.ndarray, background: float | np.ndarray = NEUTRAL_GRAY
) -> np.ndarray:
    """Straight-alpha RGBA from a picture on a flat background and its alpha.

    Solves `I = α·F + (1 − α)·B` for F per pixel, clipped to [0, 1]; where α is 0 the
    colour is the picture's (it is invisible).

    Args:
        rgb_uint8: (H, W, 3) uint8, generated on the flat `background`.
        alpha_uint8: (H, W) uint8.
        background: the background's grey level in [0, 1], or its (3,) RGB colour.

    Returns:
        (H, W, 4) uint8 RGBA.
    """
    if rgb_uint8.shape[:2] != alpha_uint8.shape:
        raise ValueError(f"alpha {alpha_uint8.shape} does not match rgb {rgb_uint8.shape[:2]}")
    image = rgb_uint8.astype(np.float32) / 255
    alpha = alpha_uint8.astype(np.float32)[..., None] / 255
    solid = alpha > 0
    colour = np.where(solid, (image - (1 - alpha) * background) / np.maximum(alpha, 1e-6), image)
    rgb = (np.clip(colour, 0, 1) * 255).round().astype(np.uint8)
    return np.concatenate([rgb, alpha_uint8[..., None]], axis=2)


def matte_on_gray(rgb_uint8: np.ndarray, model: nn.Module) -> np.ndarray:
    """The fallback's last step: matte a picture generated on `NEUTRAL_GRAY`, un-mix it.

    Returns:
        (H, W, 4) uint8 straight-alpha RGBA.
    """
    return unmix_foreground(rgb_uint8, matte(rgb_uint8, model), NEUTRAL_GRAY)
