"""The transparent decoder's CPU paths: 1×1 convs as matrix products, the min/max median."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from backend.layerdiffuse import TransparentVAEDecoder
from backend.layerdiffuse.transparent_vae_decoder import (
    PointwiseConv2d,
    lower_median_of_8,
    use_pointwise_convs,
)

TINY_CHANNELS = (8, 8, 16, 16, 32, 32, 32)


@pytest.fixture
def one_thread() -> Iterator[None]:
    """PyTorch on one thread for the test, as it was after."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("shape", [(1, 4, 64, 64), (2, 4, 16, 48), (7,)])
def test_lower_median_of_8_is_torch_median_exactly(
    shape: tuple[int, ...], dtype: torch.dtype
) -> None:
    """Every element is the one torch.median picks, ties included; inputs stay as they were."""
    generator = torch.Generator().manual_seed(3)
    # Rounded to tenths, so that most elements have ties among their 8 values.
    views = [torch.rand(shape, generator=generator).round(decimals=1).to(dtype) for _ in range(8)]
    before = [view.clone() for view in views]
    median = lower_median_of_8(views)
    assert torch.equal(median, torch.median(torch.stack(views), dim=0).values)
    assert median.dtype == dtype and median.shape == shape
    assert all(torch.equal(view, kept) for view, kept in zip(views, before, strict=True))


def test_lower_median_of_8_picks_the_4th_smallest_in_any_order() -> None:
    """500 random orders of 0..7 along the views all give 3 (the lower median)."""
    orders = torch.stack(
        [torch.randperm(8, generator=torch.Generator().manual_seed(s)) for s in range(500)]
    )
    views = [orders[:, i].float() for i in range(8)]
    assert torch.equal(lower_median_of_8(views), torch.full((500,), 3.0))


def test_lower_median_of_8_propagates_nan_and_wants_8() -> None:
    views = [torch.full((3,), float(i)) for i in range(8)]
    views[5] = torch.tensor([float("nan"), 5.0, 5.0])
    median = lower_median_of_8(views)
    assert torch.isnan(median[0]) and torch.isnan(torch.median(torch.stack(views), 0).values[0])
    assert median[1:].tolist() == [3.0, 3.0]
    with pytest.raises(ValueError, match="takes 8 tensors, not 7"):
        lower_median_of_8(views[:7])


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("shape", [(1, 8, 64, 64), (2, 12, 32, 16)])
@pytest.mark.usefixtures("one_thread")
def test_a_pointwise_conv_is_the_product_pytorch_computes_on_one_thread(
    shape: tuple[int, ...], bias: bool
) -> None:
    """Bit for bit what nn.Conv2d gives on one thread; within rounding of it on more."""
    torch.manual_seed(4)
    conv = nn.Conv2d(shape[1], 4, kernel_size=1, bias=bias)
    x = torch.randn(shape)
    expected = F.conv2d(x, conv.weight, conv.bias)
    assert use_pointwise_convs(conv) == 1 and type(conv) is PointwiseConv2d
    with torch.no_grad():
        assert torch.equal(conv(x), expected)
        torch.set_num_threads(2)
        torch.testing.assert_close(conv(x), F.conv2d(x, conv.weight, conv.bias))


def test_a_pointwise_conv_keeps_nn_conv2d_off_the_contiguous_cpu_layout() -> None:
    torch.manual_seed(5)
    conv = nn.Conv2d(8, 4, kernel_size=1)
    use_pointwise_convs(conv)
    channels_last = torch.randn(1, 8, 16, 16).to(memory_format=torch.channels_last)
    with torch.no_grad():
        assert torch.equal(conv(channels_last), F.conv2d(channels_last, conv.weight, conv.bias))
        on_meta = PointwiseConv2d(8, 4, kernel_size=1, device="meta")
        assert on_meta(torch.empty(1, 8, 16, 16, device="meta")).shape == (1, 4, 16, 16)


def test_the_decoder_computes_its_1x1_convs_as_products_with_the_same_state_dict() -> None:
    torch.manual_seed(0)
    decoder = TransparentVAEDecoder(block_out_channels=TINY_CHANNELS).eval()
    pointwise = [m for m in decoder.modules() if isinstance(m, PointwiseConv2d)]
    ones = [m for m in decoder.modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1)]
    # latent_conv_in and every resnet shortcut whose channel count changes
    assert decoder.latent_conv_in in pointwise and len(pointwise) == len(ones) > 10
    threes = [m for m in decoder.modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3)]
    assert threes and all(type(m) is nn.Conv2d for m in threes)
    state = decoder.state_dict()
    pixel, latent = torch.rand(1, 3, 64, 64), torch.randn(1, 4, 8, 8)
    with torch.no_grad():
        ours = decoder(pixel, latent)
        assert use_pointwise_convs(decoder, enabled=False) == len(ones)
        assert not any(isinstance(m, PointwiseConv2d) for m in decoder.modules())
        assert decoder.state_dict().keys() == state.keys()
        torch.testing.assert_close(ours, decoder(pixel, latent))
