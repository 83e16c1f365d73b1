"""BiRefNet, the matting network of the fallback, loadable from the released checkpoints.

What it is. BiRefNet ("Bilateral Reference for High-Resolution Dichotomous Image
Segmentation", Zheng et al., CAAI AIR 2024, arXiv 2401.03407) is a Swin Transformer
encoder and a decoder that looks back at the picture itself ("bilateral reference"): at
each decoder level the input image, cut into a grid of patches stacked as channels, is fed
in beside the features, and a small "gradient" branch gates the features. This module is an
independent implementation of that architecture, written for inference, whose `state_dict()`
has the key names, shapes and dtypes of the released hub files, so that

- `ZhengPeng7/BiRefNet_HR-matting` (`model.safetensors`, 444,473,596 bytes, float16,
  trained at 2048², released 12 Feb 2025) and
- `ZhengPeng7/BiRefNet-matting` (884,878,856 bytes, float32, 1024², released 6 Oct 2024)

load with `load_state_dict(strict=True)`, with no remote code. `BiRefNet.forward` meets the
contract of `backend.split.matting.matte`: (B, 3, S, S) RGB normalised with the ImageNet
mean/std in, (B, 1, S, S) logits out (the finest prediction; sigmoid = alpha).

Where the facts come from.

- The architecture and its settings: the MIT-licensed repository github.com/ZhengPeng7/BiRefNet
  (`config.py`, `models/birefnet.py`, `models/backbones/swin_v1.py`,
  `models/modules/{aspp,decoder_blocks,deform_conv,lateral_blocks}.py`; the hub repos bundle
  the same modules in one `birefnet.py`). The release settings are the repo's defaults: backbone
  `swin_v1_l` (embed 192, depths 2-2-18-2, heads 6-12-24-48, window 12, patch 4, MLP ratio 4,
  no absolute position embedding), `mul_scl_ipt = "cat"` (the backbone runs again on the
  picture at half size; its features are upsampled and concatenated, doubling the lateral
  channels to 3072-1536-768-384), `cxt_num = 3` (x1..x3 resized onto x4 and concatenated:
  3072 + 384 + 768 + 1536 = 5760 channels), `squeeze_block = "BasicDecBlk_x1"`,
  `dec_blk = "BasicDecBlk"` with `dec_att = "ASPPDeformable"` (deformable kernels 1, 3, 7;
  256 channels per branch), `dec_channels_inter = "fixed"` (64), `lat_blk = "BasicLatBlk"`
  (1×1 conv), `dec_ipt = dec_ipt_split = True` (patch grids of 32, 16, 8, 4, 1 cells per side,
  3·g² channels, through `SimpleConvs` with 64 inner channels, out = lateral channels / 8),
  `ms_supervision = out_ref = True` (side outputs `conv_ms_spvn_*` and the gradient branch
  `gdt_convs_*` with 16 channels; the side outputs and `gdt_convs_pred_*` only train, but
  their weights are in the files), no refiner, no auxiliary classification, and
  `batch_size > 1` (so every "BN if batch_size > 1" is a BatchNorm2d, with running stats).
- The files: their sizes and SHA-256s are pinned by public downloaders (HR-matting at the
  hub revision 5d6b6f8adcb5b417c871b1d84ceaae9871355b7f, sha256 a5a4de69…cef55, the same
  bytes in the 1038lab/BiRefNet mirror; BiRefNet-matting's 884,878,856 bytes from that
  mirror, sha256 a9875de5…c25bb, not checked against the hub). One of them checks, in the
  HR-matting file, `bb.patch_embed.proj.weight` F16 [192, 3, 4, 4],
  `bb.layers.0.blocks.0.attn.relative_position_index` I64 [144, 144],
  `bb.layers.3.blocks.1.attn.qkv.weight` F16 [4608, 1536],
  `squeeze_module.0.conv_in.weight` F16 [64, 5760, 3, 3],
  `decoder.decoder_block1.dec_att.aspp_deforms.2.atrous_conv.regular_conv.weight`
  F16 [256, 64, 7, 7] and `decoder.conv_out1.0.weight` F16 [1, 240, 1, 1], and reads the
  BatchNorm running statistics. The tests rebuild both files' exact byte sizes from this
  module's state dict (safetensors header included), which pins the key set and shapes.

Parameter count of the release network: 220,176,498 parameters (× 2 bytes = 440.4 MB,
× 4 = 880.7 MB), plus 26,080 BatchNorm running statistics (stored in the file's float
dtype) and 497,707 int64 values (24 relative-position index tables of 144², and 43 BatchNorm
step counters): 754 tensors. With safetensors' header (metadata {"format": "pt"}) that is
exactly 444,473,596 bytes in float16 and 884,878,856 in float32, the two files' sizes.

Licence. The original code is "Copyright (c) 2024 ZhengPeng", MIT licence; the hub model
cards give the weights as MIT too. This
file re-implements the architecture from its description and module layout; no code was
copied. Mind the MIT notice when redistributing the weights.

Deformable convolution. `torchvision.ops.deform_conv2d` is used when torchvision is
importable; otherwise `deform_conv2d` here samples bilinearly with `grid_sample` (zeros
outside the picture, as torchvision does), one kernel tap at a time to bound memory, in
float32 whatever the network's dtype (positions in float16/bfloat16 would be too coarse).

Memory and time. The weights take 440 MB in float16/bfloat16, 880 MB in float32. Upstream
reports, at 1024² on one GPU, 3.5 GB (fp16) / 4.8 GB (fp32) of GPU memory and 58 ms (fp16,
RTX 4090) with torchvision's CUDA deformable kernel; activations grow with the pixel count,
so 2048² (the HR file's size) needs about four times the activation memory. The
`grid_sample` fallback costs more time and holds one (B, C, H, W) float32 sample per tap.
Measured on a CPU (2 cores, float32, the fallback): one 1024² picture took 48 s and peaked at
4.6 GB resident, weights included; expect roughly four times both at 2048².
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

try:  # the CUDA/CPU kernel, when the environment has torchvision
    from torchvision.ops import deform_conv2d as _torchvision_deform_conv2d
except (ImportError, RuntimeError):  # pragma: no cover - absent, or built for another torch
    _torchvision_deform_conv2d = None


@dataclass(frozen=True)
class BiRefNetConfig:
    """The sizes of a BiRefNet; the defaults are the released Swin-L matting networks.

    The switches of upstream's `config.py` that the releases fix (multi-scale input "cat",
    split decoder input, gradient attention, ASPPDeformable decoder blocks, one
    BasicDecBlk squeeze block) are not options here: they are the architecture.

    Attributes:
        input_size: square side pictures are resized to (HR-matting 2048, matting 1024);
            a multiple of 64 (32 for the patch grid, ×2 for the half-size pass).
        embed_dim / depths / num_heads / window_size / mlp_ratio: the Swin v1 backbone.
        context_levels: how many shallower encoder levels are concatenated onto the deepest
            (`cxt_num`).
        decoder_channels: inner channels of the decoder blocks (`dec_channels_inter` fixed).
        aspp_channels: channels of each ASPPDeformable branch.
        aspp_kernel_sizes: kernels of the deformable branches after the 1×1 one.
        input_block_channels: inner channels of the image-patch blocks (`ipt_blk*`).
        gradient_channels: channels of the gradient-attention branch (`gdt_convs_*`).
    """

    input_size: int = 1024
    embed_dim: int = 192
    depths: tuple[int, ...] = (2, 2, 18, 2)
    num_heads: tuple[int, ...] = (6, 12, 24, 48)
    window_size: int = 12
    mlp_ratio: float = 4.0
    context_levels: int = 3
    decoder_channels: int = 64
    aspp_channels: int = 256
    aspp_kernel_sizes: tuple[int, ...] = (1, 3, 7)
    input_block_channels: int = 64
    gradient_channels: int = 16

    @property
    def lateral_channels(self) -> tuple[int, int, int, int]:
        """Encoder channels, deepest first, doubled by the half-size pass ("cat")."""
        widths = [self.embed_dim * 2**level for level in range(len(self.depths))]
        return tuple(2 * width for width in reversed(widths))  # type: ignore[return-value]


BIREFNET_HR_MATTING = BiRefNetConfig(input_size=2048)
"""`ZhengPeng7/BiRefNet_HR-matting`: trained at 2048², its file is float16."""

BIREFNET_MATTING = BiRefNetConfig(input_size=1024)
"""`ZhengPeng7/BiRefNet-matting`: trained at 1024², its file is float32."""

TINY_CONFIG = BiRefNetConfig(
    input_size=64,
    embed_dim=8,
    depths=(2, 2, 2, 2),
    num_heads=(1, 2, 2, 4),
    window_size=4,
    decoder_channels=8,
    aspp_channels=8,
    input_block_channels=8,
    gradient_channels=4,
)
"""A small network of the same layout, for tests (830,524 parameters)."""

PATCH_GRIDS = (32, 16, 8, 4, 1)
"""Patch-grid cells per side of the decoder's image input, deepest level first (the strides
of x4..x1 and of the full-size output); upstream's channel counts 3·2^(10, 8, 6, 4, 0)."""


