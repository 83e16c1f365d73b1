"""BiRefNet: the tiny network runs and mattes; the release network has the files' layout.

The release networks are only built on the meta device (no memory, no weights). What pins
them to the hub files is their size: from the state dict's names, shapes and dtypes we
rebuild the safetensors file byte for byte in length (header JSON included) and compare it
with the published sizes, 444,473,596 bytes (HR-matting, float16) and 884,878,856 bytes
(matting, float32). A wrong key name, a missing module or a wrong shape changes it.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from backend.split import birefnet
from backend.split.birefnet import (
    BIREFNET_HR_MATTING,
    BIREFNET_MATTING,
    TINY_CONFIG,
    BiRefNet,
    CheckpointMismatchError,
    deform_conv2d,
    image_to_patches,
    load_birefnet,
    relative_position_index,
)
from backend.split.matting import matte

HR_MATTING_BYTES = 444_473_596
MATTING_BYTES = 884_878_856
RELEASE_PARAMETERS = 220_176_498
"""Swin-L (embed 192, depths 2-2-18-2, window 12) ≈ 195 M, the squeeze block and decoder
≈ 25 M: `sum(p.numel() for p in BiRefNet(BIREFNET_MATTING).parameters())`. Consistent with
the files: 2 bytes × (these + 26,080 BN statistics) + 8 × 497,707 int64 + the header is the
HR file's size, to the byte (see `test_the_state_dict_rebuilds_the_released_file_sizes`)."""

# Names and shapes the HR-matting file is checked for by a public loader of it (see the
# module docstring), and names of upstream's modules that the file must carry.
KNOWN_SHAPES = {
    "bb.patch_embed.proj.weight": (192, 3, 4, 4),
    "bb.layers.0.blocks.0.attn.relative_position_index": (144, 144),
    "bb.layers.3.blocks.1.attn.qkv.weight": (4608, 1536),
    "squeeze_module.0.conv_in.weight": (64, 5760, 3, 3),
    "decoder.decoder_block1.dec_att.aspp_deforms.2.atrous_conv.regular_conv.weight": (
        256,
        64,
        7,
        7,
    ),
    "decoder.conv_out1.0.weight": (1, 240, 1, 1),
}
KNOWN_KEYS = (
    "bb.layers.2.blocks.17.attn.relative_position_bias_table",
    "bb.layers.2.downsample.reduction.weight",
    "bb.norm3.weight",
    "squeeze_module.0.bn_in.running_mean",
    "squeeze_module.0.dec_att.aspp_deforms.2.atrous_conv.offset_conv.weight",
    "squeeze_module.0.dec_att.global_avg_pool.2.num_batches_tracked",
    "decoder.ipt_blk5.conv1.weight",
    "decoder.lateral_block4.conv.weight",
    "decoder.conv_ms_spvn_4.weight",
    "decoder.gdt_convs_3.1.running_var",
    "decoder.gdt_convs_pred_3.0.weight",
    "decoder.gdt_convs_attn_2.0.bias",
)


def _release(config: birefnet.BiRefNetConfig = BIREFNET_HR_MATTING) -> BiRefNet:
    with torch.device("meta"):
        return BiRefNet(config)


def _tiny(seed: int = 0) -> BiRefNet:
    torch.manual_seed(seed)
    model = BiRefNet(TINY_CONFIG)
    # Non-trivial offsets, modulation and BatchNorm statistics, so those paths do something.
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if name.endswith(("offset_conv.weight", "modulator_conv.weight", "running_mean")):
                tensor.normal_(0, 0.1)
            elif name.endswith("running_var"):
                tensor.uniform_(0.5, 2)
    return model.eval()


# ------------------------------------------------------------------------- tiny network


def test_the_tiny_network_gives_finite_logits_at_the_input_size() -> None:
    model = _tiny()
    pixels = torch.randn(2, 3, TINY_CONFIG.input_size, TINY_CONFIG.input_size)
    with torch.no_grad():
        logits = model(pixels)
    assert logits.shape == (2, 1, 64, 64)
    assert torch.isfinite(logits).all()
    assert logits.std() > 0  # not a constant map
    with torch.no_grad():
        alone = model(pixels[1:])
    torch.testing.assert_close(alone, logits[1:], atol=1e-5, rtol=1e-4)  # samples independent


