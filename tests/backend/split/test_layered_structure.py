"""Qwen-Image-Layered at its real size, on `meta`: key names, shapes and parameter counts.

The configs are the release's (`Qwen/Qwen-Image-Layered` transformer/config.json: the
Qwen-Image geometry plus `use_additional_t_cond` and `use_layer3d_rope`; vae: 4 input
channels; text_encoder: Qwen2.5-VL-7B, as in Qwen-Image's text_encoder/config.json). The
module docstring of `backend.split.layered` quotes the counts asserted here.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from diffusers import AutoencoderKLQwenImage, QwenImageTransformer2DModel
from safetensors import safe_open
from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

LAYERED_TRANSFORMER = {
    "patch_size": 2,
    "in_channels": 64,
    "out_channels": 16,
    "num_layers": 60,
    "attention_head_dim": 128,
    "num_attention_heads": 24,
    "joint_attention_dim": 3584,
    "guidance_embeds": False,
    "axes_dims_rope": (16, 56, 56),
    "zero_cond_t": False,
    "use_additional_t_cond": True,
    "use_layer3d_rope": True,
}
LAYERED_VAE = {
    "base_dim": 96,
    "z_dim": 16,
    "dim_mult": [1, 2, 4, 4],
    "num_res_blocks": 2,
    "attn_scales": [],
    "temperal_downsample": [False, True, True],
    "input_channels": 4,
}
QWEN25_VL_7B = {
    "text_config": {
        "vocab_size": 152064,
        "hidden_size": 3584,
        "intermediate_size": 18944,
        "num_hidden_layers": 28,
        "num_attention_heads": 28,
        "num_key_value_heads": 4,
        "rms_norm_eps": 1e-6,
        "max_position_embeddings": 128000,
        "rope_parameters": {
            "rope_type": "default",
            "mrope_section": [16, 24, 24],
            "rope_theta": 1e6,
        },
    },
    "vision_config": {
        "depth": 32,
        "hidden_size": 1280,
        "intermediate_size": 3420,
        "num_heads": 16,
        "out_hidden_size": 3584,
        "patch_size": 14,
        "spatial_merge_size": 2,
        "temporal_patch_size": 2,
        "window_size": 112,
        "fullatt_block_indexes": [7, 15, 23, 31],
        "tokens_per_second": 2,
    },
    "tie_word_embeddings": False,
}


def _parameters(module: torch.nn.Module) -> int:
    return sum(parameter.numel() for parameter in module.parameters())


@pytest.fixture(scope="module")
def transformer_shapes() -> dict[str, tuple[int, ...]]:
    with torch.device("meta"):
        transformer = QwenImageTransformer2DModel(**LAYERED_TRANSFORMER)
    assert _parameters(transformer) == 20_430_407_232  # 40.86 GB in bf16
    return {name: tuple(tensor.shape) for name, tensor in transformer.state_dict().items()}


def test_the_real_transformer_has_the_layered_keys_and_shapes(
    transformer_shapes: dict[str, tuple[int, ...]],
) -> None:
    assert len(transformer_shapes) == 1934
    assert transformer_shapes["img_in.weight"] == (3072, 64)
    assert transformer_shapes["txt_in.weight"] == (3072, 3584)
    assert transformer_shapes["txt_norm.weight"] == (3584,)
    # the layered release's extra: an RGB/RGBA flag embedded beside the timestep
    assert transformer_shapes["time_text_embed.addition_t_embedding.weight"] == (2, 3072)
    assert transformer_shapes["transformer_blocks.59.img_mlp.net.0.proj.weight"] == (12288, 3072)
    assert transformer_shapes["transformer_blocks.0.attn.norm_q.weight"] == (128,)
    assert transformer_shapes["proj_out.weight"] == (64, 3072)
    assert "transformer_blocks.60.img_mod.1.weight" not in transformer_shapes


def test_the_demo_transformer_has_the_real_key_names(
    transformer_shapes: dict[str, tuple[int, ...]], layered_demo_dir: Path
) -> None:
    with safe_open(
        str(layered_demo_dir / "transformer" / "diffusion_pytorch_model.safetensors"), "pt"
    ) as demo:
        demo_keys = set(demo.keys())
    real_first_blocks = {
        key
        for key in transformer_shapes
        if not (match := re.match(r"transformer_blocks\.(\d+)\.", key)) or int(match[1]) < 2
    }
    assert demo_keys == real_first_blocks


def test_the_real_rgba_vae_takes_and_gives_four_channels(layered_demo_dir: Path) -> None:
    with torch.device("meta"):
        vae = AutoencoderKLQwenImage(**LAYERED_VAE)
    shapes = {name: tuple(tensor.shape) for name, tensor in vae.state_dict().items()}
    assert _parameters(vae) == 126_897_716  # 0.25 GB in bf16
    assert shapes["encoder.conv_in.weight"] == (96, 4, 3, 3, 3)
    assert shapes["decoder.conv_out.weight"] == (4, 96, 3, 3, 3)
    assert shapes["quant_conv.weight"] == (32, 32, 1, 1, 1)
    with safe_open(
        str(layered_demo_dir / "vae" / "diffusion_pytorch_model.safetensors"), "pt"
    ) as demo:
        assert set(demo.keys()) == set(shapes)


def test_the_text_encoder_is_qwen25_vl_7b_with_its_parts_counted() -> None:
    with torch.device("meta"):
        encoder = Qwen2_5_VLForConditionalGeneration(Qwen2_5_VLConfig(**QWEN25_VL_7B))
    assert _parameters(encoder) == 8_292_166_656  # 16.58 GB in bf16
    assert _parameters(encoder.model.language_model) == 7_070_619_136
    assert _parameters(encoder.model.visual) == 676_550_144
    assert _parameters(encoder.lm_head) == 544_997_376
    assert encoder.model.visual.merger.mlp[2].weight.shape == (3584, 5120)