# ----------------------------------------------------------------------------- Swin v1


class PatchEmbed(nn.Module):
    """4×4 patches → `embed_dim` channels, then LayerNorm; pads to a multiple of 4."""

    def __init__(self, embed_dim: int, patch_size: int = 4) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(3, embed_dim, patch_size, stride=patch_size)
        self.norm = nn.LayerNorm(embed_dim)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) → (B, H/4, W/4, C) channels-last tokens."""
        height, width = pixels.shape[-2:]
        pixels = F.pad(pixels, (0, -width % self.patch_size, 0, -height % self.patch_size))
        return self.norm(self.proj(pixels).permute(0, 2, 3, 1))


class WindowAttention(nn.Module):
    """Multi-head self-attention inside windows, with a learnt relative position bias."""

    def __init__(self, dim: int, window_size: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.relative_position_bias_table = nn.Parameter(
            torch.zeros((2 * window_size - 1) ** 2, num_heads)
        )
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)
        # Persistent: the released files carry it (int64, window² × window²).
        self.register_buffer("relative_position_index", relative_position_index(window_size))
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, windows: torch.Tensor, shift_mask: torch.Tensor | None) -> torch.Tensor:
        """(B, nW, N, C) tokens of nW windows of N each → the same shape.

        `shift_mask` is (nW, N, N), 0 or −inf, for shifted windows (None otherwise).
        """
        batch, count, tokens, channels = windows.shape
        qkv = self.qkv(windows).view(batch, count, tokens, 3, self.num_heads, -1)
        query, key, value = qkv.permute(3, 0, 1, 4, 2, 5).unbind(0)  # (B, nW, heads, N, d)
        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)]
        bias = bias.view(tokens, tokens, -1).permute(2, 0, 1).to(query.dtype)  # (heads, N, N)
        if shift_mask is not None:
            bias = bias + shift_mask.to(query.dtype)[:, None]  # (nW, heads, N, N)
        out = F.scaled_dot_product_attention(query, key, value, attn_mask=bias)
        return self.proj(out.transpose(2, 3).reshape(batch, count, tokens, channels))


def relative_position_index(window_size: int) -> torch.Tensor:
    """(w², w²) int64: the bias-table row of each (query, key) pair of a w×w window."""
    coords = torch.stack(
        torch.meshgrid(torch.arange(window_size), torch.arange(window_size), indexing="ij")
    ).flatten(1)
    delta = (coords[:, :, None] - coords[:, None, :]) + (window_size - 1)  # 2, N, N in [0, 2w-2]
    return delta[0] * (2 * window_size - 1) + delta[1]


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(tokens)))


class SwinBlock(nn.Module):
    """Pre-norm (shifted-)window attention and MLP, each with a residual."""

    def __init__(
        self, dim: int, num_heads: int, window_size: int, shift: int, mlp_ratio: float
    ) -> None:
        super().__init__()
        self.window_size = window_size
        self.shift = shift
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, window_size, num_heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, tokens: torch.Tensor, shift_mask: torch.Tensor) -> torch.Tensor:
        """(B, H, W, C) → the same; `shift_mask` is the stage's mask for the padded size."""
        batch, height, width, channels = tokens.shape
        size = self.window_size
        # Pad after the norm, as upstream does: padded tokens are zeros, not normed zeros.
        hidden = F.pad(self.norm1(tokens), (0, 0, 0, -width % size, 0, -height % size))
        if self.shift:
            hidden = torch.roll(hidden, (-self.shift, -self.shift), dims=(1, 2))
        padded_h, padded_w = hidden.shape[1:3]
        windows = hidden.view(batch, padded_h // size, size, padded_w // size, size, channels)
        windows = windows.permute(0, 1, 3, 2, 4, 5).reshape(batch, -1, size * size, channels)
        windows = self.attn(windows, shift_mask if self.shift else None)
        hidden = windows.view(batch, padded_h // size, padded_w // size, size, size, channels)
        hidden = hidden.permute(0, 1, 3, 2, 4, 5).reshape(batch, padded_h, padded_w, channels)
        if self.shift:
            hidden = torch.roll(hidden, (self.shift, self.shift), dims=(1, 2))
        tokens = tokens + hidden[:, :height, :width]
        return tokens + self.mlp(self.norm2(tokens))


class PatchMerging(nn.Module):
    """2×2 neighbours → one token: concat (in upstream's order), LayerNorm, 4C → 2C."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(4 * dim)
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        height, width = tokens.shape[1:3]
        tokens = F.pad(tokens, (0, 0, 0, width % 2, 0, height % 2))
        merged = torch.cat(
            [
                tokens[:, 0::2, 0::2],
                tokens[:, 1::2, 0::2],
                tokens[:, 0::2, 1::2],
                tokens[:, 1::2, 1::2],
            ],
            dim=-1,
        )
        return self.reduction(self.norm(merged))


class SwinStage(nn.Module):
    def __init__(
        self,
        dim: int,
        depth: int,
        num_heads: int,
        window_size: int,
        mlp_ratio: float,
        downsample: bool,
    ) -> None:
        super().__init__()
        self.window_size = window_size
        self.blocks = nn.ModuleList(
            SwinBlock(dim, num_heads, window_size, window_size // 2 if index % 2 else 0, mlp_ratio)
            for index in range(depth)
        )
        # No module (and so no keys) on the last stage, as upstream's `downsample = None`.
        self.downsample = PatchMerging(dim) if downsample else None

    def forward(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, H, W, C) → (this stage's output, the input of the next one)."""
        mask = shift_window_mask(*tokens.shape[1:3], self.window_size, tokens.device)
        for block in self.blocks:
            tokens = block(tokens, mask)
        following = self.downsample(tokens) if self.downsample is not None else tokens
        return tokens, following


def shift_window_mask(
    height: int, width: int, window_size: int, device: torch.device
) -> torch.Tensor:
    """(nW, w², w²) additive mask: −inf between tokens from different regions after the roll."""
    shift = window_size // 2
    padded_h = math.ceil(height / window_size) * window_size
    padded_w = math.ceil(width / window_size) * window_size
    regions = torch.zeros(padded_h, padded_w, device=device)
    bands = (slice(0, -window_size), slice(-window_size, -shift), slice(-shift, None))
    for row, rows in enumerate(bands):
        for column, columns in enumerate(bands):
            regions[rows, columns] = 3 * row + column
    labels = regions.view(
        padded_h // window_size, window_size, padded_w // window_size, window_size
    )
    labels = labels.permute(0, 2, 1, 3).reshape(-1, window_size * window_size)
    differs = labels[:, None, :] != labels[:, :, None]
    return torch.zeros(differs.shape, device=device).masked_fill(differs, float("-inf"))


class SwinBackbone(nn.Module):
    """Swin Transformer v1 as BiRefNet uses it: four stages, each output LayerNormed."""

    def __init__(self, config: BiRefNetConfig) -> None:
        super().__init__()
        levels = len(config.depths)
        self.patch_embed = PatchEmbed(config.embed_dim)
        self.layers = nn.ModuleList(
            SwinStage(
                config.embed_dim * 2**level,
                config.depths[level],
                config.num_heads[level],
                config.window_size,
                config.mlp_ratio,
                downsample=level < levels - 1,
            )
            for level in range(levels)
        )
        for level in range(levels):
            self.add_module(f"norm{level}", nn.LayerNorm(config.embed_dim * 2**level))

    def forward(self, pixels: torch.Tensor) -> list[torch.Tensor]:
        """(B, 3, H, W) → four (B, C_i, H/2^(i+2), W/2^(i+2)) maps, shallowest first."""
        tokens = self.patch_embed(pixels)
        outputs = []
        for level, stage in enumerate(self.layers):
            output, tokens = stage(tokens)
            output = getattr(self, f"norm{level}")(output)
            outputs.append(output.permute(0, 3, 1, 2).contiguous())
        return outputs


# ----------------------------------------------------------------- deformable convolution


def deform_conv2d(
    pixels: torch.Tensor,
    offset: torch.Tensor,
    weight: torch.Tensor,
    mask: torch.Tensor,
    padding: int,
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """Modulated deformable convolution (DCNv2), stride 1, dilation 1, one offset group.

    Same arguments and layout as `torchvision.ops.deform_conv2d`: `offset` is
    (B, 2·k², H', W') with (dy, dx) per kernel tap in row-major tap order, `mask` (B, k², H', W').
    Samples outside the picture read as zero.
    """
    if _torchvision_deform_conv2d is not None:
        return _torchvision_deform_conv2d(
            pixels, offset, weight, bias, padding=(padding, padding), mask=mask
        )
    # Sampling positions in float32: in float16/bfloat16 a coordinate near 512 (the x1 level
    # at 2048²) would be off by up to a pixel or more.
    dtype = pixels.dtype
    pixels, offset, weight, mask = (t.float() for t in (pixels, offset, weight, mask))
    batch, _, height, width = pixels.shape
    out_channels, _, kernel_h, kernel_w = weight.shape
    out_h, out_w = offset.shape[-2:]
    base_y = torch.arange(out_h, device=pixels.device, dtype=torch.float32).view(1, -1, 1)
    base_x = torch.arange(out_w, device=pixels.device, dtype=torch.float32).view(1, 1, -1)
    out = pixels.new_zeros(batch, out_channels, out_h, out_w)
    for tap in range(kernel_h * kernel_w):
        row, column = divmod(tap, kernel_w)
        y = base_y + (row - padding) + offset[:, 2 * tap]
        x = base_x + (column - padding) + offset[:, 2 * tap + 1]
        # align_corners=False maps pixel centre i to (2i + 1) / size − 1; fine for size 1 too.
        grid = torch.stack([(2 * x + 1) / width - 1, (2 * y + 1) / height - 1], dim=-1)
        sampled = F.grid_sample(
            pixels, grid, mode="bilinear", padding_mode="zeros", align_corners=False
        )
        sampled = sampled * mask[:, tap : tap + 1]
        out = out + torch.einsum("bchw,oc->bohw", sampled, weight[:, :, row, column])
    if bias is not None:
        out = out + bias.float().view(1, -1, 1, 1)
    return out.to(dtype)


class DeformableConv2d(nn.Module):
    """Upstream's `DeformableConv2d`: convs predict offsets and a 2·sigmoid modulation."""

    def __init__(self, channels_in: int, channels_out: int, kernel_size: int, padding: int) -> None:
        super().__init__()
        self.padding = padding
        taps = kernel_size * kernel_size
        self.offset_conv = nn.Conv2d(channels_in, 2 * taps, kernel_size, padding=padding)
        self.modulator_conv = nn.Conv2d(channels_in, taps, kernel_size, padding=padding)
        # Zero offsets and modulation 1 at the start, as upstream initialises them.
        for conv in (self.offset_conv, self.modulator_conv):
            nn.init.zeros_(conv.weight)
            nn.init.zeros_(conv.bias)
        self.regular_conv = nn.Conv2d(
            channels_in, channels_out, kernel_size, padding=padding, bias=False
        )

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        offset = self.offset_conv(hidden)
        modulation = 2 * torch.sigmoid(self.modulator_conv(hidden))
        return deform_conv2d(hidden, offset, self.regular_conv.weight, modulation, self.padding)


# ------------------------------------------------------------------------------ decoder


class DeformableBranch(nn.Module):
    """`_ASPPModuleDeformable`: deformable conv (no bias) → BatchNorm → ReLU."""

    def __init__(self, channels_in: int, channels_out: int, kernel_size: int) -> None:
        super().__init__()
        self.atrous_conv = DeformableConv2d(
            channels_in, channels_out, kernel_size, padding=kernel_size // 2
        )
        self.bn = nn.BatchNorm2d(channels_out)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.atrous_conv(hidden)))


class ASPPDeformable(nn.Module):
    """A 1×1 branch, deformable k×k branches and a global-pooling branch, fused by a 1×1 conv."""

    def __init__(self, channels: int, branch_channels: int, kernel_sizes: Sequence[int]) -> None:
        super().__init__()
        self.aspp1 = DeformableBranch(channels, branch_channels, 1)
        self.aspp_deforms = nn.ModuleList(
            DeformableBranch(channels, branch_channels, size) for size in kernel_sizes
        )
        self.global_avg_pool = nn.Sequential(
            nn.AdaptiveAvgPool2d(1),
            nn.Conv2d(channels, branch_channels, 1, bias=False),
            nn.BatchNorm2d(branch_channels),
            nn.ReLU(),
        )
        self.conv1 = nn.Conv2d(branch_channels * (2 + len(kernel_sizes)), channels, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        branches = [self.aspp1(hidden), *(branch(hidden) for branch in self.aspp_deforms)]
        pooled = self.global_avg_pool(hidden)
        # A 1×1 map resized (align_corners) is a broadcast.
        branches.append(pooled.expand(-1, -1, *branches[0].shape[-2:]))
        return F.relu(self.bn1(self.conv1(torch.cat(branches, dim=1))))  # dropout: training only


class BasicDecBlk(nn.Module):
    """3×3 conv → BN → ReLU → ASPPDeformable → 3×3 conv → BN (no activation at the end)."""

    def __init__(self, channels_in: int, channels_out: int, config: BiRefNetConfig) -> None:
        super().__init__()
        inner = config.decoder_channels
        self.conv_in = nn.Conv2d(channels_in, inner, 3, padding=1)
        self.bn_in = nn.BatchNorm2d(inner)
        self.dec_att = ASPPDeformable(inner, config.aspp_channels, config.aspp_kernel_sizes)
        self.conv_out = nn.Conv2d(inner, channels_out, 3, padding=1)
        self.bn_out = nn.BatchNorm2d(channels_out)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        hidden = self.dec_att(F.relu(self.bn_in(self.conv_in(hidden))))
        return self.bn_out(self.conv_out(hidden))


class BasicLatBlk(nn.Module):
    """The lateral connection: a 1×1 conv."""

    def __init__(self, channels_in: int, channels_out: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels_in, channels_out, 1)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.conv(hidden)


class SimpleConvs(nn.Module):
    """Two 3×3 convs, no activation: the image-patch input of a decoder level."""

    def __init__(self, channels_in: int, channels_out: int, inner: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels_in, inner, 3, padding=1)
        self.conv_out = nn.Conv2d(inner, channels_out, 3, padding=1)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.conv_out(self.conv1(hidden))


def image_to_patches(pixels: torch.Tensor, grid_h: int, grid_w: int) -> torch.Tensor:
    """(B, C, gh·h, gw·w) → (B, C·gh·gw, h, w): channel c·gh·gw + i·gw + j is cell (i, j)."""
    batch, channels, height, width = pixels.shape
    cells = pixels.view(batch, channels, grid_h, height // grid_h, grid_w, width // grid_w)
    return cells.permute(0, 1, 2, 4, 3, 5).reshape(
        batch, channels * grid_h * grid_w, height // grid_h, width // grid_w
    )


def _resize(hidden: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    if tuple(hidden.shape[-2:]) == tuple(size):
        return hidden  # upstream's align_corners resize to the same size is the identity
    return F.interpolate(hidden, size=tuple(size), mode="bilinear", align_corners=True)


class Decoder(nn.Module):
    """Four levels, deepest first; levels 4..2 gated by gradient attention."""

    def __init__(self, config: BiRefNetConfig) -> None:
        super().__init__()
        lateral = config.lateral_channels  # deepest first: x4, x3, x2, x1
        patch_in = [3 * grid * grid for grid in PATCH_GRIDS]
        patch_out = [channels // 8 for channels in lateral]
        # ipt_blk5/4 share the first width, ipt_blk3/2/1 take the next ones (upstream's
        # `max(0, i - 1)`).
        patch_out_of_block = [patch_out[0], patch_out[0], patch_out[1], patch_out[2], patch_out[3]]
        for index, block in enumerate((5, 4, 3, 2, 1)):
            self.add_module(
                f"ipt_blk{block}",
                SimpleConvs(
                    patch_in[index], patch_out_of_block[index], config.input_block_channels
                ),
            )
        decoder_out = [*lateral[1:], lateral[-1] // 2]
        for index, level in enumerate((4, 3, 2, 1)):
            channels_in = lateral[index] + patch_out_of_block[index]
            self.add_module(
                f"decoder_block{level}", BasicDecBlk(channels_in, decoder_out[index], config)
            )
        self.conv_out1 = nn.Sequential(nn.Conv2d(decoder_out[3] + patch_out[3], 1, 1))
        for index, level in enumerate((4, 3, 2)):
            self.add_module(
                f"lateral_block{level}", BasicLatBlk(lateral[index + 1], decoder_out[index])
            )
        for index, level in enumerate((4, 3, 2)):
            # Side outputs and gradient predictions only train; kept for the checkpoints' keys.
            self.add_module(f"conv_ms_spvn_{level}", nn.Conv2d(decoder_out[index], 1, 1))
        gradient = config.gradient_channels
        for index, level in enumerate((4, 3, 2)):
            self.add_module(
                f"gdt_convs_{level}",
                nn.Sequential(
                    nn.Conv2d(decoder_out[index], gradient, 3, padding=1),
                    nn.BatchNorm2d(gradient),
                    nn.ReLU(),
                ),
            )
        for prefix in ("gdt_convs_pred_", "gdt_convs_attn_"):
            for level in (4, 3, 2):
                self.add_module(f"{prefix}{level}", nn.Sequential(nn.Conv2d(gradient, 1, 1)))

    def _with_patches(self, pixels: torch.Tensor, hidden: torch.Tensor, block: int) -> torch.Tensor:
        """Concatenate the picture's patch grid, at `hidden`'s size, through `ipt_blk{block}`."""
        size = hidden.shape[-2:]
        grid_h, grid_w = pixels.shape[-2] // size[0], pixels.shape[-1] // size[1]
        patches = _resize(image_to_patches(pixels, grid_h, grid_w), size)
        return torch.cat([hidden, getattr(self, f"ipt_blk{block}")(patches)], dim=1)

    def _gate(self, hidden: torch.Tensor, level: int) -> torch.Tensor:
        gradient = getattr(self, f"gdt_convs_{level}")(hidden)
        return hidden * torch.sigmoid(getattr(self, f"gdt_convs_attn_{level}")(gradient))

    def forward(self, pixels: torch.Tensor, features: Sequence[torch.Tensor]) -> torch.Tensor:
        x1, x2, x3, x4 = features
        hidden = self._gate(self.decoder_block4(self._with_patches(pixels, x4, 5)), 4)
        for level, skip, block in ((3, x3, 4), (2, x2, 3)):
            hidden = _resize(hidden, skip.shape[-2:]) + getattr(self, f"lateral_block{level + 1}")(
                skip
            )
            hidden = getattr(self, f"decoder_block{level}")(
                self._with_patches(pixels, hidden, block)
            )
            hidden = self._gate(hidden, level)
        hidden = _resize(hidden, x1.shape[-2:]) + self.lateral_block2(x1)
        hidden = self.decoder_block1(self._with_patches(pixels, hidden, 2))
        hidden = _resize(hidden, pixels.shape[-2:])
        return self.conv_out1(self._with_patches(pixels, hidden, 1))


# ------------------------------------------------------------------------------ network


class BiRefNet(nn.Module):
    """BiRefNet with a Swin v1 backbone: `bb`, `squeeze_module`, `decoder`, as upstream names them.

    Args:
        config: the sizes; `BIREFNET_HR_MATTING`, `BIREFNET_MATTING` or `TINY_CONFIG`.
    """

    def __init__(self, config: BiRefNetConfig = BIREFNET_MATTING) -> None:
        super().__init__()
        if config.input_size % 64:
            raise ValueError(f"input_size must be a multiple of 64, got {config.input_size}")
        self.config = config
        self.input_size = config.input_size
        lateral = config.lateral_channels
        context = sum(lateral[1:][::-1][-config.context_levels :]) if config.context_levels else 0
        self.bb = SwinBackbone(config)
        self.squeeze_module = nn.Sequential(BasicDecBlk(lateral[0] + context, lateral[0], config))
        self.decoder = Decoder(config)

    def encode(self, pixels: torch.Tensor) -> list[torch.Tensor]:
        """The four encoder maps, each concatenated with the half-size pass; x4 with context."""
        height, width = pixels.shape[-2:]
        full = self.bb(pixels)
        half = F.interpolate(
            pixels, size=(height // 2, width // 2), mode="bilinear", align_corners=True
        )
        features = [
            torch.cat([level, _resize(small, level.shape[-2:])], dim=1)
            for level, small in zip(full, self.bb(half), strict=True)
        ]
        *shallower, deepest = features
        if self.config.context_levels:
            context = [_resize(level, deepest.shape[-2:]) for level in shallower]
            deepest = torch.cat([*context[-self.config.context_levels :], deepest], dim=1)
        return [*shallower, self.squeeze_module(deepest)]

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) ImageNet-normalised RGB → (B, 1, S, S) logits (the finest prediction)."""
        return self.decoder(pixels, self.encode(pixels))


# ------------------------------------------------------------------------------ loading


class CheckpointMismatchError(ValueError):
    """The weights do not fit the network: names or shapes differ."""


def load_birefnet(
    source: str | Path | Mapping[str, torch.Tensor],
    config: BiRefNetConfig = BIREFNET_HR_MATTING,
    *,
    dtype: torch.dtype = torch.float16,
    device: torch.device | str = "cpu",
) -> BiRefNet:
    """Build BiRefNet and load released weights into it strictly, for inference.

    Args:
        source: a `.safetensors` path or a state dict.
        config: the network the file is for (its `input_size` is the picture size used).
        dtype: the floating dtype to run in (float16, bfloat16 or float32); int64 buffers
            stay int64.
        device: where the weights go.

    Returns:
        The network in eval mode, without gradients.

    Raises:
        CheckpointMismatchError: a key is missing or unexpected, or a shape differs; the
            message names them.
    """
    if not dtype.is_floating_point:
        raise ValueError(f"dtype must be floating point, got {dtype}")
    if isinstance(source, Mapping):
        state = dict(source)
    else:
        from safetensors.torch import load_file

        state = load_file(str(source), device="cpu")
    with torch.device("meta"):
        model = BiRefNet(config)
    _check_state(model, state)
    state = {
        name: tensor.to(device, dtype if tensor.is_floating_point() else tensor.dtype)
        for name, tensor in state.items()
    }
    model.load_state_dict(state, strict=True, assign=True)
    return model.eval().requires_grad_(False)


def _check_state(model: nn.Module, state: Mapping[str, torch.Tensor]) -> None:
    expected = {name: tuple(tensor.shape) for name, tensor in model.state_dict().items()}
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = sorted(
        f"{name}: file {tuple(state[name].shape)}, network {expected[name]}"
        for name in set(expected) & set(state)
        if tuple(state[name].shape) != expected[name]
    )
    if missing or unexpected or wrong:
        parts = []
        for label, items in (("missing", missing), ("unexpected", unexpected), ("shape", wrong)):
            if items:
                shown = ", ".join(items[:5]) + (
                    f", … ({len(items)} in all)" if len(items) > 5 else ""
                )
                parts.append(f"{label}: {shown}")
        raise CheckpointMismatchError(
            "the weights do not fit this BiRefNet configuration; " + "; ".join(parts)
        )
