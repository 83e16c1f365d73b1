"""Real-size model sets with random weights, built straight on the device.

Timing depends on shapes, not values: these are the shipped SD1.5 / SDXL configs and
the released LayerDiffuse architectures, with the files' key sets and shapes, so the
methods run them exactly as they would run the real weights.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from torch import nn
from transformers import (
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTextModelWithProjection,
)

from protocol import ModelFamily

from ..layerdiffuse import (
    RELEASED_SDXL_FILES,
    LayerModelLayout,
    TransparentVAEDecoder,
    TransparentVAEEncoder,
    build_sd15_layer_model,
    read_unet_layout,
    released_key_shapes,
)
from ..model_set import BaseModel, ModelSet
from ..store.configs import config_path
from ..store.tokenizer import SDXL_SECOND_PAD_TOKEN, clip_tokenizer

SD15_LAYER_LAYOUTS = {
    "layer_sd15_transparent_attn": LayerModelLayout(1, 256, False),
    "layer_sd15_joint": LayerModelLayout(3, 256, False),
    "layer_sd15_fg2bg": LayerModelLayout(2, 256, True),
    "layer_sd15_bg2fg": LayerModelLayout(2, 256, True),
}
# Random patches of this size keep a merged SDXL UNet's activations finite in fp16.
PATCH_SCALE = 1e-3


def build_random(
    factory: Callable[[], nn.Module], device: torch.device, dtype: torch.dtype
) -> nn.Module:
    """Build a module with its default random initialisation directly on the device."""
    torch.manual_seed(0)
    with torch.device(device):
        module = factory()
    return module.to(dtype).eval()


def _config(family: str, component: str) -> dict[str, Any]:
    return json.loads(config_path(family, component).read_text())


def random_sd15_model_set(device: torch.device, dtype: torch.dtype) -> ModelSet:
    """SD1.5 and its four LayerDiffuse files, decoder and encoder, at real size."""
    unet_config = _config("sd15", "unet")
    text_config = CLIPTextConfig(**_config("sd15", "text_encoder"))
    unet = build_random(lambda: UNet2DConditionModel.from_config(unet_config), device, dtype)
    base = BaseModel(
        family=ModelFamily.SD15,
        name="random-weights SD1.5 (bench)",
        unet=unet,
        vae=build_random(lambda: AutoencoderKL.from_config(_config("sd15", "vae")), device, dtype),
        text_encoder=build_random(lambda: CLIPTextModel(text_config), device, dtype),
        tokenizer=clip_tokenizer(),
        scheduler_config=_config("sd15", "scheduler"),
    )

    def load(name: str) -> dict[str, torch.Tensor]:
        if name in SD15_LAYER_LAYOUTS:
            layout = SD15_LAYER_LAYOUTS[name]
            return build_random(
                lambda: build_sd15_layer_model(unet, layout), device, dtype
            ).state_dict()
        return _random_transparent_vae(name, device, dtype)

    return ModelSet(base=base, load_layer_file=load, offset_scales={}, device=device, dtype=dtype)


def random_sdxl_model_set(device: torch.device, dtype: torch.dtype) -> ModelSet:
    """SDXL base and its six LayerDiffuse files (random patches in the released key sets)."""
    unet_config = _config("sdxl", "unet")
    unet = build_random(lambda: UNet2DConditionModel.from_config(unet_config), device, dtype)
    first = CLIPTextConfig(**_config("sdxl", "text_encoder"))
    second = CLIPTextConfig(**_config("sdxl", "text_encoder_2"))
    vae = build_random(lambda: AutoencoderKL.from_config(_config("sdxl", "vae")), device, dtype)
    base = BaseModel(
        family=ModelFamily.SDXL,
        name="random-weights SDXL (bench)",
        unet=unet,
        vae=vae.to(torch.float32),  # force_upcast: SDXL's VAE runs in float32
        text_encoder=build_random(lambda: CLIPTextModel(first), device, dtype),
        tokenizer=clip_tokenizer(),
        scheduler_config=_config("sdxl", "scheduler"),
        text_encoder_2=build_random(lambda: CLIPTextModelWithProjection(second), device, dtype),
        tokenizer_2=clip_tokenizer(pad_token=SDXL_SECOND_PAD_TOKEN),
    )
    shapes = {key: tuple(value.shape) for key, value in unet.state_dict().items()}
    layout = read_unet_layout(unet.config)

    def load(name: str) -> dict[str, torch.Tensor]:
        if name in RELEASED_SDXL_FILES:
            generator = torch.Generator(device).manual_seed(1)
            return {
                key: torch.randn(shape, generator=generator, device=device, dtype=dtype)
                * PATCH_SCALE
                for key, shape in released_key_shapes(shapes, layout, name).items()
            }
        return _random_transparent_vae(name, device, dtype)

    return ModelSet(base=base, load_layer_file=load, offset_scales={}, device=device, dtype=dtype)


def _random_transparent_vae(
    name: str, device: torch.device, dtype: torch.dtype
) -> dict[str, torch.Tensor]:
    factory = TransparentVAEDecoder if name.endswith("decoder") else TransparentVAEEncoder
    return build_random(factory, device, dtype).state_dict()
