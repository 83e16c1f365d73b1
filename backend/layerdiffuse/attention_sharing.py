"""SD1.5 attention sharing: the released `layer_sd15_*` files on a diffusers UNet.

One file format serves four models (layerdiffuse.md §5): `transparent_attn`
(1 frame), `joint` (3 frames: foreground, background, blend), `fg2bg` and `bg2fg`
(2 frames plus a control image). Each of the 32 attention modules of the UNet's
first transformer blocks gets a unit with, per frame, LoRA deltas on q/k/v/out,
then a "temporal" attention across the frames at every token, and with a control
image, a per-frame projection of that image's features added to the input.

Frames are interleaved in the batch, fastest-varying: rows are
[f0, f1, (f2), f0, f1, …]. Cross-attention rows pair with the same rows of
`encoder_hidden_states`, so per-layer prompts are simply per-row contexts.

`attach_sd15_layer_model` installs the units as attention processors; the UNet's
own weights are never written, and `detach()` puts its processors back.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace

import torch
import torch.nn.functional as F
from torch import nn

# The reference's unit order (its `module_mapping_sd15`), as diffusers module paths:
# ldm input_blocks 1,2,4,5,7,8 → down_blocks; output_blocks 3..11 → up_blocks 1..3;
# middle_block last. Each entry is attn1 then attn2 of transformer_blocks.0.
_SD15_TRANSFORMERS = (
    [f"down_blocks.{block}.attentions.{i}" for block in range(3) for i in range(2)]
    + [f"up_blocks.{block}.attentions.{i}" for block in range(1, 4) for i in range(3)]
    + ["mid_block.attentions.0"]
)
SD15_ATTENTION_UNITS: tuple[str, ...] = tuple(
    f"{transformer}.transformer_blocks.0.{attn}"
    for transformer in _SD15_TRANSFORMERS
    for attn in ("attn1", "attn2")
)

RELEASED_CONTROL_CHANNELS = (32, 64, 128, 256)


class LoRAPair(nn.Module):
    """`W + up @ down` at scale 1; keys `down.weight` [rank, in], `up.weight` [out, rank]."""

    def __init__(self, in_features: int, out_features: int, rank: int) -> None:
        super().__init__()
        self.down = nn.Linear(in_features, rank, bias=False)
        self.up = nn.Linear(rank, out_features, bias=False)

    def merged_with(self, weight: torch.Tensor) -> torch.Tensor:
        """`weight + up @ down`, computed in float32, returned in `weight`'s dtype."""
        delta = self.up.weight.float() @ self.down.weight.float()
        return (weight.float() + delta.to(weight.device)).to(weight.dtype)


class AttentionSharingUnit(nn.Module):
    """The parameters of one shared attention module, named as in the released files.

    Args:
        query_dim: channels of the hidden states (C).
        context_dim: channels of the keys' and values' input (C, or 768 for attn2).
        inner_dim: output channels of q, k and v.
        frames: images diffused together.
        rank: LoRA rank (256 in the released files).
        control_channels: channels of the control features, or None without control.
    """

    def __init__(
        self,
        query_dim: int,
        context_dim: int,
        inner_dim: int,
        frames: int,
        rank: int,
        control_channels: int | None,
    ) -> None:
        super().__init__()
        self.frames = frames
        self.to_q_lora = nn.ModuleList(LoRAPair(query_dim, inner_dim, rank) for _ in range(frames))
        self.to_k_lora = nn.ModuleList(
            LoRAPair(context_dim, inner_dim, rank) for _ in range(frames)
        )
        self.to_v_lora = nn.ModuleList(
            LoRAPair(context_dim, inner_dim, rank) for _ in range(frames)
        )
        self.to_out_lora = nn.ModuleList(
            LoRAPair(inner_dim, query_dim, rank) for _ in range(frames)
        )
        hidden = inner_dim
        self.temporal_i = nn.Linear(hidden, hidden)
        self.temporal_n = nn.LayerNorm(hidden, eps=1e-6)
        self.temporal_q = nn.Linear(hidden, hidden)
        self.temporal_k = nn.Linear(hidden, hidden)
        self.temporal_v = nn.Linear(hidden, hidden)
        self.temporal_o = nn.Linear(hidden, hidden)
        self.control_convs: nn.ModuleList | None = None
        if control_channels is not None:
            self.control_convs = nn.ModuleList(
                nn.Sequential(
                    nn.Conv2d(control_channels, control_channels, kernel_size=3, padding=1),
                    nn.SiLU(),
                    nn.Conv2d(control_channels, hidden, kernel_size=1),
                )
                for _ in range(frames)
            )


