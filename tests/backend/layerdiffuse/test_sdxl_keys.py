"""The SDXL layer files' key grammar and the ldm → diffusers names of SDXL UNets."""

from __future__ import annotations

import json
import re

import pytest
import torch
from diffusers import UNet2DConditionModel
from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint

from backend.layerdiffuse import (
    DiffPatch,
    LoRAPatch,
    SDXLUNetLayout,
    diffusers_to_ldm_name,
    ldm_name_table,
    parse_frozen_patches,
    read_unet_layout,
)
from backend.store.configs import config_path


@pytest.fixture(scope="module")
def real_sdxl_unet() -> UNet2DConditionModel:
    config = json.loads(config_path("sdxl", "unet").read_text())
    with torch.device("meta"):
        return UNet2DConditionModel.from_config(config)


def tiny_sdxl_unet() -> UNet2DConditionModel:
    """The SDXL block layout at a tiny width (transformer depths 1, 2, 2)."""
    torch.manual_seed(0)
    return UNet2DConditionModel(
        sample_size=16,
        block_out_channels=(16, 32, 32),
        layers_per_block=2,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        transformer_layers_per_block=(1, 2, 2),
        attention_head_dim=(1, 2, 4),
        cross_attention_dim=24,
        norm_num_groups=8,
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=8,
        projection_class_embeddings_input_dim=16 + 6 * 8,
    )


def test_documented_sdxl_parameter_totals(real_sdxl_unet: UNet2DConditionModel) -> None:
    """§1.1's terms: the whole UNet, the q/k/v weights, the two embedding MLPs."""
    sizes = {name: p.numel() for name, p in real_sdxl_unet.named_parameters()}
    assert sum(sizes.values()) == 2_567_463_684
    qkv = re.compile(r"\.attn[12]\.to_[qkv]\.weight$")
    assert sum(n for name, n in sizes.items() if qkv.search(name)) == 750_387_200
    embeddings = ("time_embedding.", "add_embedding.")
    assert sum(n for name, n in sizes.items() if name.startswith(embeddings)) == 7_296_000
    attention = re.compile(r"\.attn[12]\.to_(q|k|v|out\.0)\.weight$")
    dense = sum(n for name, n in sizes.items() if attention.search(name))
    assert dense == 955_187_200  # ld_diffusers_sdxl_attn (§1.2), and the device-memory cost


def test_layout_is_read_from_the_sdxl_config(real_sdxl_unet: UNet2DConditionModel) -> None:
    assert read_unet_layout(real_sdxl_unet.config) == SDXLUNetLayout(2, (True, True, False))
    config = dict(real_sdxl_unet.config)
    with pytest.raises(ValueError, match=r"layers_per_block \[1, 2, 2\] differ between blocks"):
        read_unet_layout({**config, "layers_per_block": [1, 2, 2]})
    assert read_unet_layout({**config, "layers_per_block": [3, 3, 3]}).layers_per_block == 3
    with pytest.raises(
        ValueError, match="mid_block_type 'UNetMidBlock2D' is not an SDXL mid block"
    ):
        read_unet_layout({**config, "mid_block_type": "UNetMidBlock2D"})


@pytest.mark.parametrize("which", ["real", "tiny"])
def test_names_agree_with_diffusers_own_ldm_converter(
    real_sdxl_unet: UNet2DConditionModel, which: str
) -> None:
    """diffusers' convert_ldm_unet_checkpoint, fed our ldm names, returns the same parameters."""
    unet = real_sdxl_unet if which == "real" else tiny_sdxl_unet()
    names = list(unet.state_dict())
    table = ldm_name_table(names, read_unet_layout(unet.config))
    assert sorted(table.values()) == sorted(names)  # one ldm name per parameter, no collisions
    checkpoint = {f"model.diffusion_model.{ldm}": name for ldm, name in table.items()}
    converted = convert_ldm_unet_checkpoint(checkpoint, dict(unet.config))
    assert converted == {name: name for name in names}


# layerdiffuse.md §3.3, one parameter per row of the table.
DOCUMENTED = {
    "input_blocks.0.0.weight": "conv_in.weight",
    "input_blocks.2.0.in_layers.0.weight": "down_blocks.0.resnets.1.norm1.weight",
    "input_blocks.1.0.in_layers.2.weight": "down_blocks.0.resnets.0.conv1.weight",
    "input_blocks.3.0.op.weight": "down_blocks.0.downsamplers.0.conv.weight",
    "input_blocks.4.0.skip_connection.weight": "down_blocks.1.resnets.0.conv_shortcut.weight",
    "input_blocks.5.1.transformer_blocks.1.attn2.to_k.weight": (
        "down_blocks.1.attentions.1.transformer_blocks.1.attn2.to_k.weight"
    ),
    "input_blocks.6.0.op.bias": "down_blocks.1.downsamplers.0.conv.bias",
    "input_blocks.8.1.transformer_blocks.9.ff.net.0.proj.weight": (
        "down_blocks.2.attentions.1.transformer_blocks.9.ff.net.0.proj.weight"
    ),
    "middle_block.0.emb_layers.1.weight": "mid_block.resnets.0.time_emb_proj.weight",
    "middle_block.1.proj_in.weight": "mid_block.attentions.0.proj_in.weight",
    "middle_block.2.out_layers.3.bias": "mid_block.resnets.1.conv2.bias",
    "output_blocks.0.0.out_layers.0.weight": "up_blocks.0.resnets.0.norm2.weight",
    "output_blocks.2.1.transformer_blocks.9.attn1.to_out.0.bias": (
        "up_blocks.0.attentions.2.transformer_blocks.9.attn1.to_out.0.bias"
    ),
    "output_blocks.2.2.conv.weight": "up_blocks.0.upsamplers.0.conv.weight",
    "output_blocks.3.1.norm.weight": "up_blocks.1.attentions.0.norm.weight",
    "output_blocks.5.2.conv.bias": "up_blocks.1.upsamplers.0.conv.bias",
    "output_blocks.8.0.skip_connection.bias": "up_blocks.2.resnets.2.conv_shortcut.bias",
    "out.0.weight": "conv_norm_out.weight",
    "out.2.bias": "conv_out.bias",
    "time_embed.2.weight": "time_embedding.linear_2.weight",
    "label_emb.0.0.bias": "add_embedding.linear_1.bias",
}


