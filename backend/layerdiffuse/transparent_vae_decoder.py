"""The transparent VAE decoder: SD-VAE pixels + latent → alpha and straight RGB.

Architecture of the released `vae_transparent_decoder` and
`layer_sd15_vae_transparent_decoder` files (layerdiffuse.md §2.1): a 7-level UNet
built from diffusers blocks, no time embedding, GroupNorm with 4 groups, head dim 8
in its attention levels, and the latent added through a 1×1 conv just before the
fourth down block, where the feature map is at latent resolution.

`estimate_augmented` is the reference's test-time augmentation — the median of
8 flipped/rotated passes — computed with the views batched instead of one by one.

On a CPU two of its costs are not the model's: oneDNN's 1×1 convolutions, which at
the decoder's narrow full-resolution levels take 20x as long as the matrix product
they are (`PointwiseConv2d`), and `torch.median` over the 8 views, which sorts
(`lower_median_of_8`). Both are replaced by exact equivalents (docs/benchmarks.md).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from diffusers.models.unets.unet_2d_blocks import UNetMidBlock2D, get_down_block, get_up_block
from torch import nn

from .group_norm import use_reduction_group_norm

RELEASED_BLOCK_CHANNELS = (32, 32, 64, 128, 256, 512, 512)

# The 8 views of the reference's TTA, in its order: (horizontal flip, quarter turns).
TTA_VIEWS: tuple[tuple[bool, int], ...] = tuple(
    (flip, turns) for flip in (False, True) for turns in range(4)
)

# Measured peak of a batched fp16 pass: ~830 bytes per pixel per view at 1024²
# (performance.md §4: 6.48 GiB for 8 views). Kept a little pessimistic.
_BYTES_PER_PIXEL_PER_VIEW_FP16 = 900


class TransparentVAEDecoder(nn.Module):
    """The released transparent decoder ("UNet1024" in the reference code).

    Built with no arguments it has the released architecture; its state dict has
    the released files' 538 keys. Smaller `block_out_channels` give the same
    structure at demo size.

    Args:
        block_out_channels: channels per level; 7 levels, the last three with attention.
        layers_per_block: resnets per down block (up blocks have one more).
        attention_head_dim: channels per attention head.
        norm_num_groups: GroupNorm groups everywhere.
        norm_eps: GroupNorm epsilon.
        latent_channels: channels of the SD latent.
        latent_block: index of the down block whose input receives the latent.
    """

    def __init__(
        self,
        block_out_channels: Sequence[int] = RELEASED_BLOCK_CHANNELS,
        layers_per_block: int = 2,
        attention_head_dim: int = 8,
        norm_num_groups: int = 4,
        norm_eps: float = 1e-5,
        latent_channels: int = 4,
        latent_block: int = 3,
    ) -> None:
        super().__init__()
        channels = tuple(block_out_channels)
        levels = len(channels)
        attention_levels = 3
        self.latent_block = latent_block

        self.conv_in = nn.Conv2d(3, channels[0], kernel_size=3, padding=1)
        # Zero-initialised in training; the released weights fill it.
        self.latent_conv_in = nn.Conv2d(latent_channels, channels[latent_block - 1], kernel_size=1)

        common = {
            "temb_channels": None,
            "resnet_eps": norm_eps,
            "resnet_act_fn": "silu",
            "resnet_groups": norm_num_groups,
            "attention_head_dim": attention_head_dim,
            "resnet_time_scale_shift": "default",
            "dropout": 0.0,
        }
        self.down_blocks = nn.ModuleList()
        previous = channels[0]
        for level, out in enumerate(channels):
            with_attention = level >= levels - attention_levels
            self.down_blocks.append(
                get_down_block(
                    "AttnDownBlock2D" if with_attention else "DownBlock2D",
                    num_layers=layers_per_block,
                    in_channels=previous,
                    out_channels=out,
                    add_downsample=level < levels - 1,
                    downsample_padding=1,
                    downsample_type="conv",
                    **common,
                )
            )
            previous = out

        self.mid_block = UNetMidBlock2D(
            in_channels=channels[-1],
            temb_channels=None,
            dropout=0.0,
            resnet_eps=norm_eps,
            resnet_act_fn="silu",
            output_scale_factor=1.0,
            resnet_time_scale_shift="default",
            attention_head_dim=attention_head_dim,
            resnet_groups=norm_num_groups,
            attn_groups=None,
            add_attention=True,
        )

        self.up_blocks = nn.ModuleList()
        reversed_channels = channels[::-1]
        previous = reversed_channels[0]
        for level, out in enumerate(reversed_channels):
            skip_in = reversed_channels[min(level + 1, levels - 1)]
            self.up_blocks.append(
                get_up_block(
                    "AttnUpBlock2D" if level < attention_levels else "UpBlock2D",
                    num_layers=layers_per_block + 1,
                    in_channels=skip_in,
                    out_channels=out,
                    prev_output_channel=previous,
                    add_upsample=level < levels - 1,
                    upsample_type="conv",
                    **common,
                )
            )
            previous = out

        self.conv_norm_out = nn.GroupNorm(norm_num_groups, channels[0], eps=norm_eps)
        self.conv_act = nn.SiLU()
        self.conv_out = nn.Conv2d(channels[0], 4, kernel_size=3, padding=1)
        use_reduction_group_norm(self)
        use_pointwise_convs(self)

    @property
    def size_multiple(self) -> int:
        """Input height and width must be multiples of this (2 ** downsamplings)."""
        return 2 ** (len(self.down_blocks) - 1)

    def forward(self, pixel: torch.Tensor, latent: torch.Tensor) -> torch.Tensor:
        """One pass.

        Args:
            pixel: (B, 3, H, W) the SD VAE's decoded image in [0, 1]; H, W multiples
                of `size_multiple` (64 for the released decoder).
            latent: (B, 4, H/8, W/8), the latent given to the SD VAE, *not* multiplied
                by `vae.config.scaling_factor`.

        Returns:
            (B, 4, H, W) raw output, not clipped: channel 0 alpha, 1–3 straight RGB.
        """
        height, width = pixel.shape[-2:]
        multiple = self.size_multiple
        if height % multiple or width % multiple:
            raise ValueError(f"image size {width}x{height} is not a multiple of {multiple}")

        sample = self.conv_in(pixel)
        skips: tuple[torch.Tensor, ...] = (sample,)
        for index, block in enumerate(self.down_blocks):
            if index == self.latent_block:
                sample = sample + self.latent_conv_in(latent)
            sample, block_skips = block(hidden_states=sample, temb=None)
            skips += block_skips

        sample = self.mid_block(sample, None)

        for block in self.up_blocks:
            count = len(block.resnets)
            sample = block(sample, skips[-count:], None)
            skips = skips[:-count]

        return self.conv_out(self.conv_act(self.conv_norm_out(sample)))

    @torch.no_grad()
    def estimate_augmented(
        self,
        pixel: torch.Tensor,
        latent: torch.Tensor,
        max_views_per_batch: int | None = None,
    ) -> torch.Tensor:
        """The reference's 8-view median, with views batched in memory-bounded chunks.

        Each view flips and/or rotates pixel and latent, runs the model, clips to
        [0, 1] and undoes the transform; the result is the lower median of the 8
        (`torch.median`), exactly as the reference's sequential loop computes it.

        Args:
            pixel: (B, 3, H, W) in [0, 1].
            latent: (B, 4, H/8, W/8), unscaled.
            max_views_per_batch: views run in one forward pass; None picks from the
                memory free on the device.

        Returns:
            (B, 4, H, W) in [0, 1]: channel 0 alpha, 1–3 straight RGB.
        """
        batch = pixel.shape[0]
        per_pass = max_views_per_batch or views_per_batch(pixel)
        results: list[torch.Tensor | None] = [None] * len(TTA_VIEWS)
        for indices in _views_by_shape(square=pixel.shape[-1] == pixel.shape[-2]):
            for start in range(0, len(indices), per_pass):
                chunk = indices[start : start + per_pass]
                pixels = torch.cat([_apply_view(pixel, *TTA_VIEWS[i]) for i in chunk])
                latents = torch.cat([_apply_view(latent, *TTA_VIEWS[i]) for i in chunk])
                outputs = self(pixels, latents).clip(0, 1).split(batch)
                for i, output in zip(chunk, outputs, strict=True):
                    results[i] = _undo_view(output, *TTA_VIEWS[i])
        return lower_median_of_8([r for r in results if r is not None])

    @torch.no_grad()
    def estimate_augmented_sequential(
        self, pixel: torch.Tensor, latent: torch.Tensor
    ) -> torch.Tensor:
        """The reference's own algorithm: one pass per view at batch B, in a loop.

        Kept to check `estimate_augmented` against and to benchmark it.
        """
        outputs = []
        for flip, turns in TTA_VIEWS:
            output = self(_apply_view(pixel, flip, turns), _apply_view(latent, flip, turns))
            outputs.append(_undo_view(output.clip(0, 1), flip, turns))
        return torch.median(torch.stack(outputs), dim=0).values


class PointwiseConv2d(nn.Conv2d):
    """A 1×1 convolution that on a CPU is computed as the matrix product it is.

    PyTorch hands a 1×1 convolution on a CPU to oneDNN when it runs more than one
    thread, and to a matrix product on one thread. At the narrow full-resolution
    levels of the decoder oneDNN is far slower: 11.5 ms against 0.4 ms for 8 → 4
    channels at 512² on the 2-core dev VM, and still 2x slower for the released
    decoder's 64 → 32. The product is the one PyTorch itself computes on one thread,
    bit for bit; on more threads it differs from oneDNN's by rounding (6e-6 at most in
    the demo decoder's output). Other devices, and inputs not in the contiguous NCHW
    layout, keep `nn.Conv2d`.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type != "cpu" or x.dim() != 4 or not x.is_contiguous():
            return super().forward(x)
        batch, channels, height, width = x.shape
        shape = (batch, self.out_channels, height * width)
        weight = self.weight.reshape(self.out_channels, channels).expand(batch, -1, -1)
        pixels = x.view(batch, channels, height * width)
        # One product per image, with the bias as its starting value, in the order
        # PyTorch's own one-thread convolution adds them: bit for bit on any CPU.
        # (`matmul` folds the batch into one product and adds the bias after; on an
        # AVX2 EPYC that differs from the convolution in the last bit.)
        if self.bias is None:
            out = torch.bmm(weight, pixels)
        else:
            out = torch.baddbmm(self.bias.view(1, -1, 1).expand(shape), weight, pixels)
        return out.view(batch, self.out_channels, height, width)


