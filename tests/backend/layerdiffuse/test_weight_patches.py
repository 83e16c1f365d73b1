"""SDXL layer files merged into a UNet: the released key sets, Forge's maths, exact restore."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable

import pytest
import torch
from diffusers import UNet2DConditionModel

from backend.layerdiffuse import (
    RELEASED_SDXL_FILES,
    ConcatConvIn,
    SDXLLayerKind,
    attach_sdxl_layer_model,
    ldm_name_table,
    read_unet_layout,
    released_key_shapes,
    weight_patches,
)
from backend.store.configs import config_path

# name: (tensor set, conv_in input channels, tensors, parameters, HF size) — §1.1's facts
RELEASED = {
    "layer_xl_transparent_attn": ("lora", 4, 1120, 371_589_120, "743 MB"),
    "layer_xl_transparent_conv": ("not-qkv", 4, 1252, 1_809_780_484, "3.62 GB"),
    "layer_xl_fg2ble": ("resblocks", 8, 206, 350_941_760 + 24_004 + 11_520, "702 MB"),
    "layer_xl_bg2ble": ("resblocks", 8, 206, 350_941_760 + 24_004 + 11_520, "702 MB"),
    "layer_xl_fgble2bg": ("resblocks", 12, 206, 350_941_760 + 24_004 + 23_040, "702 MB"),
    "layer_xl_bgble2fg": ("not-qkv", 12, 1252, 1_809_780_484 + 23_040, "3.62 GB"),
}
KINDS = {"lora": SDXLLayerKind.LORA, "not-qkv": SDXLLayerKind.DIFF}

Make = Callable[[tuple[int, ...]], torch.Tensor]


def released_state(unet: UNet2DConditionModel, name: str, make: Make, rank: int = 256):
    """A state dict with exactly the key set and shapes of a released file, for `unet`."""
    assert RELEASED_SDXL_FILES[name] == RELEASED[name][:2]
    shapes = {key: tuple(value.shape) for key, value in unet.state_dict().items()}
    keys = released_key_shapes(shapes, read_unet_layout(unet.config), name, rank)
    return {key: make(shape) for key, shape in keys.items()}


def on_meta(shape: tuple[int, ...]) -> torch.Tensor:
    return torch.empty(shape, device="meta", dtype=torch.float16)


@pytest.fixture(scope="module")
def real_sdxl_unet() -> UNet2DConditionModel:
    config = json.loads(config_path("sdxl", "unet").read_text())
    with torch.device("meta"):
        return UNet2DConditionModel.from_config(config)


@pytest.mark.parametrize("name", sorted(RELEASED))
def test_released_key_sets_attach_to_the_real_sdxl_unet(
    real_sdxl_unet: UNet2DConditionModel, name: str
) -> None:
    which, channels, tensors, parameters, size = RELEASED[name]
    state = released_state(real_sdxl_unet, name, on_meta)
    assert len(state) == tensors
    assert sum(t.numel() for t in state.values()) == parameters
    gigabytes, megabytes = 2 * parameters / 1e9, 2 * parameters / 1e6  # fp16
    assert (f"{gigabytes:.2f} GB" if gigabytes >= 1 else f"{megabytes:.0f} MB") == size

    before = dict(real_sdxl_unet.named_parameters())
    conv_in = real_sdxl_unet.conv_in
    handle = attach_sdxl_layer_model(real_sdxl_unet, state)
    conditional = channels > 4
    assert handle.kind == (SDXLLayerKind.CONDITIONAL if conditional else KINDS[which])
    assert handle.condition_channels == channels - 4
    assert len(handle.patched_names) == (tensors // 2 if which == "lora" else tensors)
    after = dict(real_sdxl_unet.named_parameters())
    for key, parameter in after.items():
        expected = (320, channels, 3, 3) if key == "conv_in.weight" else before[key].shape
        assert parameter.shape == expected and parameter.dtype == before[key].dtype
    assert real_sdxl_unet.config.in_channels == 4
    handle.detach()
    assert real_sdxl_unet.conv_in is conv_in
    assert all(p is before[key] for key, p in real_sdxl_unet.named_parameters())


TEXT, TIME_IDS = 16, 6


def tiny_sdxl_unet(dtype: torch.dtype = torch.float32) -> UNet2DConditionModel:
    """The SDXL block layout at a tiny width (transformer depths 1, 2, 2)."""
    torch.manual_seed(0)
    unet = UNet2DConditionModel(
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
        projection_class_embeddings_input_dim=TEXT + TIME_IDS * 8,
    )
    return unet.to(dtype).eval()


def random_tensors(seed: int = 1) -> Make:
    generator = torch.Generator().manual_seed(seed)
    return lambda shape: (0.05 * torch.randn(shape, generator=generator)).half()


def run(unet: UNet2DConditionModel, sample: torch.Tensor) -> torch.Tensor:
    torch.manual_seed(3)
    rows = sample.shape[0]
    added = {"text_embeds": torch.randn(rows, TEXT), "time_ids": torch.randn(rows, TIME_IDS)}
    with torch.no_grad():
        return unet(sample, 500, torch.randn(rows, 7, 24), added_cond_kwargs=added).sample


def merged_by_hand(unet: UNet2DConditionModel, state: dict, weight: float) -> dict:
    """{diffusers name: W + weight·patch}, Forge's §3.2 written out, in float32."""
    table = ldm_name_table(unet.state_dict(), read_unet_layout(unet.config))
    params = unet.state_dict()
    merged = {}
    for key in state:
        ldm, kind, index = key.removeprefix("diffusion_model.").split("::")
        name, w = table[ldm], params[table[ldm]].float()
        if kind == "lora" and index == "0":
            up, down = state[key].float(), state[key.replace("::lora::0", "::lora::1")].float()
            merged[name] = w + weight * (up @ down)
        elif kind == "diff":
            delta = state[key].float()
            if delta.shape != w.shape:  # conv_in: zeros holding W in the leading channels
                w = torch.cat([w, torch.zeros_like(delta[:, w.shape[1] :])], dim=1)
            merged[name] = w + weight * delta
    return merged


