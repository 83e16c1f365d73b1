"""A GroupNorm whose statistics keep a GPU busy at batch 1.

PyTorch's CUDA GroupNorm reduces each (sample, group) row with one thread block.
The transparent decoder normalises 1024² feature maps in 4 groups at batch 1:
4 blocks on a 132-SM GPU, 89 % of the decoder's time (performance.md §4). Here
the statistics come from ordinary reductions, which PyTorch splits across the
whole device, and the normalisation is one fused multiply-add. Same parameters,
same state-dict keys, same result to rounding.
"""

from __future__ import annotations

import torch
from torch import nn


def group_norm_by_reduction(
    x: torch.Tensor,
    num_groups: int,
    weight: torch.Tensor | None,
    bias: torch.Tensor | None,
    eps: float,
) -> torch.Tensor:
    """Group normalisation computed with device-wide reductions.

    Args:
        x: (B, C, *spatial), any float dtype; contiguous or channels_last.
        num_groups: groups the C channels are split into.
        weight: (C,) affine scale, or None.
        bias: (C,) affine shift, or None.
        eps: added to the variance.

    Returns:
        A tensor shaped and typed like `x`, in the same memory format.
    """
    batch, channels = x.shape[0], x.shape[1]
    per_group = channels // num_groups
    if (
        x.dim() == 4
        and not x.is_contiguous()
        and x.is_contiguous(memory_format=torch.channels_last)
    ):
        # (B, H, W, C) is the storage order: group the channels without a copy.
        grouped = x.permute(0, 2, 3, 1).reshape(batch, -1, num_groups, per_group)
        dims: tuple[int, ...] = (1, 3)
    else:
        grouped = x.reshape(batch, num_groups, -1)
        dims = (2,)
    # Statistics at float32 or better whatever the input dtype, as the native kernel
    # keeps them. Welford's variance (var_mean) has no cancellation when the mean is
    # large; its result is rounded to x's dtype, which costs little relative accuracy.
    stat_dtype = torch.promote_types(x.dtype, torch.float32)
    variance, _ = torch.var_mean(grouped, dim=dims, correction=0)
    mean = grouped.mean(dim=dims, dtype=stat_dtype)
    inverse_std = torch.rsqrt(variance.to(stat_dtype) + eps)

    scale = inverse_std.repeat_interleave(per_group, dim=1)
    shift = -mean.repeat_interleave(per_group, dim=1) * scale
    if weight is not None:
        scale = scale * weight.to(stat_dtype)
        shift = shift * weight.to(stat_dtype)
    if bias is not None:
        shift = shift + bias.to(stat_dtype)
    shape = (batch, channels) + (1,) * (x.dim() - 2)
    # One kernel: computed at the statistics' precision, stored in x's dtype, so a
    # large mean does not cancel in half precision.
    out = torch.empty_like(x)
    return torch.addcmul(shift.view(shape), x, scale.view(shape), out=out)


class ReductionGroupNorm(nn.GroupNorm):
    """`nn.GroupNorm` that uses `group_norm_by_reduction` on CUDA tensors.

    On other devices the native kernel is already fine and is kept.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not x.is_cuda:
            return super().forward(x)
        return group_norm_by_reduction(x, self.num_groups, self.weight, self.bias, self.eps)


def use_reduction_group_norm(module: nn.Module, enabled: bool = True) -> int:
    """Swap every `nn.GroupNorm` inside `module` for a `ReductionGroupNorm` (or back).

    The new modules share the old parameters, so state-dict keys and values are
    unchanged. `enabled=False` restores plain `nn.GroupNorm`s (the benchmark's
    baseline). Returns how many were swapped.
    """
    source, target = (
        (nn.GroupNorm, ReductionGroupNorm) if enabled else (ReductionGroupNorm, nn.GroupNorm)
    )
    swapped = 0
    for parent in module.modules():
        for name, child in list(parent.named_children()):
            if type(child) is source:
                with torch.device("meta"):  # its parameters are replaced just below
                    replacement = target(
                        child.num_groups, child.num_channels, eps=child.eps, affine=child.affine
                    )
                replacement.weight = child.weight
                replacement.bias = child.bias
                setattr(parent, name, replacement)
                swapped += 1
    return swapped
