"""The released FLUX files: the `.pth` read once and safely, the LoRA parsed and merged exactly."""

from __future__ import annotations

import collections
import math
from pathlib import Path

import pytest
import torch
from diffusers import FluxTransformer2DModel
from safetensors import safe_open

from backend.layerdiffuse.flux_weights import (
    SOURCE_SHA256_KEY,
    attach_flux_lora,
    convert_pickle_to_safetensors,
    file_sha256,
    flux_lora_key_shapes,
    load_released_pickle,
    lora_parameter_count,
    parse_flux_lora,
)
from backend.model_set import FluxModelSet


class NotATensor:
    """Any class a pickle could name: `weights_only` must refuse to build it."""

    def __init__(self) -> None:
        self.payload = "arbitrary code would run here"


def _pickle(path: Path, state: object) -> str:
    torch.save(state, path)
    return file_sha256(path)


# --- TransparentVAE.pth ------------------------------------------------------------------


def test_a_pth_is_converted_bit_exactly_and_then_only_safetensors_are_read(
    tmp_path: Path,
) -> None:
    state = collections.OrderedDict(
        {
            "decoder.conv_in.weight": torch.randn(4, 3, 3, 3).to(torch.bfloat16),
            "encoder.blocks.0.bias": torch.arange(8, dtype=torch.float32),
        }
    )
    source = tmp_path / "TransparentVAE.pth"
    sha = _pickle(source, state)
    target = tmp_path / "cache" / "TransparentVAE.safetensors"
    loaded = load_released_pickle(source, sha, target)
    assert sorted(loaded) == sorted(state)
    for key, value in state.items():
        assert loaded[key].dtype == value.dtype and torch.equal(loaded[key], value)
    with safe_open(str(target), framework="pt") as handle:
        assert handle.metadata()[SOURCE_SHA256_KEY] == sha
    # Once converted, the pickle is not needed (nor read) again.
    source.unlink()
    again = load_released_pickle(None, sha, target)
    assert torch.equal(again["encoder.blocks.0.bias"], state["encoder.blocks.0.bias"])


def test_a_wrong_sha256_is_refused_before_unpickling(tmp_path: Path) -> None:
    source = tmp_path / "TransparentVAE.pth"
    sha = _pickle(source, {"decoder.x": torch.zeros(2)})
    wrong = "0" * 64
    with pytest.raises(ValueError) as caught:
        load_released_pickle(source, wrong, tmp_path / "out.safetensors")
    assert str(caught.value) == (
        f"TransparentVAE.pth: sha256 {sha} does not match the expected {wrong}; "
        "the file was not unpickled"
    )
    assert not (tmp_path / "out.safetensors").exists()


def test_a_conversion_of_another_source_is_not_trusted(tmp_path: Path) -> None:
    first = tmp_path / "a.pth"
    sha = _pickle(first, {"decoder.x": torch.zeros(2)})
    target = tmp_path / "out.safetensors"
    convert_pickle_to_safetensors(first, sha, target)
    with pytest.raises(ValueError, match=r"no conversion of the source with sha256 1{64}"):
        load_released_pickle(None, "1" * 64, target)


def test_a_pickle_naming_a_class_is_refused(tmp_path: Path) -> None:
    source = tmp_path / "evil.pth"
    sha = _pickle(source, {"decoder.x": torch.zeros(2), "decoder.y": NotATensor()})
    with pytest.raises(
        ValueError, match=r"^evil\.pth: refused, the pickle holds objects other than tensors"
    ):
        convert_pickle_to_safetensors(source, sha, tmp_path / "out.safetensors")
    assert not (tmp_path / "out.safetensors").exists()


def test_a_pickle_with_plain_non_tensor_values_is_refused(tmp_path: Path) -> None:
    source = tmp_path / "odd.pth"
    sha = _pickle(source, {"decoder.x": torch.zeros(2), "epoch": 3})
    with pytest.raises(ValueError) as caught:
        convert_pickle_to_safetensors(source, sha, tmp_path / "out.safetensors")
    assert str(caught.value) == "odd.pth: refused, entry 'epoch' is a int, not a tensor"
    listed = tmp_path / "list.pth"
    sha = _pickle(listed, [torch.zeros(2)])
    with pytest.raises(ValueError, match="expected a mapping of names to tensors, got list"):
        convert_pickle_to_safetensors(listed, sha, tmp_path / "out.safetensors")


# --- layerlora.safetensors on the real FLUX.1-dev transformer -------------------------------


def _meta_lora(shapes: dict[str, tuple[int, ...]]) -> dict[str, torch.Tensor]:
    return {
        key: torch.tensor(128.0)
        if not shape
        else torch.empty(shape, device="meta", dtype=torch.bfloat16)
        for key, shape in shapes.items()
    }


