"""SD1.5 attention sharing: the released key format, and the reference's computation."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from diffusers import UNet2DConditionModel

import backend.store
from backend.layerdiffuse import (
    SD15_ATTENTION_UNITS,
    LayerModelLayout,
    attach_sd15_layer_model,
    build_sd15_layer_model,
    read_layout,
)

SD15_UNET_CONFIG = Path(backend.store.__file__).parent / "configs" / "sd15" / "unet" / "config.json"

# The reference's unit order (module_mapping_sd15) in ldm names, and the documented
# ldm → diffusers correspondence of SD1.5's 16 transformers (layerdiffuse.md §5.1).
LDM_ORDER = (
    [f"input_blocks.{i}.1" for i in (1, 2, 4, 5, 7, 8)]
    + [f"output_blocks.{i}.1" for i in range(3, 12)]
    + ["middle_block.1"]
)
LDM_TO_DIFFUSERS = {
    "input_blocks.1.1": "down_blocks.0.attentions.0",
    "input_blocks.2.1": "down_blocks.0.attentions.1",
    "input_blocks.4.1": "down_blocks.1.attentions.0",
    "input_blocks.5.1": "down_blocks.1.attentions.1",
    "input_blocks.7.1": "down_blocks.2.attentions.0",
    "input_blocks.8.1": "down_blocks.2.attentions.1",
    **{f"output_blocks.{3 + i}.1": f"up_blocks.{1 + i // 3}.attentions.{i % 3}" for i in range(9)},
    "middle_block.1": "mid_block.attentions.0",
}


def test_unit_order_follows_the_reference() -> None:
    expected = [
        f"{LDM_TO_DIFFUSERS[ldm]}.transformer_blocks.0.{attn}"
        for ldm in LDM_ORDER
        for attn in ("attn1", "attn2")
    ]
    assert list(SD15_ATTENTION_UNITS) == expected


# Released files (layerdiffuse.md §1.1): tensors and parameters; × 2 bytes = their sizes.
RELEASED_LAYOUTS = {
    "layer_sd15_transparent_attn": (LayerModelLayout(1, 256, False), 640, 175_098_496),
    "layer_sd15_joint": (LayerModelLayout(3, 256, False), 1152, 277_138_048),
    "layer_sd15_fg2bg": (LayerModelLayout(2, 256, True), 1180, 281_425_568),
    "layer_sd15_bg2fg": (LayerModelLayout(2, 256, True), 1180, 281_425_568),
}


@pytest.fixture(scope="module")
def real_sd15_unet() -> UNet2DConditionModel:
    config = json.loads(SD15_UNET_CONFIG.read_text())
    with torch.device("meta"):
        return UNet2DConditionModel.from_config(config)


@pytest.mark.parametrize("name", sorted(RELEASED_LAYOUTS))
def test_released_files_load_strictly_on_the_real_sd15_unet(
    real_sd15_unet: UNet2DConditionModel, name: str
) -> None:
    layout, tensors, parameters = RELEASED_LAYOUTS[name]
    with torch.device("meta"):
        model = build_sd15_layer_model(real_sd15_unet, layout)
    state = model.state_dict()
    assert len(state) == tensors
    assert sum(t.numel() for t in state.values()) == parameters
    assert state["hookers.layers.1.to_k_lora.0.down.weight"].shape == (256, 768)  # attn2 k: text
    assert state["hookers.layers.0.to_k_lora.0.down.weight"].shape == (256, 320)
    assert state["hookers.layers.30.temporal_q.weight"].shape == (1280, 1280)
    assert read_layout(state) == layout
    # A file with exactly these keys and shapes attaches (strict) to the real UNet.
    handle = attach_sd15_layer_model(real_sd15_unet, state)
    assert handle.frames == layout.frames
    handle.detach()


def tiny_sd15_unet() -> UNet2DConditionModel:
    torch.manual_seed(0)
    return UNet2DConditionModel(
        sample_size=8,
        block_out_channels=(16, 16, 32, 32),
        layers_per_block=2,
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        cross_attention_dim=24,
        attention_head_dim=8,
        norm_num_groups=8,
    ).eval()


def random_layer_state(
    unet: UNet2DConditionModel, layout: LayerModelLayout
) -> dict[str, torch.Tensor]:
    torch.manual_seed(1)
    model = build_sd15_layer_model(unet, layout)
    for parameter in model.parameters():
        torch.nn.init.normal_(parameter, std=0.1)
    return model.state_dict()


class ReferenceUnit:
    """layerdiffuse.md §5.2 computed literally: per frame, per call, no fusing."""

    def __init__(self, state: dict[str, torch.Tensor], index: int, attention, frames: int, control):
        self.get = lambda name: state[f"hookers.layers.{index}.{name}"]
        self.attention, self.frames, self.control = attention, frames, control

    def lora(self, which: str, frame: int, x: torch.Tensor, original) -> torch.Tensor:
        weight = original.weight + self.get(f"{which}_lora.{frame}.up.weight") @ self.get(
            f"{which}_lora.{frame}.down.weight"
        )
        return F.linear(x, weight, original.bias)

    def linear(self, name: str, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.get(f"{name}.weight"), self.get(f"{name}.bias"))

    @staticmethod
    def mha(q, k, v, heads):
        n, lq, c = q.shape
        d = c // heads
        split = lambda t: t.reshape(n, -1, heads, d).permute(0, 2, 1, 3)  # noqa: E731
        weights = torch.softmax(split(q) @ split(k).transpose(-1, -2) / math.sqrt(d), dim=-1)
        return (weights @ split(v)).permute(0, 2, 1, 3).reshape(n, lq, c)

    def __call__(
        self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None
    ):
        h, frames = hidden_states, self.frames
        rows, tokens, channels = h.shape
        mh = [h[f::frames] for f in range(frames)]  # '(b f) d c -> f b d c'
        if self.control is not None:
            signal = self.control[tokens]
            for f in range(frames):
                x = F.conv2d(
                    signal,
                    self.get(f"control_convs.{f}.0.weight"),
                    self.get(f"control_convs.{f}.0.bias"),
                    padding=1,
                )
                x = F.conv2d(
                    F.silu(x),
                    self.get(f"control_convs.{f}.2.weight"),
                    self.get(f"control_convs.{f}.2.bias"),
                )
                mh[f] = mh[f] + x.flatten(2).transpose(1, 2)
        context = (
            mh
            if encoder_hidden_states is None
            else [encoder_hidden_states[f::frames] for f in range(frames)]
        )
        outs = []
        for f in range(frames):
            q = self.lora("to_q", f, mh[f], attn.to_q)
            k = self.lora("to_k", f, context[f], attn.to_k)
            v = self.lora("to_v", f, context[f], attn.to_v)
            outs.append(self.lora("to_out", f, self.mha(q, k, v, attn.heads), attn.to_out[0]))
        mh = [mh[f] + outs[f] for f in range(frames)]
        merged = torch.stack(mh, dim=1).reshape(rows, tokens, channels)  # 'f b d c -> (b f) d c'
        x = F.layer_norm(
            merged, (channels,), self.get("temporal_n.weight"), self.get("temporal_n.bias"), 1e-6
        )
        x = self.linear("temporal_i", x)
        x = (
            x.reshape(-1, frames, tokens, channels)
            .permute(0, 2, 1, 3)
            .reshape(-1, frames, channels)
        )
        x = self.mha(
            self.linear("temporal_q", x),
            self.linear("temporal_k", x),
            self.linear("temporal_v", x),
            attn.heads,
        )
        x = self.linear("temporal_o", x)
        x = (
            x.reshape(-1, tokens, frames, channels)
            .permute(0, 2, 1, 3)
            .reshape(rows, tokens, channels)
        )
        return merged + x - h


def reference_control(
    state: dict[str, torch.Tensor], image: torch.Tensor
) -> dict[int, torch.Tensor]:
    x = image * 2 - 1
    features = {}
    blocks = [("blocks_0", [1, 1, 2, 1, 2, 1, 2, 1])] + [(f"blocks_{i}", [2, 1]) for i in (1, 2, 3)]
    for name, strides in blocks:
        for conv, stride in enumerate(strides):
            prefix = f"kwargs_encoder.{name}.{2 * conv}"
            x = F.silu(
                F.conv2d(
                    x, state[f"{prefix}.weight"], state[f"{prefix}.bias"], stride=stride, padding=1
                )
            )
        features[x.shape[2] * x.shape[3]] = x
    return features


@pytest.mark.parametrize(
    "layout",
    [
        LayerModelLayout(1, 4, False),
        LayerModelLayout(3, 4, False),
        LayerModelLayout(2, 4, True, (8, 8, 16, 16)),
    ],
    ids=["transparent", "joint", "with-control"],
)
def test_attached_unet_computes_what_the_reference_computes(layout: LayerModelLayout) -> None:
    unet = tiny_sd15_unet()
    state = random_layer_state(unet, layout)
    torch.manual_seed(2)
    rows = 2 * layout.frames * 2  # two results, CFG halves
    sample = torch.randn(rows, 4, 16, 16)
    context = torch.randn(rows, 7, 24)  # a different prompt per row, as per-layer prompts are
    control_image = torch.rand(1, 3, 128, 128)

    control = reference_control(state, control_image) if layout.uses_control else None
    original = dict(unet.attn_processors)
    reference = {
        f"{path}.processor": ReferenceUnit(
            state, i, unet.get_submodule(path), layout.frames, control
        )
        for i, path in enumerate(SD15_ATTENTION_UNITS)
    }
    with torch.no_grad():
        unet.set_attn_processor({**original, **reference})
        expected = unet(sample, 400, context).sample
        unet.set_attn_processor(original)
        handle = attach_sd15_layer_model(unet, state)
        if layout.uses_control:
            handle.set_control(control_image)
        actual = unet(sample, 400, context).sample
        handle.detach()
    torch.testing.assert_close(actual, expected, atol=2e-5, rtol=2e-5)


def test_detach_and_stop_at_restore_the_unet_exactly() -> None:
    unet = tiny_sd15_unet()
    state = random_layer_state(unet, LayerModelLayout(1, 4, False))
    before_state = {key: value.clone() for key, value in unet.state_dict().items()}
    before_processors = dict(unet.attn_processors)
    sample, context = torch.randn(2, 4, 16, 16), torch.randn(2, 7, 24)
    with torch.no_grad():
        plain = unet(sample, 10, context).sample
        handle = attach_sd15_layer_model(unet, state)
        patched = unet(sample, 10, context).sample
        handle.set_active(False)
        assert torch.equal(unet(sample, 10, context).sample, plain)
        handle.set_active(True)
        assert torch.equal(unet(sample, 10, context).sample, patched)
        handle.detach()
        after = unet(sample, 10, context).sample
    assert not torch.allclose(plain, patched)
    assert torch.equal(after, plain)
    assert unet.attn_processors == before_processors
    assert unet.state_dict().keys() == before_state.keys()
    assert all(torch.equal(unet.state_dict()[k], v) for k, v in before_state.items())


def test_one_layer_model_at_a_time_and_a_switched_off_one_comes_back_exactly() -> None:
    """Handles kept between jobs: only one may be on; switching back on gives the same
    output; a detached one cannot come back."""
    unet = tiny_sd15_unet()
    own = dict(unet.attn_processors)
    first = attach_sd15_layer_model(unet, random_layer_state(unet, LayerModelLayout(1, 4, False)))
    sample, context = torch.randn(2, 4, 16, 16), torch.randn(2, 7, 24)
    with torch.no_grad():
        patched = unet(sample, 10, context).sample
        second_state = random_layer_state(unet, LayerModelLayout(2, 4, False))
        with pytest.raises(RuntimeError, match="another layer model is active"):
            attach_sd15_layer_model(unet, second_state)
        assert unet.attn_processors == {**own, **first._processors}
        first.set_active(False)
        second = attach_sd15_layer_model(unet, second_state)
        with pytest.raises(RuntimeError, match="another layer model is active"):
            first.set_active(True)
        second.detach()
        with pytest.raises(RuntimeError, match="detached"):
            second.set_active(True)
        first.set_active(True)
        assert torch.equal(unet(sample, 10, context).sample, patched)
        first.set_active(False)
    assert unet.attn_processors == own


def test_strict_loading_rejects_files_that_do_not_fit() -> None:
    unet = tiny_sd15_unet()
    before = dict(unet.attn_processors)
    state = random_layer_state(unet, LayerModelLayout(1, 4, False))
    with pytest.raises(ValueError, match="not an attention-sharing file"):
        attach_sd15_layer_model(unet, {"conv_in.weight": torch.zeros(1)})
    extra = dict(state, **{"hookers.layers.32.temporal_i.weight": torch.zeros(1)})
    with pytest.raises(ValueError, match="does not fit this UNet"):
        attach_sd15_layer_model(unet, extra)
    missing = dict(state)
    del missing["hookers.layers.31.temporal_o.bias"]
    with pytest.raises(ValueError, match="does not fit this UNet"):
        attach_sd15_layer_model(unet, missing)
    other = random_layer_state(tiny_sd15_unet(), LayerModelLayout(1, 4, False))
    other["hookers.layers.0.temporal_i.weight"] = torch.zeros(3, 3)
    with pytest.raises(ValueError, match="does not fit this UNet"):
        attach_sd15_layer_model(unet, other)
    assert unet.attn_processors == before  # a refused file leaves the UNet alone


def test_a_unet_without_the_sd15_layout_is_refused() -> None:
    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=8,
        block_out_channels=(16, 32),
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=24,
        norm_num_groups=8,
    )
    with pytest.raises(ValueError, match=r"SD1\.5-shaped UNet"):
        build_sd15_layer_model(unet, LayerModelLayout(1, 4, False))


def test_frame_and_control_errors_are_explicit() -> None:
    unet = tiny_sd15_unet()
    joint = attach_sd15_layer_model(unet, random_layer_state(unet, LayerModelLayout(3, 4, False)))
    with pytest.raises(ValueError, match="takes no control image"):
        joint.set_control(torch.rand(1, 3, 128, 128))
    with torch.no_grad(), pytest.raises(ValueError, match="not a multiple of 3 frames"):
        unet(torch.randn(4, 4, 16, 16), 10, torch.randn(4, 7, 24))
    joint.detach()
    controlled = attach_sd15_layer_model(
        unet, random_layer_state(unet, LayerModelLayout(2, 4, True))
    )
    with torch.no_grad(), pytest.raises(ValueError, match="needs a control image"):
        unet(torch.randn(2, 4, 16, 16), 10, torch.randn(2, 7, 24))
    controlled.detach()


def test_layout_is_read_from_the_keys() -> None:
    unet = tiny_sd15_unet()
    for layout in (LayerModelLayout(3, 4, False), LayerModelLayout(2, 6, True, (8, 8, 16, 24))):
        assert read_layout(random_layer_state(unet, layout)) == layout