def test_documented_correspondence(real_sdxl_unet: UNet2DConditionModel) -> None:
    layout = read_unet_layout(real_sdxl_unet.config)
    table = ldm_name_table(real_sdxl_unet.state_dict(), layout)
    for ldm, name in DOCUMENTED.items():
        assert table[ldm] == name
        assert diffusers_to_ldm_name(name, layout) == ldm


def test_an_upsampler_without_attentions_is_at_index_1() -> None:
    layout = SDXLUNetLayout(layers_per_block=1, up_attentions=(False, True, False))
    assert diffusers_to_ldm_name("up_blocks.0.upsamplers.0.conv.weight", layout) == (
        "output_blocks.1.1.conv.weight"
    )
    assert diffusers_to_ldm_name("up_blocks.1.upsamplers.0.conv.bias", layout) == (
        "output_blocks.3.2.conv.bias"
    )
    assert diffusers_to_ldm_name("down_blocks.1.downsamplers.0.conv.bias", layout) == (
        "input_blocks.4.0.op.bias"
    )


@pytest.mark.parametrize(
    "name",
    [
        "class_embedding.linear_1.weight",
        "down_blocks.0.resnets.0.nonsense.weight",
        "down_blocks.0.downsamplers.0.op.weight",
        "up_blocks.7.upsamplers.0.conv.weight",
    ],
)
def test_names_outside_the_sdxl_structure_are_refused(name: str) -> None:
    with pytest.raises(ValueError, match=name.replace(".", r"\.")):
        diffusers_to_ldm_name(name, SDXLUNetLayout(2, (True, True, False)))


TABLE = {
    "input_blocks.4.1.transformer_blocks.0.attn1.to_q.weight": "q.weight",
    "input_blocks.0.0.weight": "conv_in.weight",
    "input_blocks.0.0.bias": "conv_in.bias",
}


def test_parsing_groups_lora_pairs_and_diffs() -> None:
    up, down, delta, bias = (
        torch.ones(6, 2),
        torch.ones(2, 5),
        torch.ones(3, 8, 3, 3),
        torch.ones(3),
    )
    query = "diffusion_model.input_blocks.4.1.transformer_blocks.0.attn1.to_q.weight"
    patches = parse_frozen_patches(
        {
            f"{query}::lora::0": up,
            f"{query}::lora::1": down,
            "diffusion_model.input_blocks.0.0.weight::diff::0": delta,
            "diffusion_model.input_blocks.0.0.bias::diff::0": bias,
        },
        TABLE,
    )
    assert set(patches) == {"q.weight", "conv_in.weight", "conv_in.bias"}
    assert isinstance(patches["q.weight"], LoRAPatch)
    assert patches["q.weight"].up is up and patches["q.weight"].down is down
    assert patches["conv_in.weight"] == DiffPatch(delta)
    assert patches["conv_in.bias"] == DiffPatch(bias)


@pytest.mark.parametrize(
    ("keys", "message"),
    [
        (["input_blocks.0.0.weight::diff::0"], "1 keys are not 'diffusion_model.<name>"),
        (["diffusion_model.input_blocks.0.0.weight"], r"input_blocks\.0\.0\.weight$"),
        (["diffusion_model.input_blocks.0.0.weight::lora::2"], "::lora::2"),
        (["diffusion_model.input_blocks.0.0.weight::lokr::0"], "::lokr::0"),
        (["diffusion_model.input_blocks.0.0.weight::diff::x"], "::diff::x"),
        (
            ["diffusion_model.input_blocks.9.0.op.weight::diff::0"],
            r"1 keys name no parameter of this UNet: diffusion_model\.input_blocks\.9\.0\.op",
        ),
        (
            [f"diffusion_model.input_blocks.{i}.0.op.weight::diff::0" for i in range(12)],
            r"12 keys name no parameter of this UNet: .*input_blocks\.0\.0\.op.*, …$",
        ),
        (
            ["diffusion_model.input_blocks.4.1.transformer_blocks.0.attn1.to_q.weight::lora::0"],
            r"q\.weight: the lora pair lacks its down \(::lora::1\) tensor",
        ),
        (
            ["diffusion_model.input_blocks.4.1.transformer_blocks.0.attn1.to_q.weight::lora::1"],
            r"q\.weight: the lora pair lacks its up \(::lora::0\) tensor",
        ),
        (
            [
                "diffusion_model.input_blocks.0.0.weight::diff::0",
                "diffusion_model.input_blocks.0.0.weight::lora::0",
            ],
            r"conv_in\.weight has both a diff and a lora patch",
        ),
    ],
)
def test_keys_outside_the_format_are_refused_by_name(keys: list[str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_frozen_patches(dict.fromkeys(keys, torch.zeros(1)), TABLE)