def test_the_tiny_network_mattes_a_picture() -> None:
    picture = np.random.default_rng(0).integers(0, 256, (50, 70, 3), dtype=np.uint8)
    alpha = matte(picture, _tiny())
    assert alpha.shape == (50, 70)
    assert alpha.dtype == np.uint8


def test_the_input_size_must_suit_the_patch_grid_and_the_half_size_pass() -> None:
    with pytest.raises(ValueError, match="multiple of 64"):
        BiRefNet(birefnet.BiRefNetConfig(input_size=96, embed_dim=8, num_heads=(1, 1, 1, 1)))


# ------------------------------------------------------------------------- building blocks


def test_deformable_convolution_without_offsets_is_a_convolution() -> None:
    torch.manual_seed(0)
    pixels = torch.randn(2, 5, 9, 11)
    for kernel in (1, 3, 7):
        weight = torch.randn(4, 5, kernel, kernel)
        offset = torch.zeros(2, 2 * kernel * kernel, 9, 11)
        mask = torch.ones(2, kernel * kernel, 9, 11)
        expected = F.conv2d(pixels, weight, padding=kernel // 2)
        got = deform_conv2d(pixels, offset, weight, mask, kernel // 2)
        torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)


def test_deformable_offsets_are_dy_dx_per_tap_and_sample_zeros_outside() -> None:
    torch.manual_seed(1)
    pixels = torch.randn(1, 2, 6, 7)
    weight = torch.randn(3, 2, 3, 3)
    mask = torch.ones(1, 9, 6, 7)
    down = torch.zeros(1, 18, 6, 7)
    down[:, 0::2] = 1.0  # dy = +1 on every tap: tap (i, j) of row y reads row y + i
    below = F.conv2d(F.pad(pixels, (1, 1, 0, 2)), weight)  # zeros past the last row
    torch.testing.assert_close(
        deform_conv2d(pixels, down, weight, mask, 1), below, atol=1e-4, rtol=1e-4
    )
    half = torch.zeros(1, 18, 6, 7)
    half[:, 1::2] = 0.5  # dx = +0.5: halfway between columns x + j − 1 and x + j
    here = F.conv2d(F.pad(pixels, (1, 1, 1, 1)), weight)
    right = F.conv2d(F.pad(pixels, (0, 2, 1, 1)), weight)
    torch.testing.assert_close(
        deform_conv2d(pixels, half, weight, mask * 0.5, 1),  # modulation scales each tap
        0.25 * (here + right),
        atol=1e-4,
        rtol=1e-4,
    )


def _naive_deform_conv2d(pixels, offset, weight, mask, padding):  # type: ignore[no-untyped-def]
    """DCNv2 written out per sample, after torchvision's CPU kernel: a point at or past
    one pixel outside the picture reads 0; otherwise bilinear, outside corners reading 0."""
    pixels, offset, weight, mask = (t.double().numpy() for t in (pixels, offset, weight, mask))
    batch, channels, height, width = pixels.shape
    out_channels, _, kernel_h, kernel_w = weight.shape
    out = np.zeros((batch, out_channels, *offset.shape[-2:]))

    def pixel(b: int, c: int, y: int, x: int) -> float:
        return pixels[b, c, y, x] if 0 <= y < height and 0 <= x < width else 0.0

    def sample(b: int, c: int, y: float, x: float) -> float:
        if y <= -1 or y >= height or x <= -1 or x >= width:
            return 0.0
        y0, x0 = math.floor(y), math.floor(x)
        dy, dx = y - y0, x - x0
        return (
            (1 - dy) * (1 - dx) * pixel(b, c, y0, x0)
            + (1 - dy) * dx * pixel(b, c, y0, x0 + 1)
            + dy * (1 - dx) * pixel(b, c, y0 + 1, x0)
            + dy * dx * pixel(b, c, y0 + 1, x0 + 1)
        )

    for b in range(batch):
        for row in range(out.shape[2]):
            for column in range(out.shape[3]):
                for i in range(kernel_h):
                    for j in range(kernel_w):
                        tap = i * kernel_w + j
                        y = row - padding + i + offset[b, 2 * tap, row, column]
                        x = column - padding + j + offset[b, 2 * tap + 1, row, column]
                        values = [sample(b, c, y, x) for c in range(channels)]
                        scaled = mask[b, tap, row, column] * np.array(values)
                        out[b, :, row, column] += weight[:, :, i, j] @ scaled
    return torch.from_numpy(out).float()


def test_the_fallback_matches_dcn_v2_sampling_with_fractional_offsets() -> None:
    torch.manual_seed(2)
    pixels = torch.randn(2, 3, 5, 6)
    offset = torch.randn(2, 18, 5, 6) * 2  # some samples fall outside the picture
    mask = torch.rand(2, 9, 5, 6) * 2
    weight = torch.randn(4, 3, 3, 3)
    kernel = birefnet._torchvision_deform_conv2d
    birefnet._torchvision_deform_conv2d = None  # the grid_sample path, even with torchvision
    try:
        ours = deform_conv2d(pixels, offset, weight, mask, 1)
    finally:
        birefnet._torchvision_deform_conv2d = kernel
    expected = _naive_deform_conv2d(pixels, offset, weight, mask, 1)
    torch.testing.assert_close(ours, expected, atol=1e-4, rtol=1e-4)
    if kernel is not None:  # and torchvision's kernel agrees, where it is installed
        torch.testing.assert_close(
            deform_conv2d(pixels, offset, weight, mask, 1), expected, atol=1e-4, rtol=1e-4
        )


def test_image_patches_stack_the_grid_cells_as_channels() -> None:
    pixels = torch.arange(2 * 3 * 8 * 12, dtype=torch.float32).view(2, 3, 8, 12)
    patches = image_to_patches(pixels, 4, 4)  # 4 × 4 cells of 2 × 3
    assert patches.shape == (2, 48, 2, 3)
    for channel in range(3):
        for row in range(4):
            for column in range(4):  # einops 'b c (hg h) (wg w) -> b (c hg wg) h w'
                cell = pixels[:, channel, 2 * row : 2 * row + 2, 3 * column : 3 * column + 3]
                torch.testing.assert_close(patches[:, channel * 16 + row * 4 + column], cell)


def test_the_relative_position_index_is_swins() -> None:
    index = relative_position_index(3)
    assert index.dtype == torch.int64 and index.shape == (9, 9)
    assert index.min() == 0 and index.max() == 24  # (2·3 − 1)² table rows
    assert torch.equal(index.diagonal(), torch.full((9,), 12))  # zero offset: the centre row
    # Token 0 is (0, 0), token 8 is (2, 2): offset (−2, −2) → row 0; the reverse → row 24.
    assert index[0, 8] == 0 and index[8, 0] == 24


# ------------------------------------------------------------------------- release layout


def test_the_release_network_has_the_released_parameter_count() -> None:
    model = _release()
    assert sum(parameter.numel() for parameter in model.parameters()) == RELEASE_PARAMETERS
    assert model.input_size == 2048
    assert _release(BIREFNET_MATTING).input_size == 1024
    # Both releases are the same network at different picture sizes.
    shapes = {name: tensor.shape for name, tensor in model.state_dict().items()}
    matting = {name: t.shape for name, t in _release(BIREFNET_MATTING).state_dict().items()}
    assert shapes == matting


def test_the_release_network_has_the_files_known_keys_and_shapes() -> None:
    state = _release().state_dict()
    for name, shape in KNOWN_SHAPES.items():
        assert tuple(state[name].shape) == shape, name
    for name in KNOWN_KEYS:
        assert name in state, name
    assert state["bb.layers.0.blocks.0.attn.relative_position_index"].dtype == torch.int64
    assert len(state) == 754
    assert sum(name.endswith("relative_position_index") for name in state) == 24  # 2+2+18+2
    assert not any(name.startswith("bb.layers.3.downsample") for name in state)
    assert not any("refiner" in name or "cls_head" in name for name in state)


def _safetensors_size(state: dict[str, torch.Tensor], float_dtype: torch.dtype) -> int:
    """The byte size of `safetensors.torch.save_file(state in float_dtype, metadata=pt)`.

    Header: JSON {"__metadata__": …, name: {dtype, shape, data_offsets}} with tensors
    ordered by dtype (widest first) then name, space-padded to a multiple of 8, after an
    8-byte length. Checked against the library on the tiny network below.
    """
    names = {torch.float16: "F16", torch.bfloat16: "BF16", torch.float32: "F32"}
    entries = []
    for name, tensor in state.items():
        dtype = float_dtype if tensor.is_floating_point() else tensor.dtype
        label = names.get(dtype, "I64")
        size = torch.empty((), dtype=dtype).element_size()
        entries.append((-size, name, label, list(tensor.shape), size * math.prod(tensor.shape)))
    header: dict[str, object] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for _, name, label, shape, nbytes in sorted(entries):
        header[name] = {"dtype": label, "shape": shape, "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    text = json.dumps(header, separators=(",", ":"))
    return 8 + len(text) + (-len(text) % 8) + offset


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
def test_the_size_rebuild_agrees_with_safetensors(tmp_path: Path, dtype: torch.dtype) -> None:
    state = {
        name: tensor.to(dtype) if tensor.is_floating_point() else tensor
        for name, tensor in _tiny().state_dict().items()
    }
    path = tmp_path / "tiny.safetensors"
    save_file(state, str(path), metadata={"format": "pt"})
    assert path.stat().st_size == _safetensors_size(state, dtype)


def test_the_state_dict_rebuilds_the_released_file_sizes() -> None:
    state = _release().state_dict()
    assert _safetensors_size(state, torch.float16) == HR_MATTING_BYTES
    assert _safetensors_size(state, torch.float32) == MATTING_BYTES


# ------------------------------------------------------------------------------ loading


def test_a_saved_tiny_network_loads_back_strictly(tmp_path: Path) -> None:
    model = _tiny(seed=3)
    path = tmp_path / "model.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    pixels = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        expected = model(pixels)
    loaded = load_birefnet(path, TINY_CONFIG, dtype=torch.float32)
    assert not loaded.training
    assert not any(parameter.requires_grad for parameter in loaded.parameters())
    with torch.no_grad():
        torch.testing.assert_close(loaded(pixels), expected)
    half = load_birefnet(model.state_dict(), TINY_CONFIG, dtype=torch.bfloat16)
    assert next(half.parameters()).dtype == torch.bfloat16
    index = half.state_dict()["bb.layers.0.blocks.0.attn.relative_position_index"]
    assert index.dtype == torch.int64 and index.device.type == "cpu"
    assert not any(tensor.is_meta for tensor in half.state_dict().values())
    with torch.no_grad():  # runs in bfloat16 end to end, close to float32
        reduced = half(pixels.bfloat16())
    assert reduced.dtype == torch.bfloat16
    torch.testing.assert_close(reduced.float(), expected, atol=0.05, rtol=0.05)


def test_a_missing_key_is_named() -> None:
    state = _tiny().state_dict()
    del state["decoder.gdt_convs_attn_2.0.bias"]
    with pytest.raises(
        CheckpointMismatchError, match=r"missing: decoder\.gdt_convs_attn_2\.0\.bias"
    ):
        load_birefnet(state, TINY_CONFIG, dtype=torch.float32)


def test_an_unexpected_key_and_a_wrong_shape_are_named() -> None:
    state = _tiny().state_dict()
    state["decoder.refiner.weight"] = torch.zeros(1)
    state["decoder.conv_out1.0.weight"] = torch.zeros(1, 7, 1, 1)
    with pytest.raises(CheckpointMismatchError) as caught:
        load_birefnet(state, TINY_CONFIG, dtype=torch.float32)
    message = str(caught.value)
    assert "unexpected: decoder.refiner.weight" in message
    assert "decoder.conv_out1.0.weight: file (1, 7, 1, 1)" in message


def test_the_release_config_does_not_take_tiny_weights() -> None:
    with pytest.raises(CheckpointMismatchError, match="shape"):
        load_birefnet(_tiny().state_dict(), BIREFNET_MATTING)
