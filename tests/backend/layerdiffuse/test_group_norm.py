"""The reduction GroupNorm matches PyTorch's and swaps in without touching weights."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from backend.layerdiffuse import TransparentVAEDecoder, group_norm_by_reduction
from backend.layerdiffuse.group_norm import ReductionGroupNorm, use_reduction_group_norm


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("affine", [False, True])
def test_matches_native_group_norm(dtype: torch.dtype, channels_last: bool, affine: bool) -> None:
    torch.manual_seed(0)
    x = torch.randn(2, 32, 9, 7, dtype=dtype) * 3 + 1.5
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    weight = torch.randn(32, dtype=dtype) if affine else None
    bias = torch.randn(32, dtype=dtype) if affine else None
    expected = F.group_norm(x, 4, weight, bias, 1e-5)
    actual = group_norm_by_reduction(x, 4, weight, bias, 1e-5)
    tolerance = 1e-5 if dtype == torch.float32 else 1e-10
    torch.testing.assert_close(actual, expected, atol=tolerance, rtol=tolerance)
    assert actual.is_contiguous(memory_format=torch.channels_last) == channels_last


def test_three_dimensional_input_as_attention_uses_it() -> None:
    x = torch.randn(3, 16, 50)
    weight, bias = torch.randn(16), torch.randn(16)
    torch.testing.assert_close(
        group_norm_by_reduction(x, 4, weight, bias, 1e-6), F.group_norm(x, 4, weight, bias, 1e-6)
    )


def test_large_mean_relative_to_spread_stays_accurate() -> None:
    x = torch.randn(1, 8, 64, 64) * 0.5 + 100.0
    expected = F.group_norm(x.double(), 4, None, None, 1e-5)
    actual = group_norm_by_reduction(x, 4, None, None, 1e-5)
    assert (actual.double() - expected).abs().max() < 2e-3


def test_swap_keeps_state_dict_and_counts_every_group_norm() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 1), nn.GroupNorm(4, 8), nn.Sequential(nn.GroupNorm(2, 8)))
    before = {key: value.clone() for key, value in model.state_dict().items()}
    assert use_reduction_group_norm(model) == 2
    after = model.state_dict()
    assert before.keys() == after.keys()
    for key in before:
        assert torch.equal(before[key], after[key])
    assert all(type(m) is not nn.GroupNorm for m in model.modules())


def test_decoder_uses_only_reduction_group_norms() -> None:
    with torch.device("meta"):
        decoder = TransparentVAEDecoder()
    norms = [m for m in decoder.modules() if isinstance(m, nn.GroupNorm)]
    assert norms and all(isinstance(m, ReductionGroupNorm) for m in norms)
    assert all(m.num_groups == 4 for m in norms)


def test_cpu_tensors_keep_the_native_kernel() -> None:
    norm = ReductionGroupNorm(4, 8)
    x = torch.randn(1, 8, 5, 5)
    assert torch.equal(norm(x), F.group_norm(x, 4, norm.weight, norm.bias, norm.eps))


def test_half_precision_keeps_float32_statistics() -> None:
    torch.manual_seed(0)
    x = (torch.randn(1, 8, 32, 32) * 0.5 + 100.0).half()
    weight, bias = torch.randn(8).half(), torch.randn(8).half()
    actual = group_norm_by_reduction(x, 4, weight, bias, 1e-5)
    expected = F.group_norm(x.float(), 4, weight.float(), bias.float(), 1e-5)
    assert actual.dtype == torch.float16
    assert (actual.float() - expected).abs().max() < 1e-2
