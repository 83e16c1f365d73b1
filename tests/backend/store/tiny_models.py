"""Tiny SD1.5- and SDXL-shaped base models, written the three ways users have them.

The components are the real diffusers / transformers classes at a small width, with the
real block types, so the store's loaders run exactly as on full-size models: a diffusers
folder, one ldm-keyed `.safetensors` checkpoint, and a config folder laid out like the
shipped one (what `config_root` points at).
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from backend.store.configs import config_path
from backend.store.tokenizer import write_tokenizer_files
from protocol.methods import ModelFamily
from tests.backend.store import ldm_keys

SD15_UNET: dict[str, Any] = {
    "sample_size": 8,
    "block_out_channels": (32, 32, 64, 64),
    "layers_per_block": 2,
    "down_block_types": ("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
    "up_block_types": ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
    "cross_attention_dim": 32,
    "attention_head_dim": 8,
    "norm_num_groups": 8,
}
SDXL_UNET: dict[str, Any] = {
    "sample_size": 8,
    "block_out_channels": (32, 64, 64),
    "layers_per_block": 2,
    "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    "up_block_types": ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    "transformer_layers_per_block": (1, 2, 2),
    "attention_head_dim": (2, 4, 4),
    "cross_attention_dim": 32 + 64,
    "addition_embed_type": "text_time",
    "addition_time_embed_dim": 8,
    "projection_class_embeddings_input_dim": 64 + 6 * 8,
    "use_linear_projection": True,
    "norm_num_groups": 8,
}
VAE: dict[str, Any] = {
    "block_out_channels": (16, 16, 32, 32),
    "down_block_types": ("DownEncoderBlock2D",) * 4,
    "up_block_types": ("UpDecoderBlock2D",) * 4,
    "latent_channels": 4,
    "layers_per_block": 1,
    "norm_num_groups": 8,
    "sample_size": 64,
}
TEXT: dict[str, Any] = {
    "vocab_size": 49408,
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "max_position_embeddings": 77,
    "hidden_act": "quick_gelu",
    "bos_token_id": 0,
    "eos_token_id": 2,
    "pad_token_id": 1,
}
TEXT_2: dict[str, Any] = {
    **TEXT,
    "hidden_size": 64,
    "intermediate_size": 128,
    "hidden_act": "gelu",
    "projection_dim": 64,
}


@dataclass
class TinySet:
    """One tiny base model in memory and on disk."""

    family: ModelFamily
    components: dict[str, torch.nn.Module]
    folder: Path
    checkpoint: Path
    config_root: Path


def _save_json(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1, default=list), encoding="utf-8")


def build_tiny_set(family: ModelFamily, root: Path) -> TinySet:
    """Build, seed and write a tiny base model of `family` under `root`."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    sdxl = family is ModelFamily.SDXL
    torch.manual_seed(0)
    components: dict[str, torch.nn.Module] = {
        "unet": UNet2DConditionModel(**(SDXL_UNET if sdxl else SD15_UNET)),
        "vae": AutoencoderKL(**VAE),
        "text_encoder": CLIPTextModel(CLIPTextConfig(**TEXT)),
    }
    if sdxl:
        components["text_encoder_2"] = CLIPTextModelWithProjection(CLIPTextConfig(**TEXT_2))
    for model in components.values():
        model.eval()

    folder = root / f"tiny-{family.value}"
    for name, model in components.items():
        model.save_pretrained(folder / name, safe_serialization=True)  # type: ignore[operator]
    shutil.copytree(config_path(family, "scheduler").parent, folder / "scheduler")
    if not sdxl:  # the SDXL folder has none, so the built-in tokenizers are used
        write_tokenizer_files(folder / "tokenizer")
    index = {
        "_class_name": "StableDiffusionXLPipeline" if sdxl else "StableDiffusionPipeline",
        "_diffusers_version": "0.42.1",
        **{
            name: [type(model).__module__.split(".")[0], type(model).__name__]
            for name, model in components.items()
        },
    }
    _save_json(folder / "model_index.json", index)

    config_root = root / f"configs-{family.value}"
    configs: dict[str, dict[str, Any]] = {}
    for name, model in components.items():
        config: Any = model.config
        configs[name] = config.to_dict() if name.startswith("text") else dict(config)
    for name, config in configs.items():
        _save_json(config_path(family, name, root=config_root), config)
    _save_json(
        config_path(family, "scheduler", root=config_root),
        json.loads(config_path(family, "scheduler").read_text(encoding="utf-8")),
    )

    checkpoint = root / f"tiny-{family.value}.safetensors"
    state = ldm_keys.unet_to_ldm(components["unet"].state_dict(), configs["unet"])
    state |= ldm_keys.vae_to_ldm(components["vae"].state_dict(), configs["vae"])
    clip_prefix = ldm_keys.SDXL_CLIP_PREFIX if sdxl else ldm_keys.SD15_CLIP_PREFIX
    state |= ldm_keys.clip_to_ldm(components["text_encoder"].state_dict(), clip_prefix)
    if sdxl:
        state |= ldm_keys.open_clip_to_ldm(
            components["text_encoder_2"].state_dict(), ldm_keys.SDXL_OPENCLIP_PREFIX
        )
    save_file({key: value.contiguous() for key, value in state.items()}, str(checkpoint))
    return TinySet(family, components, folder, checkpoint, config_root)