class ControlEncoder(nn.Module):
    """Features of the control image at latent/1, /2, /4 and /8 resolution.

    The reference's `AdditionalAttentionCondsEncoder` (layerdiffuse.md §5.3); keys
    `blocks_0.{0,2,…,14}` and `blocks_{1,2,3}.{0,2}`.
    """

    def __init__(self, channels: tuple[int, ...] = RELEASED_CONTROL_CHANNELS) -> None:
        super().__init__()
        stem: list[nn.Module] = []
        previous = 3
        for level, width in enumerate(channels):
            stride = 1 if level == 0 else 2
            stem += [
                nn.Conv2d(previous, width, kernel_size=3, padding=1, stride=stride),
                nn.SiLU(),
                nn.Conv2d(width, width, kernel_size=3, padding=1),
                nn.SiLU(),
            ]
            previous = width
        self.blocks_0 = nn.Sequential(*stem)
        self.blocks_1 = _control_step(previous)
        self.blocks_2 = _control_step(previous)
        self.blocks_3 = _control_step(previous)

    def forward(self, image: torch.Tensor) -> dict[int, torch.Tensor]:
        """Encode a control image.

        Args:
            image: (B, 3, H, W) in [-1, 1].

        Returns:
            {tokens: (B, 256, h, w)} for the four resolutions, keyed by h * w, which is
            how each attention unit finds the features of its own resolution.
        """
        features: dict[int, torch.Tensor] = {}
        x = image
        for block in (self.blocks_0, self.blocks_1, self.blocks_2, self.blocks_3):
            x = block(x)
            features[x.shape[2] * x.shape[3]] = x
        return features


def _control_step(channels: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(channels, channels, kernel_size=3, padding=1, stride=2),
        nn.SiLU(),
        nn.Conv2d(channels, channels, kernel_size=3, padding=1),
        nn.SiLU(),
    )


class _Hookers(nn.Module):
    def __init__(self, units: list[AttentionSharingUnit]) -> None:
        super().__init__()
        self.layers = nn.ModuleList(units)


class SD15LayerModel(nn.Module):
    """Everything in one `layer_sd15_*` file: `hookers.layers.*` and `kwargs_encoder.*`."""

    def __init__(self, units: list[AttentionSharingUnit], control: ControlEncoder | None) -> None:
        super().__init__()
        self.hookers = _Hookers(units)
        self.kwargs_encoder = control


@dataclass(frozen=True)
class LayerModelLayout:
    """What a state dict in the attention-sharing format holds.

    Attributes:
        frames: images diffused together (1, 2 or 3 in the released files).
        rank: LoRA rank (256 in the released files).
        uses_control: whether a control image feeds the model (fg2bg, bg2fg).
        control_channels: widths of the control encoder's four stages.
    """

    frames: int
    rank: int
    uses_control: bool
    control_channels: tuple[int, ...] = RELEASED_CONTROL_CHANNELS