@pytest.mark.parametrize("name", ["layer_xl_transparent_attn", "layer_xl_transparent_conv"])
@pytest.mark.parametrize("weight", [0.0, 0.5, 1.0])
def test_merge_is_w_plus_weight_times_the_patch(name: str, weight: float) -> None:
    unet = tiny_sdxl_unet()
    state = released_state(unet, name, random_tensors(), rank=4)
    expected = merged_by_hand(unet, state, weight)
    untouched = {k: p for k, p in unet.named_parameters() if k not in expected}
    handle = attach_sdxl_layer_model(unet, state, weight)
    assert set(handle.patched_names) == set(expected)
    assert len(untouched) > 0
    for key, parameter in unet.named_parameters():
        if key in expected:
            torch.testing.assert_close(parameter, expected[key])
        else:
            assert parameter is untouched[key]
    handle.detach()


def test_conv_in_is_widened_with_forges_rule() -> None:
    unet = tiny_sdxl_unet()
    conv_in = unet.conv_in
    state = released_state(unet, "layer_xl_fgble2bg", random_tensors(), rank=4)
    delta = state["diffusion_model.input_blocks.0.0.weight::diff::0"].float()
    handle = attach_sdxl_layer_model(unet, state, 0.5)
    assert isinstance(unet.conv_in, ConcatConvIn) and unet.conv_in.in_channels == 12
    torch.testing.assert_close(unet.conv_in.weight[:, :4], conv_in.weight + 0.5 * delta[:, :4])
    torch.testing.assert_close(unet.conv_in.weight[:, 4:], 0.5 * delta[:, 4:])
    bias = state["diffusion_model.input_blocks.0.0.bias::diff::0"].float()
    torch.testing.assert_close(unet.conv_in.bias, conv_in.bias + 0.5 * bias)
    assert unet.config.in_channels == 4
    handle.detach()


