"""LoRA files read in each format they ship in, merged exactly, and taken out bit-exact."""

from __future__ import annotations

import pytest
import torch
from diffusers import UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel

from backend.layerdiffuse import diffusers_to_ldm_name, read_unet_layout
from backend.loras import attach_lora, read_lora
from backend.store.demo_loras import FEW_STEP_TARGETS, few_step_lora_state_dict

SD15_LIKE = {
    "sample_size": 8,
    "block_out_channels": (8, 16),
    "layers_per_block": 1,
    "down_block_types": ("CrossAttnDownBlock2D", "DownBlock2D"),
    "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D"),
    "cross_attention_dim": 16,
    "attention_head_dim": 1,
    "norm_num_groups": 4,
}


@pytest.fixture(scope="module")
def unet() -> UNet2DConditionModel:
    torch.manual_seed(0)
    return UNet2DConditionModel(**SD15_LIKE).eval()


@pytest.fixture(scope="module")
def text_encoder() -> CLIPTextModel:
    torch.manual_seed(1)
    config = CLIPTextConfig(
        vocab_size=100,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        max_position_embeddings=8,
    )
    return CLIPTextModel(config).eval()


def snapshot(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: value.detach().clone() for name, value in model.state_dict().items()}


def test_the_few_step_layout_covers_the_fourteen_module_types(unet) -> None:
    """Every target module type of the released files is patched, nothing else."""
    patches = read_lora(few_step_lora_state_dict(unet, seed=1), {"unet": unet})
    names = set(patches["unet"])
    kinds = {target for target in FEW_STEP_TARGETS for name in names if f".{target}." in name}
    # the small UNet has no conv_shortcut-free block missing: all types but none absent
    assert kinds == set(FEW_STEP_TARGETS)
    assert not any(name.startswith(("conv_in", "conv_out", "time_embedding")) for name in names)


def test_alpha_over_rank_scales_the_patch(unet) -> None:
    """DMD2's alpha 8 at rank 64 is a delta of 1/8 of up @ down (kohya's rule)."""
    name = "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"
    key = "lora_unet_" + name.replace(".", "_")
    down, up = torch.randn(4, 8), torch.randn(8, 4)
    with_alpha = {f"{key}.lora_down.weight": down, f"{key}.lora_up.weight": up}
    plain = read_lora(with_alpha, {"unet": unet})["unet"][f"{name}.weight"]
    with_alpha[f"{key}.alpha"] = torch.tensor(1.0)
    scaled = read_lora(with_alpha, {"unet": unet})["unet"][f"{name}.weight"]
    torch.testing.assert_close(scaled.up, plain.up / 4)
    torch.testing.assert_close(plain.up @ plain.down, up @ down)


def test_kohya_ldm_and_diffusers_names_give_the_same_patches(unet) -> None:
    """One LoRA written three ways: kohya in diffusers names, kohya in ldm names, and
    diffusers/peft (`unet.<module>.lora_A/B`)."""
    kohya = few_step_lora_state_dict(unet, seed=2)
    layout = read_unet_layout(unet.config)
    ldm, peft = {}, {}
    modules = {n.replace(".", "_"): n for n, _ in unet.named_modules() if n}
    for key, tensor in kohya.items():
        stem, _, suffix = key.partition(".")
        module = modules[stem.removeprefix("lora_unet_")]
        ldm_module = diffusers_to_ldm_name(f"{module}.weight", layout).removesuffix(".weight")
        ldm[f"lora_unet_{ldm_module.replace('.', '_')}.{suffix}"] = tensor
        peft_suffix = {"lora_down.weight": "lora_A.weight", "lora_up.weight": "lora_B.weight"}
        peft[f"unet.{module}.{peft_suffix.get(suffix, suffix)}"] = tensor
    expected = read_lora(kohya, {"unet": unet})["unet"]
    for variant in (ldm, peft):
        found = read_lora(variant, {"unet": unet})["unet"]
        assert found.keys() == expected.keys()
        for name, patch in found.items():
            assert torch.equal(patch.up, expected[name].up) and torch.equal(
                patch.down, expected[name].down
            )