def read_layout(state_dict: Mapping[str, torch.Tensor]) -> LayerModelLayout:
    """Infer frames, rank and control from an attention-sharing state dict's keys.

    Raises:
        ValueError: the keys are not in the attention-sharing format.
    """
    prefix = "hookers.layers.0.to_q_lora."
    frames = {int(key[len(prefix) :].split(".")[0]) for key in state_dict if key.startswith(prefix)}
    if not frames:
        raise ValueError("not an attention-sharing file: no 'hookers.layers.0.to_q_lora.*' keys")
    rank = state_dict[f"{prefix}0.down.weight"].shape[0]
    uses_control = any(key.startswith("kwargs_encoder.") for key in state_dict)
    layout = LayerModelLayout(frames=max(frames) + 1, rank=rank, uses_control=uses_control)
    if uses_control:
        # The stem's strided convs are blocks_0.{0,4,8,12}; their widths are the stages'.
        try:
            widths = tuple(
                state_dict[f"kwargs_encoder.blocks_0.{4 * stage}.weight"].shape[0]
                for stage in range(4)
            )
        except KeyError as error:
            raise ValueError(f"incomplete control encoder: missing {error}") from error
        layout = replace(layout, control_channels=widths)
    return layout


def build_sd15_layer_model(unet: nn.Module, layout: LayerModelLayout) -> SD15LayerModel:
    """An `SD15LayerModel` sized for `unet` (any width with the SD1.5 block layout).

    Raises:
        ValueError: `unet` lacks one of the 32 attention modules.
    """
    units = []
    for path in SD15_ATTENTION_UNITS:
        attention = _attention_at(unet, path)
        units.append(
            AttentionSharingUnit(
                query_dim=attention.to_q.in_features,
                context_dim=attention.to_k.in_features,
                inner_dim=attention.to_q.out_features,
                frames=layout.frames,
                rank=layout.rank,
                control_channels=layout.control_channels[-1] if layout.uses_control else None,
            )
        )
    control = ControlEncoder(layout.control_channels) if layout.uses_control else None
    return SD15LayerModel(units, control)


def _attention_at(unet: nn.Module, path: str) -> nn.Module:
    try:
        return unet.get_submodule(path)
    except AttributeError as error:
        raise ValueError(
            f"the UNet has no attention module {path}: the SD1.5 layer models need an "
            "SD1.5-shaped UNet"
        ) from error


@dataclass
class _ControlState:
    features: dict[int, torch.Tensor] = field(default_factory=dict)
    # Per unit, per token count: (frames, B_control, tokens, C), computed once.
    projected: dict[tuple[int, int], torch.Tensor] = field(default_factory=dict)