@pytest.mark.parametrize("name", ["layer_xl_fg2ble", "layer_xl_bgble2fg"])
@pytest.mark.parametrize(("condition_batch", "weight"), [(1, 1.0), (2, 0.5), (4, 1.0)])
def test_conditional_unet_computes_the_merged_unet_on_the_concatenation(
    name: str, condition_batch: int, weight: float
) -> None:
    """The reference: a copy with merged weights and a plain widened conv_in, on cat([x, c])."""
    unet = tiny_sdxl_unet()
    state = released_state(unet, name, random_tensors(), rank=4)
    channels = RELEASED[name][1] - 4
    torch.manual_seed(2)
    sample = torch.randn(4, 4, 16, 16)  # e.g. two results, CFG halves [uncond, cond]
    condition = torch.randn(condition_batch, channels, 16, 16)

    reference = copy.deepcopy(unet)
    merged = merged_by_hand(reference, state, weight)
    conv = torch.nn.Conv2d(4 + channels, 16, kernel_size=3, padding=1)
    conv.weight.data, conv.bias.data = merged.pop("conv_in.weight"), merged.pop("conv_in.bias")
    reference.load_state_dict(merged, strict=False)
    reference.conv_in = conv
    rows = condition.repeat(4 // condition_batch, 1, 1, 1)
    expected = run(reference, torch.cat([sample, rows], dim=1))

    keys = set(unet.state_dict())
    handle = attach_sdxl_layer_model(unet, state, weight)
    handle.set_condition(condition)
    assert set(unet.state_dict()) == keys  # conv_in is wider, its keys are the same
    torch.testing.assert_close(run(unet, sample), expected, atol=1e-5, rtol=1e-5)
    handle.detach()


@pytest.mark.parametrize("originals_on", ["device", "cpu"])
@pytest.mark.parametrize(
    "name", ["layer_xl_transparent_attn", "layer_xl_transparent_conv", "layer_xl_fg2ble"]
)
def test_stop_at_and_detach_restore_the_unet_exactly(name: str, originals_on: str) -> None:
    unet = tiny_sdxl_unet()
    state = released_state(unet, name, random_tensors(), rank=4)
    before = {key: value.clone() for key, value in unet.state_dict().items()}
    parameters, conv_in = dict(unet.named_parameters()), unet.conv_in
    sample = torch.randn(2, 4, 16, 16)
    plain = run(unet, sample)

    handle = attach_sdxl_layer_model(unet, state, originals_on=originals_on)  # type: ignore[arg-type]
    if handle.kind == SDXLLayerKind.CONDITIONAL:
        handle.set_condition(torch.randn(1, 4, 16, 16))
    patched = run(unet, sample)
    assert not torch.allclose(patched, plain)
    handle.set_active(False)
    assert not handle.active and unet.conv_in is conv_in
    assert torch.equal(run(unet, sample), plain)
    handle.set_active(True)
    assert torch.equal(run(unet, sample), patched)
    handle.detach()
    handle.detach()  # twice is harmless

    assert torch.equal(run(unet, sample), plain)
    assert unet.conv_in is conv_in and unet.config.in_channels == 4
    assert all(p is parameters[key] for key, p in unet.named_parameters())
    after = unet.state_dict()
    assert after.keys() == before.keys()
    assert all(torch.equal(after[key], value) for key, value in before.items())
    with pytest.raises(RuntimeError, match="the layer model was detached"):
        handle.set_active(True)


def test_restore_is_bit_exact_in_float16_where_subtracting_is_not() -> None:
    unet = tiny_sdxl_unet(torch.float16)
    state = released_state(unet, "layer_xl_transparent_conv", random_tensors(), rank=4)
    before = {key: value.clone() for key, value in unet.state_dict().items()}
    handle = attach_sdxl_layer_model(unet, state, 1.0)
    weight = unet.conv_out.weight
    delta = state["diffusion_model.out.2.weight::diff::0"]
    assert not torch.equal((weight.float() - delta.float()).half(), before["conv_out.weight"])
    handle.set_active(False)
    handle.set_active(True)
    handle.detach()
    after = unet.state_dict()
    assert all(torch.equal(after[key], value) for key, value in before.items())


def test_condition_errors_are_explicit() -> None:
    unet = tiny_sdxl_unet()
    handle = attach_sdxl_layer_model(
        unet, released_state(unet, "layer_xl_fgble2bg", random_tensors(), rank=4)
    )
    with pytest.raises(ValueError, match="needs condition latents: call set_condition"):
        run(unet, torch.randn(2, 4, 16, 16))
    with pytest.raises(ValueError, match=r"shape \(1, 4, 16, 16\): .* takes \(B, 8, h, w\)"):
        handle.set_condition(torch.randn(1, 4, 16, 16))
    handle.set_condition(torch.randn(2, 8, 16, 16))
    with pytest.raises(
        ValueError, match="sample batch 3 is not a multiple of the condition batch 2"
    ):
        run(unet, torch.randn(3, 4, 16, 16))
    with pytest.raises(ValueError, match=r"size \(16, 16\) do not match the sample's \(8, 8\)"):
        run(unet, torch.randn(2, 4, 8, 8))
    with pytest.raises(ValueError, match="sample has 12 channels, expected 4"):
        run(unet, torch.randn(2, 12, 16, 16))
    handle.detach()
    lora = attach_sdxl_layer_model(
        unet, released_state(unet, "layer_xl_transparent_attn", random_tensors(), rank=4)
    )
    with pytest.raises(ValueError, match="takes no condition: it is a lora file"):
        lora.set_condition(torch.randn(1, 4, 16, 16))
    lora.detach()


def file_with(unet: UNet2DConditionModel, key: str, tensor: torch.Tensor) -> dict:
    state = released_state(unet, "layer_xl_fg2ble", random_tensors(), rank=4)
    state[f"diffusion_model.{key}"] = tensor
    return state


@pytest.mark.parametrize(
    ("key", "shape", "message"),
    [
        ("input_blocks.9.0.op.weight::diff::0", (3,), r"name no parameter .*input_blocks\.9\.0"),
        (
            "out.2.weight::diff::0",
            (4, 16, 3, 3, 1),
            r"conv_out\.weight: diff of shape \(4, 16, 3, 3, 1\) does not fit .* \(4, 16, 3, 3\)",
        ),
        (
            "out.2.weight::diff::0",
            (4, 20, 3, 3),
            r"conv_out\.weight: diff of shape \(4, 20, 3, 3\) does not fit",
        ),
        (
            "input_blocks.0.0.weight::diff::0",
            (16, 8, 1, 1),
            r"conv_in\.weight: diff of shape \(16, 8, 1, 1\) does not fit",
        ),
        (
            "input_blocks.4.1.transformer_blocks.0.attn1.to_q.weight::lora::0",
            (32, 3),
            r"to_q\.weight: lora up \(32, 3\) @ down \(4, 32\) does not fit the parameter's",
        ),
    ],
)
def test_files_that_do_not_fit_are_refused_and_leave_the_unet_alone(
    key: str, shape: tuple[int, ...], message: str
) -> None:
    unet = tiny_sdxl_unet()
    parameters, conv_in = dict(unet.named_parameters()), unet.conv_in
    state = file_with(unet, key, torch.zeros(shape))
    if "::lora::0" in key:
        state[f"diffusion_model.{key.replace('::lora::0', '::lora::1')}"] = torch.zeros(4, 32)
    with pytest.raises(ValueError, match=message):
        attach_sdxl_layer_model(unet, state)
    assert unet.conv_in is conv_in
    assert all(p is parameters[k] for k, p in unet.named_parameters())


def test_bad_arguments_are_refused() -> None:
    unet = tiny_sdxl_unet()
    with pytest.raises(ValueError, match="state dict is empty"):
        attach_sdxl_layer_model(unet, {})
    with pytest.raises(ValueError, match="originals_on 'gpu' is not 'device' or 'cpu'"):
        attach_sdxl_layer_model(unet, {"x": torch.zeros(1)}, originals_on="gpu")  # type: ignore[arg-type]


@pytest.mark.parametrize("originals_on", ["device", "cpu"])
def test_a_failure_while_merging_puts_back_what_was_installed(
    monkeypatch: pytest.MonkeyPatch, originals_on: str
) -> None:
    unet = tiny_sdxl_unet()
    before = {key: value.clone() for key, value in unet.state_dict().items()}
    parameters, conv_in = dict(unet.named_parameters()), unet.conv_in
    merge, calls = weight_patches.merged_tensor, []

    def failing_merge(*args):
        calls.append(1)
        if len(calls) == 40:
            raise torch.OutOfMemoryError("out of memory")
        return merge(*args)

    monkeypatch.setattr(weight_patches, "merged_tensor", failing_merge)
    state = released_state(unet, "layer_xl_fg2ble", random_tensors(), rank=4)
    with pytest.raises(torch.OutOfMemoryError):
        attach_sdxl_layer_model(unet, state, originals_on=originals_on)  # type: ignore[arg-type]
    assert len(calls) == 40 and unet.conv_in is conv_in
    assert all(p is parameters[key] for key, p in unet.named_parameters())
    after = unet.state_dict()
    assert all(torch.equal(after[key], value) for key, value in before.items())


def test_one_conditional_model_at_a_time() -> None:
    unet = tiny_sdxl_unet()
    state = released_state(unet, "layer_xl_fg2ble", random_tensors(), rank=4)
    handle = attach_sdxl_layer_model(unet, state)
    with pytest.raises(ValueError, match="already has a conditional layer model: detach it first"):
        attach_sdxl_layer_model(unet, state)
    handle.detach()
    attach_sdxl_layer_model(unet, state).detach()