def test_the_assumed_release_layout_weighs_what_the_release_does(
    flux_dev_shapes: dict[str, tuple[int, ...]],
) -> None:
    """kohya keys on every block linear at rank 128, bf16: 1.2253 GB, listed as 1.23 GB."""
    keys = flux_lora_key_shapes(flux_dev_shapes, rank=128)
    assert len(keys) == 3 * (19 * 10 + 38 * 3) == 912
    alphas = 19 * 10 + 38 * 3
    parameters = lora_parameter_count(keys) - alphas
    assert parameters == 612_630_528
    assert 1.225e9 <= parameters * 2 + 2 * alphas + 120_000 < 1.235e9
    assert keys["lora_unet_double_blocks_0_img_attn_qkv.lora_up.weight"] == (9216, 128)
    assert keys["lora_unet_double_blocks_18_txt_mod_lin.lora_up.weight"] == (18432, 128)
    assert keys["lora_unet_single_blocks_37_linear1.lora_up.weight"] == (21504, 128)
    assert keys["lora_unet_single_blocks_37_linear2.lora_down.weight"] == (128, 15360)
    assert keys["lora_unet_single_blocks_0_modulation_lin.lora_up.weight"] == (9216, 128)


def test_kohya_keys_map_to_every_block_linear_of_the_real_transformer(
    flux_dev_shapes: dict[str, tuple[int, ...]],
) -> None:
    patches = parse_flux_lora(_meta_lora(flux_lora_key_shapes(flux_dev_shapes)), flux_dev_shapes)
    assert len(patches) == 19 * 14 + 38 * 6 == 494
    for name, patch in patches.items():
        out, inp = flux_dev_shapes[name]
        assert patch.up.shape == (out, 128) and patch.down.shape == (128, inp), name
        assert patch.scale == 1.0
    blocks = {
        name
        for name in flux_dev_shapes
        if name.startswith(("transformer_blocks.", "single_transformer_blocks."))
    }
    linears = {
        name
        for name in blocks
        if name.endswith(".weight") and len(flux_dev_shapes[name]) == 2 and "norm_" not in name
    }
    assert set(patches) == linears
    assert "single_transformer_blocks.5.proj_mlp.weight" in patches
    assert "transformer_blocks.3.attn.add_v_proj.weight" in patches


def test_diffusers_keys_parse_with_and_without_alpha(
    flux_dev_shapes: dict[str, tuple[int, ...]],
) -> None:
    state = {
        "transformer.transformer_blocks.0.attn.to_q.lora_A.weight": torch.empty(
            16, 3072, device="meta"
        ),
        "transformer.transformer_blocks.0.attn.to_q.lora_B.weight": torch.empty(
            3072, 16, device="meta"
        ),
        "transformer.single_transformer_blocks.2.proj_out.lora_A.weight": torch.empty(
            16, 15360, device="meta"
        ),
        "transformer.single_transformer_blocks.2.proj_out.lora_B.weight": torch.empty(
            3072, 16, device="meta"
        ),
        "transformer.single_transformer_blocks.2.proj_out.alpha": torch.tensor(8.0),
    }
    patches = parse_flux_lora(state, flux_dev_shapes)
    assert sorted(patches) == [
        "single_transformer_blocks.2.proj_out.weight",
        "transformer_blocks.0.attn.to_q.weight",
    ]
    assert patches["transformer_blocks.0.attn.to_q.weight"].scale == 1.0
    assert patches["single_transformer_blocks.2.proj_out.weight"].scale == 0.5


def test_unknown_missing_and_misshapen_lora_keys_are_named(
    flux_dev_shapes: dict[str, tuple[int, ...]],
) -> None:
    down, up = torch.empty(4, 3072, device="meta"), torch.empty(9216, 4, device="meta")
    base = "lora_unet_double_blocks_0_img_attn_qkv"
    cases = {
        "unknown key 'lora_te1_x.lora_down.weight'": {"lora_te1_x.lora_down.weight": down},
        "unknown LoRA module lora_unet_double_blocks_19_img_attn_qkv: "
        "not a FLUX transformer layer": {
            "lora_unet_double_blocks_19_img_attn_qkv.lora_down.weight": down,
            "lora_unet_double_blocks_19_img_attn_qkv.lora_up.weight": up,
        },
        f"LoRA module {base} has no lora_up.weight tensor": {f"{base}.lora_down.weight": down},
        f"unknown key '{base}.lora_mid.weight'": {f"{base}.lora_mid.weight": down},
        "LoRA module transformer.transformer_blocks.0.attn.to_qq: the transformer has no "
        "transformer_blocks.0.attn.to_qq.weight": {
            "transformer.transformer_blocks.0.attn.to_qq.lora_A.weight": down,
            "transformer.transformer_blocks.0.attn.to_qq.lora_B.weight": up,
        },
    }
    for message, state in cases.items():
        with pytest.raises(ValueError) as caught:
            parse_flux_lora(state, flux_dev_shapes)
        assert str(caught.value).startswith(message), str(caught.value)
    wrong = {
        f"{base}.lora_down.weight": down,
        f"{base}.lora_up.weight": torch.empty(3072, 4, device="meta"),
    }
    with pytest.raises(
        ValueError,
        match=r"up \(3072, 4\) and down \(4, 3072\) do not fit .*expected up \(9216, 4\)",
    ):
        parse_flux_lora(wrong, flux_dev_shapes)
    with pytest.raises(ValueError, match="the LoRA file is empty"):
        parse_flux_lora({}, flux_dev_shapes)