def test_old_attention_processor_keys_are_read(unet) -> None:
    module = "down_blocks.0.attentions.0.transformer_blocks.0.attn2"
    state = {
        f"unet.{module}.processor.to_out_lora.down.weight": torch.randn(2, 8),
        f"unet.{module}.processor.to_out_lora.up.weight": torch.randn(8, 2),
    }
    assert list(read_lora(state, {"unet": unet})["unet"]) == [f"{module}.to_out.0.weight"]


def test_text_encoder_keys_patch_the_text_encoder(unet, text_encoder) -> None:
    key = "lora_te_text_model_encoder_layers_0_self_attn_q_proj"
    state = {
        f"{key}.lora_down.weight": torch.randn(2, 16),
        f"{key}.lora_up.weight": torch.randn(16, 2),
    }
    patches = read_lora(state, {"unet": unet, "text_encoder": text_encoder})
    assert list(patches) == ["text_encoder"]
    # the model's own name: transformers 5 dropped CLIP's `text_model.` prefix
    own = [n for n, _ in text_encoder.named_parameters() if n.endswith("0.self_attn.q_proj.weight")]
    assert list(patches["text_encoder"]) == own


@pytest.mark.parametrize(
    ("state", "message"),
    [
        ({}, "^the LoRA file holds no tensors$"),
        (
            {"lora_unet_mid_block_x_to_q.lora_down.weight": torch.zeros(2, 8)},
            r"^1 keys name no module of this model \(lora_unet_mid_block_x_to_q.lora_down.weight\)"
            r": a LoRA for another model family\?$",
        ),
        (
            {"lora_unet_conv_in.hada_w1_a": torch.zeros(2, 2)},
            "LoHa is not supported",
        ),
        (
            {"lora_unet_conv_in.lora_down.weight": torch.zeros(2, 4, 3, 3)},
            "^unet conv_in: the LoRA pair lacks its up tensor$",
        ),
    ],
)
def test_a_file_that_cannot_apply_is_refused_by_name(unet, state, message) -> None:
    with pytest.raises(ValueError, match=message):
        read_lora(state, {"unet": unet})


def test_a_shape_that_does_not_fit_changes_nothing(unet) -> None:
    """An SDXL-width LoRA on this UNet: refused before any parameter changes."""
    before = snapshot(unet)
    good = few_step_lora_state_dict(unet, seed=3)
    key = next(k for k in good if k.endswith("to_k.lora_down.weight"))
    good[key] = torch.zeros(good[key].shape[0], 99)
    with pytest.raises(ValueError, match=r"to_k.weight: lora up .* does not fit"):
        attach_lora({"unet": unet}, good)
    after = snapshot(unet)
    assert all(torch.equal(before[name], after[name]) for name in before)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("originals_on", ["cpu", "device"])
def test_merge_is_w_plus_weight_up_down_and_detach_is_bit_exact(dtype, originals_on) -> None:
    torch.manual_seed(0)
    unet = UNet2DConditionModel(**SD15_LIKE).to(dtype).eval()
    before = snapshot(unet)
    state = few_step_lora_state_dict(unet, seed=4)
    patches = read_lora(state, {"unet": unet})["unet"]
    handle = attach_lora({"unet": unet}, state, weight=0.7, originals_on=originals_on)
    assert handle.patched == {"unet": len(patches)}
    merged = dict(unet.named_parameters())
    for name, patch in patches.items():
        original = before[name].float()
        delta = (patch.up.flatten(1) @ patch.down.flatten(1)).reshape(original.shape)
        expected = (original + 0.7 * delta).to(dtype)
        assert torch.equal(merged[name].detach(), expected), name
    untouched = next(n for n in before if n not in patches)
    assert torch.equal(merged[untouched].detach(), before[untouched])
    handle.detach()
    handle.detach()  # idempotent
    after = snapshot(unet)
    assert all(torch.equal(before[name], after[name]) for name in before)
    assert not handle.attached