class SharedAttentionProcessor:
    """A diffusers attention processor computing one attention-sharing unit.

    The per-frame LoRA deltas are merged into copies of the module's weights once;
    the module's own weights stay as they are.
    """

    def __init__(
        self, unit: AttentionSharingUnit, attention: nn.Module, index: int, control: _ControlState
    ) -> None:
        self.unit = unit
        self.index = index
        self.frames = unit.frames
        self.control = control
        self.dropout = attention.to_out[1]
        self.query = _stack(unit.to_q_lora, attention.to_q)
        self.key = _stack(unit.to_k_lora, attention.to_k)
        self.value = _stack(unit.to_v_lora, attention.to_v)
        self.out = _stack(unit.to_out_lora, attention.to_out[0])
        self.temporal_single = _compose_temporal_single(unit) if unit.frames == 1 else None

    def __call__(
        self,
        attn: nn.Module,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
    ) -> torch.Tensor:
        rows, tokens, _ = hidden_states.shape
        if rows % self.frames:
            raise ValueError(f"batch of {rows} rows is not a multiple of {self.frames} frames")
        # (B·F, D, C) → (F, B, D, C): frame f holds rows f, f+F, f+2F, …
        framed = hidden_states.unflatten(0, (-1, self.frames)).transpose(0, 1)
        if self.unit.control_convs is not None:
            framed = framed + self._control(tokens, framed.dtype)
        if encoder_hidden_states is None:
            context = framed
        else:
            context = encoder_hidden_states.unflatten(0, (-1, self.frames)).transpose(0, 1)

        query = self.query.apply(framed)
        key = self.key.apply(context)
        value = self.value.apply(context)
        heads = attn.heads
        attended = _multi_head_attention(
            query.flatten(0, 1), key.flatten(0, 1), value.flatten(0, 1), heads
        )
        output = self.dropout(self.out.apply(attended.unflatten(0, (self.frames, -1))))
        framed = framed + output

        mixed = framed.transpose(0, 1).flatten(0, 1)  # back to (B·F, D, C)
        mixed = mixed + self._temporal(mixed, heads)
        return mixed - hidden_states

    def _temporal(self, x: torch.Tensor, heads: int) -> torch.Tensor:
        unit = self.unit
        x = unit.temporal_n(x)
        if self.temporal_single is not None:
            # One frame: attention over a single key returns its value, so
            # o(v(i(x))) is the whole branch, composed into one linear map.
            weight, bias = self.temporal_single
            return F.linear(x, weight, bias)
        x = unit.temporal_i(x)
        tokens = x.shape[1]
        # (B·F, D, C) → (B·D, F, C): attend across frames at each token.
        across = x.unflatten(0, (-1, self.frames)).transpose(1, 2).flatten(0, 1)
        attended = _multi_head_attention(
            unit.temporal_q(across), unit.temporal_k(across), unit.temporal_v(across), heads
        )
        out = unit.temporal_o(attended)
        return out.unflatten(0, (-1, tokens)).transpose(1, 2).flatten(0, 1)

    def _control(self, tokens: int, dtype: torch.dtype) -> torch.Tensor:
        key = (self.index, tokens)
        cached = self.control.projected.get(key)
        if cached is None:
            if tokens not in self.control.features:
                raise ValueError(
                    "this layer model needs a control image: call set_control() first "
                    f"(no control features at {tokens} tokens)"
                )
            signal = self.control.features[tokens]
            convs = self.unit.control_convs
            assert convs is not None
            conv_dtype = convs[0][0].weight.dtype
            projected = [conv(signal.to(conv_dtype)).flatten(2).transpose(1, 2) for conv in convs]
            cached = torch.stack(projected).to(dtype)  # (F, B_control, D, C)
            self.control.projected[key] = cached
        return cached


@dataclass
class _StackedLinear:
    """Per-frame weights (F, out, in) and the module's bias, applied to (F, B, N, in)."""

    weight: torch.Tensor
    bias: torch.Tensor | None

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        frames, batch, tokens, _ = x.shape
        y = torch.bmm(x.reshape(frames, batch * tokens, -1), self.weight.transpose(1, 2))
        y = y.view(frames, batch, tokens, -1)
        return y if self.bias is None else y + self.bias


def _stack(pairs: nn.ModuleList, linear: nn.Linear) -> _StackedLinear:
    weight = torch.stack([pair.merged_with(linear.weight) for pair in pairs])
    return _StackedLinear(weight, linear.bias)


def _compose_temporal_single(unit: AttentionSharingUnit) -> tuple[torch.Tensor, torch.Tensor]:
    """o(v(i(x))) as one (weight, bias), computed in float32."""
    layers = [unit.temporal_i, unit.temporal_v, unit.temporal_o]
    weight = layers[0].weight.float()
    bias = layers[0].bias.float()
    for layer in layers[1:]:
        weight = layer.weight.float() @ weight
        bias = layer.weight.float() @ bias + layer.bias.float()
    dtype = unit.temporal_o.weight.dtype
    return weight.to(dtype), bias.to(dtype)


def _multi_head_attention(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, heads: int
) -> torch.Tensor:
    """Plain multi-head attention on (N, L, heads·d) tensors, scale 1/√d."""

    def split(x: torch.Tensor) -> torch.Tensor:
        return x.unflatten(-1, (heads, -1)).transpose(1, 2)

    out = F.scaled_dot_product_attention(split(query), split(key), split(value))
    return out.transpose(1, 2).flatten(2)


