"""SDXL layer models: the released `layer_xl_*` files merged into a diffusers UNet, reversibly.

One entry point serves all six SDXL files (layerdiffuse.md §1.1, §3, §4); the kind is
read from the keys:

- `lora`: `layer_xl_transparent_attn`, rank-256 LoRA pairs on attention q/k/v/out;
- `diff`: `layer_xl_transparent_conv`, full deltas on every weight but q/k/v and the
  embedding MLPs;
- `conditional`: `layer_xl_{fg2ble,bg2ble,fgble2bg,bgble2fg}`, deltas whose conv_in is
  wider (8 or 12 input channels) because the UNet also sees condition latents.

The merge is Forge's (§3.2): in float32, `W + weight·(up @ down)` or `W + weight·Δ`,
cast back; a wider conv_in delta is added over zeros holding `W` in its leading input
channels. The merged tensors are new parameters swapped in for the originals, which
the handle keeps: switching back (Stop At) and detaching reinstall the very same
tensors, bit-exact in any dtype. A conditional file also swaps `unet.conv_in` for a
`ConcatConvIn` that prepends the sample to the condition; `unet.config.in_channels`
stays 4, as pipelines size the noise from it.

Memory: the originals are a second copy of every patched parameter. In the released
fp16 files that is 1.91 GB (attn: 955,187,200 dense q/k/v/out weights), 3.62 GB (conv,
bgble2fg) or 0.70 GB (fg2ble, bg2ble, fgble2bg). `originals_on="cpu"` keeps that copy
in host memory instead: attaching moves each original out as its merged tensor comes
in (one extra tensor on the device at a time), and each switch and the detach copy the
tensors across again. conv_in's few thousand parameters stay on the device either way.

Attach with the UNet on its final device and dtype, do not move it while attached, and
attach one layer model at a time (a second conditional one is refused).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Literal

import torch
from torch import nn

from .sdxl_keys import (
    DiffPatch,
    LoRAPatch,
    WeightPatch,
    ldm_name_table,
    parse_frozen_patches,
    read_unet_layout,
)

OriginalsPlace = Literal["device", "cpu"]


class SDXLLayerKind(str, Enum):
    """What an SDXL layer file patches, read from its keys."""

    LORA = "lora"
    DIFF = "diff"
    CONDITIONAL = "conditional"


class ConcatConvIn(nn.Conv2d):
    """A widened conv_in applied to `cat([sample, condition], dim=1)`.

    Its parameters are named `weight` and `bias` like conv_in's, so the UNet's
    state-dict keys do not change while it is installed (only conv_in's shape).

    Attributes:
        sample_channels: channels of the sample the UNet is called with (4).
        condition: (1 or B, in_channels − sample_channels, h, w) scaled latents, or None.
    """

    def __init__(
        self, original: nn.Conv2d, weight: torch.Tensor, bias: torch.Tensor | None
    ) -> None:
        """Wrap merged tensors as a conv shaped like `original` but for `weight.shape[1]` inputs.

        Args:
            original: the UNet's own conv_in (read for its geometry only).
            weight: (out, C + condition channels, kh, kw), the merged weight.
            bias: (out,), the merged bias, or None.
        """
        super().__init__(
            weight.shape[1],
            original.out_channels,
            original.kernel_size,
            stride=original.stride,
            padding=original.padding,
            dilation=original.dilation,
            groups=original.groups,
            bias=bias is not None,
            padding_mode=original.padding_mode,
            device="meta",  # replaced below, no init
        )
        grad = original.weight.requires_grad
        self.weight = nn.Parameter(weight, requires_grad=grad)
        self.bias = None if bias is None else nn.Parameter(bias, requires_grad=grad)
        self.sample_channels = original.in_channels
        self.condition: torch.Tensor | None = None

    def forward(self, sample: torch.Tensor) -> torch.Tensor:
        """conv_in of the sample with the condition appended on the channel axis.

        Args:
            sample: (N, sample_channels, h, w), already scaled by the scheduler.
                The condition's batch B must divide N: batch 1 is shared by every row,
                and B rows repeat over N / B groups (the CFG halves `[uncond, cond]`).

        Raises:
            ValueError: no condition is set, or channels, size or batch do not fit.
        """
        condition = self.condition
        if condition is None:
            raise ValueError("this layer model needs condition latents: call set_condition() first")
        if sample.shape[1] != self.sample_channels:
            raise ValueError(
                f"sample has {sample.shape[1]} channels, expected {self.sample_channels}"
            )
        if condition.shape[2:] != sample.shape[2:]:
            size, expected = tuple(condition.shape[2:]), tuple(sample.shape[2:])
            raise ValueError(
                f"condition latents of size {size} do not match the sample's {expected}"
            )
        rows, batch = sample.shape[0], condition.shape[0]
        if rows % batch:
            raise ValueError(
                f"sample batch {rows} is not a multiple of the condition batch {batch}"
            )
        condition = condition.to(device=sample.device, dtype=sample.dtype)
        if rows != batch:
            condition = condition.repeat(rows // batch, 1, 1, 1)
        return super().forward(torch.cat([sample, condition], dim=1))


@dataclass
class ParameterSwap:
    """One parameter slot and the two tensors that take turns in it (the SDXL layer files
    here, any LoRA in `backend.loras`)."""

    module: nn.Module
    name: str
    original: nn.Parameter
    patched: nn.Parameter
    device: torch.device

    def install(self, patched: bool, on_cpu: bool) -> None:
        """Put one tensor in the slot; with `on_cpu`, the other waits in host memory."""
        install, keep = (self.patched, self.original) if patched else (self.original, self.patched)
        if on_cpu:  # the device copy goes first: one extra tensor at most
            keep.data = keep.data.to("cpu")
            install.data = install.data.to(self.device)
        setattr(self.module, self.name, install)


class SDXLLayerHandle:
    """An SDXL layer file merged into a UNet; `set_active` and `detach` swap tensors back.

    Attributes:
        unet: the patched UNet.
        kind: lora, diff or conditional.
        condition_channels: channels `set_condition` takes (4 or 8; 0 unless conditional).
        patched_names: the diffusers parameter names the file changes.
    """

    def __init__(
        self,
        unet: nn.Module,
        kind: SDXLLayerKind,
        swaps: list[ParameterSwap],
        conv_in: ConcatConvIn | None,
        original_conv_in: nn.Module,
        originals_on: OriginalsPlace,
        patched_names: tuple[str, ...],
    ) -> None:
        """Take over swaps already installed by `attach_sdxl_layer_model`; it is active."""
        self.unet = unet
        self.kind = kind
        self.patched_names = patched_names
        self._swaps = swaps
        self._conv_in = conv_in
        self._original_conv_in = original_conv_in
        self._on_cpu = originals_on == "cpu"
        self._active = True
        self._detached = False

    @property
    def condition_channels(self) -> int:
        """Channels of the condition latents (4 or 8), 0 for a file without condition."""
        if self._conv_in is None:
            return 0
        return self._conv_in.in_channels - self._conv_in.sample_channels

    @property
    def active(self) -> bool:
        """Whether the UNet currently computes with the merged weights."""
        return self._active

    @torch.no_grad()
    def set_active(self, active: bool) -> None:
        """Swap in the merged weights (True) or the originals and plain conv_in (False).

        This is Stop At: no arithmetic, only tensors changing places (and, with
        `originals_on="cpu"`, copied between host and device).

        Raises:
            RuntimeError: the handle was detached.
        """
        if self._detached:
            raise RuntimeError("the layer model was detached")
        if active == self._active:
            return
        for swap in self._swaps:
            swap.install(active, self._on_cpu)
        if self._conv_in is not None:
            self.unet.conv_in = self._conv_in if active else self._original_conv_in
        self._active = active

    def set_condition(self, latents: torch.Tensor) -> None:
        """Set the condition latents a conditional file was trained with.

        Args:
            latents: (1 or B, condition_channels, h, w), VAE latents × scaling_factor,
                not noised: fg2ble/bg2ble `[fg]`/`[bg]`, fgble2bg `cat([fg, blend])`,
                bgble2fg `cat([bg, blend])`. Cast to the sample's dtype at each call.

        Raises:
            ValueError: the file is not conditional, or the channels do not fit.
        """
        if self._conv_in is None:
            raise ValueError(f"this layer model takes no condition: it is a {self.kind.value} file")
        if latents.ndim != 4 or latents.shape[1] != self.condition_channels:
            raise ValueError(
                f"condition latents of shape {tuple(latents.shape)}: this layer model takes "
                f"(B, {self.condition_channels}, h, w)"
            )
        self._conv_in.condition = latents.detach()

    def detach(self) -> None:
        """Put the original parameters and conv_in back; the UNet is as it was attached."""
        if self._detached:
            return
        self.set_active(False)
        if self._conv_in is not None:
            self._conv_in.condition = None
        self._swaps = []
        self._detached = True


@torch.no_grad()
def attach_sdxl_layer_model(
    unet: nn.Module,
    state_dict: Mapping[str, torch.Tensor],
    weight: float = 1.0,
    *,
    originals_on: OriginalsPlace = "device",
) -> SDXLLayerHandle:
    """Merge a released `layer_xl_*` file (Forge key format) into an SDXL-structured UNet.

    Every key must name a parameter of `unet` with a fitting shape; nothing is
    changed before all of them are checked.

    Args:
        unet: a diffusers `UNet2DConditionModel` with the SDXL block layout (any
            width), already on its final device and dtype.
        state_dict: the file's tensors (any device; float16 when released).
        weight: the UI's Weight (0–2): the patches' scale.
        originals_on: where the unpatched tensors wait: "device" (fast switching,
            double memory for the patched parameters) or "cpu" (host memory, copied
            back at each switch and at detach).

    Returns:
        The handle, active: `set_condition(latents)`, `set_active(bool)`, `detach()`.

    Raises:
        ValueError: unknown or malformed keys, shapes that do not fit, a bad
            `originals_on`.
    """
    if originals_on not in ("device", "cpu"):
        raise ValueError(f"originals_on {originals_on!r} is not 'device' or 'cpu'")
    if not state_dict:
        raise ValueError("the layer model's state dict is empty")
    parameters = dict(unet.named_parameters())
    table = ldm_name_table(parameters, read_unet_layout(unet.config))
    patches = parse_frozen_patches(state_dict, table)
    widened = check_patch_shapes(patches, parameters)
    patched_names = tuple(sorted(patches))
    if widened:
        kind = SDXLLayerKind.CONDITIONAL
    elif all(isinstance(patch, LoRAPatch) for patch in patches.values()):
        kind = SDXLLayerKind.LORA
    else:
        kind = SDXLLayerKind.DIFF

    original_conv_in = unet.get_submodule("conv_in")
    if isinstance(original_conv_in, ConcatConvIn):
        raise ValueError("the UNet already has a conditional layer model: detach it first")
    conv_in = None
    if widened:
        bias = original_conv_in.bias
        if bias is not None:
            bias = merged_tensor(bias, patches.pop("conv_in.bias", None), weight)
        merged_weight = merged_tensor(
            original_conv_in.weight, patches.pop("conv_in.weight"), weight
        )
        conv_in = ConcatConvIn(original_conv_in, merged_weight, bias)

    on_cpu = originals_on == "cpu"
    swaps: list[ParameterSwap] = []
    try:  # install one by one, so that "cpu" never holds two copies on the device
        for name, patch in patches.items():
            module_name, _, attribute = name.rpartition(".")
            original = parameters[name]
            merged = nn.Parameter(
                merged_tensor(original, patch, weight), requires_grad=original.requires_grad
            )
            module = unet.get_submodule(module_name)
            swaps.append(ParameterSwap(module, attribute, original, merged, original.device))
            swaps[-1].install(True, on_cpu)
    except BaseException:  # out of memory midway: leave the UNet as it was
        for swap in swaps:
            swap.install(False, on_cpu)
        raise
    if conv_in is not None:
        unet.conv_in = conv_in
    return SDXLLayerHandle(
        unet, kind, swaps, conv_in, original_conv_in, originals_on, patched_names
    )


def check_patch_shapes(
    patches: Mapping[str, WeightPatch], parameters: Mapping[str, torch.Tensor]
) -> bool:
    """Check every patch against its parameter; True when conv_in's delta is wider.

    Raises:
        ValueError: a LoRA pair or a diff that does not fit its parameter.
    """
    widened = False
    for name, patch in patches.items():
        shape = tuple(parameters[name].shape)
        if isinstance(patch, LoRAPatch):
            up, down = patch.up, patch.down
            fits = (
                up.ndim >= 2
                and down.ndim >= 2
                and math.prod(up.shape[1:]) == down.shape[0]
                and up.shape[0] == shape[0]
                and math.prod(down.shape[1:]) == math.prod(shape[1:])
            )
            if not fits:
                raise ValueError(
                    f"{name}: lora up {tuple(up.shape)} @ down {tuple(down.shape)} does not fit "
                    f"the parameter's {shape}"
                )
            continue
        delta = tuple(patch.delta.shape)
        if delta == shape:
            continue
        wider = (
            name == "conv_in.weight"
            and len(delta) == len(shape) == 4
            and delta[0] == shape[0]
            and delta[2:] == shape[2:]
            and delta[1] > shape[1]
        )
        if not wider:
            raise ValueError(f"{name}: diff of shape {delta} does not fit the parameter's {shape}")
        widened = True
    return widened


def merged_tensor(base: torch.Tensor, patch: WeightPatch | None, weight: float) -> torch.Tensor:
    """`base + weight·delta` in float32, cast to `base`'s dtype, on its device; a new tensor.

    A wider conv delta (N, C', kh, kw) is added to zeros of its shape holding `base`
    in input channels [0, C).
    """
    if patch is None:
        return base.detach().clone()
    device = base.device
    if isinstance(patch, DiffPatch):
        delta = patch.delta.to(device=device, dtype=torch.float32, copy=True)
    else:
        up = patch.up.flatten(1).to(device=device, dtype=torch.float32)
        down = patch.down.flatten(1).to(device=device, dtype=torch.float32)
        delta = (up @ down).reshape(base.shape)
    if delta.shape == base.shape:
        merged = base.detach().to(torch.float32, copy=True)
    else:
        merged = torch.zeros(delta.shape, device=device, dtype=torch.float32)
        merged[:, : base.shape[1]] = base.detach()
    return merged.add_(delta.mul_(weight)).to(base.dtype)