def use_pointwise_convs(module: nn.Module, enabled: bool = True) -> int:
    """Make every plain 1×1 `nn.Conv2d` inside `module` a `PointwiseConv2d` (or back).

    Only the class changes: parameters, state-dict keys and CUDA results stay as they
    were. `enabled=False` restores `nn.Conv2d` (the benchmark's baseline). Returns how
    many were changed.
    """
    source, target = (nn.Conv2d, PointwiseConv2d) if enabled else (PointwiseConv2d, nn.Conv2d)
    changed = 0
    for child in module.modules():
        if (
            type(child) is source
            and child.kernel_size == (1, 1)
            and child.stride == (1, 1)
            and child.padding == (0, 0)
            and child.dilation == (1, 1)
            and child.groups == 1
        ):
            child.__class__ = target
            changed += 1
    return changed


def lower_median_of_8(views: Sequence[torch.Tensor]) -> torch.Tensor:
    """The lower median of 8 same-shaped tensors, element by element.

    Exactly `torch.median(torch.stack(views), dim=0).values` (the 4th smallest of 8),
    from 27 elementwise minima and maxima instead of a sort along a new dimension, and
    in place in one copy of the views, so that large tensors are not allocated 27
    times. Each half is sorted by the 5-comparator network; the 4th smallest of two
    sorted runs a and b is min(a3, b3, max(a0, b2), max(a1, b1), max(a2, b0)). A NaN
    propagates, as in `torch.median`. The inputs are not changed.
    """
    if len(views) != 8:
        raise ValueError(f"lower_median_of_8 takes 8 tensors, not {len(views)}")
    v = list(torch.stack(list(views)).unbind(0))
    spare = torch.empty_like(v[0])
    for half in (0, 4):
        for i, j in ((0, 1), (2, 3), (0, 2), (1, 3), (1, 2)):
            low, high = v[half + i], v[half + j]
            torch.minimum(low, high, out=spare)
            torch.maximum(low, high, out=high)
            v[half + i], spare = spare, low
    a, b = v[:4], v[4:]
    median = torch.minimum(a[3], b[3], out=torch.empty_like(spare))
    for i in range(3):
        torch.minimum(median, torch.maximum(a[i], b[2 - i], out=b[2 - i]), out=median)
    return median