class SD15LayerHandle:
    """An SD1.5 layer model attached to a UNet.

    Attributes:
        model: the loaded file's modules (on the UNet's device and dtype; the control
            encoder stays float32).
        layout: frames, rank and control of the file.
    """

    def __init__(
        self,
        unet: nn.Module,
        model: SD15LayerModel,
        layout: LayerModelLayout,
        processors: dict[str, SharedAttentionProcessor],
        control: _ControlState,
    ) -> None:
        self.unet = unet
        self.model = model
        self.layout = layout
        self._processors = processors
        self._control = control
        self._saved: dict[str, object] = {}
        self._active = False
        self.set_active(True)

    @property
    def frames(self) -> int:
        return self.layout.frames

    @property
    def active(self) -> bool:
        """Whether the UNet currently computes with the layer model."""
        return self._active

    def set_active(self, active: bool) -> None:
        """Switch between the layer model and the UNet's own processors.

        Used for Stop At within a job, and between jobs: a handle switched off keeps its
        merged weights, so the next job with the same file only switches it on again.

        Raises:
            RuntimeError: switching on while another layer model is on this UNet.
        """
        if active == self._active:
            return
        if active:
            if not self._processors:
                raise RuntimeError("this layer model was detached")
            current = dict(self.unet.attn_processors)
            if any(isinstance(p, SharedAttentionProcessor) for p in current.values()):
                raise RuntimeError("another layer model is active on this UNet")
            self._saved = current  # the UNet's own processors, restored when switched off
            self.unet.set_attn_processor({**current, **self._processors})
        else:
            self.unet.set_attn_processor(dict(self._saved))
        self._active = active

    @torch.no_grad()
    def set_control(self, image: torch.Tensor) -> None:
        """Set the control image (the foreground for fg2bg, the background for bg2fg).

        Args:
            image: (1 or B, 3, H, W) in [0, 1] at the generation size; batch 1 is
                shared by every row group.

        Raises:
            ValueError: the file has no control encoder.
        """
        encoder = self.model.kwargs_encoder
        if encoder is None:
            raise ValueError("this layer model takes no control image")
        weight = encoder.blocks_0[0].weight
        features = encoder(image.to(device=weight.device, dtype=weight.dtype) * 2.0 - 1.0)
        self._control.features = features
        self._control.projected.clear()

    def clear_control(self) -> None:
        """Forget the control image and its projections (their memory too)."""
        self._control.features = {}
        self._control.projected.clear()

    def detach(self) -> None:
        """Restore the UNet's own attention processors and drop this model's state."""
        self.set_active(False)
        self._processors.clear()
        self.clear_control()


@torch.no_grad()
def attach_sd15_layer_model(
    unet: nn.Module, state_dict: Mapping[str, torch.Tensor]
) -> SD15LayerHandle:
    """Patch an SD1.5-structured diffusers UNet with a released `layer_sd15_*` file.

    Frames, rank and control are read from the keys; every key must load
    (`strict=True`). The UNet's weights are untouched: the layer model runs as
    attention processors until `detach()`.

    Args:
        unet: a `UNet2DConditionModel` with the SD1.5 block layout, already on its
            final device and dtype.
        state_dict: the file's tensors.

    Returns:
        The handle, active: `set_control(image)`, `set_active(bool)`,
        `clear_control()`, `detach()`.

    Raises:
        ValueError: the keys do not fit the format or this UNet.
    """
    layout = read_layout(state_dict)
    with torch.device("meta"):  # no random init: the file's tensors become the parameters
        model = build_sd15_layer_model(unet, layout)
    try:
        model.load_state_dict(dict(state_dict), strict=True, assign=True)
    except RuntimeError as error:
        raise ValueError(f"the layer model does not fit this UNet: {error}") from error
    reference = next(unet.parameters())
    model.hookers.to(device=reference.device, dtype=reference.dtype)
    if model.kwargs_encoder is not None:
        model.kwargs_encoder.to(device=reference.device, dtype=torch.float32)
    model.eval()

    control = _ControlState()
    processors = {}
    for index, (path, unit) in enumerate(
        zip(SD15_ATTENTION_UNITS, model.hookers.layers, strict=True)
    ):
        attention = _attention_at(unet, path)
        processors[f"{path}.processor"] = SharedAttentionProcessor(unit, attention, index, control)
    return SD15LayerHandle(unet, model, layout, processors, control)