# --- merging ----------------------------------------------------------------------------------


def _tiny_transformer(dtype: torch.dtype) -> FluxTransformer2DModel:
    torch.manual_seed(0)
    return FluxTransformer2DModel(
        in_channels=64,
        num_layers=2,
        num_single_layers=2,
        attention_head_dim=8,
        num_attention_heads=2,
        joint_attention_dim=32,
        pooled_projection_dim=32,
        guidance_embeds=True,
        axes_dims_rope=(2, 2, 4),
    ).to(dtype)


def _random_lora(
    transformer: torch.nn.Module, rank: int = 4, alpha: float = 2.0
) -> dict[str, torch.Tensor]:
    shapes = {n: tuple(p.shape) for n, p in transformer.named_parameters()}
    generator = torch.Generator().manual_seed(1)
    return {
        key: torch.tensor(alpha) if not shape else torch.randn(shape, generator=generator)
        for key, shape in flux_lora_key_shapes(shapes, rank).items()
    }


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("originals_on", ["device", "cpu"])
def test_merge_is_forge_maths_and_detach_restores_bit_exactly(
    dtype: torch.dtype, originals_on: str
) -> None:
    transformer = _tiny_transformer(dtype)
    before = {n: p.detach().clone() for n, p in transformer.named_parameters()}
    originals = dict(transformer.named_parameters())
    state = _random_lora(transformer)
    shapes = {n: tuple(p.shape) for n, p in transformer.named_parameters()}
    handle = attach_flux_lora(
        transformer, parse_flux_lora(state, shapes), 0.75, originals_on=originals_on
    )

    merged = dict(transformer.named_parameters())
    # The k rows of the fused qkv: W_k + 0.75 · (2/4) · up[3072…] @ down, in float32.
    name = "transformer_blocks.1.attn.to_k.weight"
    up = state["lora_unet_double_blocks_1_img_attn_qkv.lora_up.weight"][16:32]
    down = state["lora_unet_double_blocks_1_img_attn_qkv.lora_down.weight"]
    expected = (before[name].float() + 0.375 * (up @ down)).to(dtype)
    assert torch.equal(merged[name], expected)
    # linear1's last rows are proj_mlp's
    up = state["lora_unet_single_blocks_0_linear1.lora_up.weight"][48:]
    down = state["lora_unet_single_blocks_0_linear1.lora_down.weight"]
    name = "single_transformer_blocks.0.proj_mlp.weight"
    assert torch.equal(merged[name], (before[name].float() + 0.375 * (up @ down)).to(dtype))
    assert len(handle.patched_names) == 2 * 14 + 2 * 6
    unpatched = "transformer_blocks.0.attn.norm_q.weight"
    assert merged[unpatched] is originals[unpatched]

    handle.set_active(False)
    assert all(torch.equal(p, before[n]) for n, p in transformer.named_parameters())
    handle.set_active(True)
    assert not torch.equal(dict(transformer.named_parameters())[name], before[name])
    handle.detach()
    for n, p in transformer.named_parameters():
        assert p is originals[n], n  # the very tensors, back in place
        assert torch.equal(p, before[n]) and p.device.type == "cpu"
    with pytest.raises(RuntimeError, match="the LoRA was detached"):
        handle.set_active(True)


def test_the_final_layers_shift_and_scale_halves_are_swapped() -> None:
    transformer = _tiny_transformer(torch.float32)
    shapes = {n: tuple(p.shape) for n, p in transformer.named_parameters()}
    up = torch.cat([torch.ones(16, 2), 2 * torch.ones(16, 2)])  # BFL order: shift, scale
    state = {
        "lora_unet_final_layer_adaLN_modulation_1.lora_up.weight": up,
        "lora_unet_final_layer_adaLN_modulation_1.lora_down.weight": torch.ones(2, 16),
    }
    patch = parse_flux_lora(state, shapes)["norm_out.linear.weight"]
    assert patch.up[:16].unique().tolist() == [2.0] and patch.up[16:].unique().tolist() == [1.0]


def test_the_demo_lora_changes_the_transformers_output(flux_demo: FluxModelSet) -> None:
    transformer = flux_demo.transformer
    torch.manual_seed(0)
    inputs = {
        "hidden_states": torch.randn(1, 16, 64),
        "encoder_hidden_states": torch.randn(1, 8, 32),
        "pooled_projections": torch.randn(1, 32),
        "timestep": torch.tensor([0.5]),
        "guidance": torch.tensor([3.5]),
        "img_ids": torch.zeros(16, 3),
        "txt_ids": torch.zeros(8, 3),
        "return_dict": False,
    }
    with torch.no_grad():
        merged = transformer(**inputs)[0]
        flux_demo.layer_lora.set_active(False)
        try:
            plain = transformer(**inputs)[0]
        finally:
            flux_demo.layer_lora.set_active(True)
        again = transformer(**inputs)[0]
    assert torch.equal(merged, again)
    assert not math.isclose((merged - plain).abs().max().item(), 0.0, abs_tol=1e-4)