def views_per_batch(pixel: torch.Tensor) -> int:
    """How many TTA views of `pixel` to run in one pass on its device (1..8).

    On a CPU: one. Its convolutions already use every core at one view, and a batch of
    views only grows the working set past the caches: at 512² the demo decoder takes
    2.1x as long with 8 views per pass as with one (docs/benchmarks.md, 2-core VM).
    On CUDA: as many as the free memory allows, with half kept back. On other devices:
    as many as fit a 2 GiB budget.
    """
    if pixel.device.type == "cpu":
        return 1
    batch, _, height, width = pixel.shape
    element_scale = pixel.element_size() / 2
    per_view = batch * height * width * _BYTES_PER_PIXEL_PER_VIEW_FP16 * element_scale
    if pixel.is_cuda:
        free, _total = torch.cuda.mem_get_info(pixel.device)
        budget = free * 0.5
    else:
        budget = 2 * 1024**3
    return max(1, min(len(TTA_VIEWS), int(budget // per_view)))


def _views_by_shape(square: bool) -> list[list[int]]:
    """Indices of TTA views that share an input shape, so they can share a batch."""
    if square:
        return [list(range(len(TTA_VIEWS)))]
    # Odd quarter turns swap height and width.
    return [
        [i for i, (_, turns) in enumerate(TTA_VIEWS) if turns % 2 == parity] for parity in (0, 1)
    ]


def _apply_view(x: torch.Tensor, flip: bool, turns: int) -> torch.Tensor:
    if flip:
        x = torch.flip(x, dims=(3,))
    return torch.rot90(x, k=turns, dims=(2, 3))


def _undo_view(x: torch.Tensor, flip: bool, turns: int) -> torch.Tensor:
    x = torch.rot90(x, k=-turns, dims=(2, 3))
    if flip:
        x = torch.flip(x, dims=(3,))
    return x
