"""The SDXL layer files' key format, and the ldm → diffusers names of an SDXL UNet.

Every released `layer_xl_*` file is in Forge's "frozen patcher" format
(layerdiffuse.md §3.1): a key is `diffusion_model.<ldm name>::<kind>::<index>`, with

- `…::lora::0` the LoRA **up** matrix (out, rank) and `…::lora::1` the **down**
  matrix (rank, in): the patch is `up @ down`;
- `…::diff::0` a full-shape delta (conv_in's may be wider: 8 or 12 input channels).

The ldm names are translated with the SDXL block layout read from the diffusers
config (layers per block, which up blocks carry attentions, §3.3). The table is
built from the UNet's own parameter names, diffusers → ldm, so an ldm name that
names no parameter of this UNet (an unknown block, a transformer layer past its
depth) is simply not in it and is refused. Everything here is names and shapes.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import torch

LDM_PREFIX = "diffusion_model."

# ResBlock internals, diffusers → ldm (the transformer internals are named alike).
_RESNET_NAMES = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "time_emb_proj": "emb_layers.1",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "conv_shortcut": "skip_connection",
}
_TOP_LEVEL = {
    "conv_in": "input_blocks.0.0",
    "conv_norm_out": "out.0",
    "conv_out": "out.2",
    "time_embedding.linear_1": "time_embed.0",
    "time_embedding.linear_2": "time_embed.2",
    "add_embedding.linear_1": "label_emb.0.0",
    "add_embedding.linear_2": "label_emb.0.2",
}
_BLOCK = re.compile(
    r"(down|up)_blocks\.(\d+)\.(resnets|attentions|downsamplers|upsamplers)\.(\d+)\."
)
_MID = re.compile(r"mid_block\.(resnets|attentions)\.(\d+)\.")
_RESNET_PART = re.compile(r"([a-z_0-9]+)\.(weight|bias)$")


@dataclass(frozen=True)
class SDXLUNetLayout:
    """What the ldm block indices of an SDXL-structured UNet depend on.

    Attributes:
        layers_per_block: ResBlocks per down block (each up block has one more).
        up_attentions: per up block, whether it has transformers (then its
            upsampler is `output_blocks.N.2`, else `output_blocks.N.1`).
    """

    layers_per_block: int
    up_attentions: tuple[bool, ...]


def read_unet_layout(config: Mapping[str, Any]) -> SDXLUNetLayout:
    """The layout of a diffusers `UNet2DConditionModel` config (`unet.config`).

    Raises:
        ValueError: the config has per-block layer counts that differ, or a mid block
            without attention: ldm checkpoints of that shape are not SDXL's.
    """
    layers = config["layers_per_block"]
    if not isinstance(layers, int):
        if len(set(layers)) != 1:
            raise ValueError(f"layers_per_block {list(layers)} differ between blocks")
        layers = layers[0]
    mid = config.get("mid_block_type", "UNetMidBlock2DCrossAttn")
    if mid != "UNetMidBlock2DCrossAttn":
        raise ValueError(f"mid_block_type {mid!r} is not an SDXL mid block")
    return SDXLUNetLayout(
        layers_per_block=layers,
        up_attentions=tuple("CrossAttn" in kind for kind in config["up_block_types"]),
    )


def diffusers_to_ldm_name(name: str, layout: SDXLUNetLayout) -> str:
    """The ldm state-dict name (without `diffusion_model.`) of a diffusers UNet parameter.

    Example: `down_blocks.1.attentions.0.proj_in.weight` → `input_blocks.4.1.proj_in.weight`.

    Raises:
        ValueError: the name is not one of an SDXL-structured UNet's.
    """
    for prefix, ldm in _TOP_LEVEL.items():
        if name.startswith(prefix + "."):
            return ldm + name[len(prefix) :]
    span = layout.layers_per_block + 1
    if match := _BLOCK.match(name):
        side, block, part, index = match[1], int(match[2]), match[3], int(match[4])
        rest = name[match.end() :]
        if side == "down":
            if part == "downsamplers":
                return f"input_blocks.{(block + 1) * span}.0.op.{_conv_part(rest, name)}"
            slot = 0 if part == "resnets" else 1
            ldm = f"input_blocks.{1 + block * span + index}.{slot}"
        else:
            if part == "upsamplers":
                if block >= len(layout.up_attentions):
                    raise ValueError(
                        f"{name}: the layout has {len(layout.up_attentions)} up blocks"
                    )
                slot = 2 if layout.up_attentions[block] else 1
                ldm = f"output_blocks.{block * span + span - 1}.{slot}.conv"
                return f"{ldm}.{_conv_part(rest, name)}"
            slot = 0 if part == "resnets" else 1
            ldm = f"output_blocks.{block * span + index}.{slot}"
        return f"{ldm}.{_resnet_part(rest, name) if part == 'resnets' else rest}"
    if match := _MID.match(name):
        part, index = match[1], int(match[2])
        rest = name[match.end() :]
        if part == "attentions":
            return f"middle_block.{1 + 2 * index}.{rest}"
        return f"middle_block.{2 * index}.{_resnet_part(rest, name)}"
    raise ValueError(f"{name} is not a parameter name of an SDXL-structured UNet")


def _conv_part(rest: str, name: str) -> str:
    if rest not in ("conv.weight", "conv.bias"):
        raise ValueError(f"{name} is not a parameter name of an SDXL-structured UNet")
    return rest.removeprefix("conv.")


def _resnet_part(rest: str, name: str) -> str:
    match = _RESNET_PART.fullmatch(rest)
    if match is None or match[1] not in _RESNET_NAMES:
        raise ValueError(f"{name} is not a ResBlock parameter of an SDXL-structured UNet")
    return f"{_RESNET_NAMES[match[1]]}.{match[2]}"


def ldm_name_table(diffusers_names: Iterable[str], layout: SDXLUNetLayout) -> dict[str, str]:
    """{ldm name: diffusers name} for every given diffusers parameter name.

    Args:
        diffusers_names: the UNet's parameter names (`unet.state_dict().keys()`).
        layout: from `read_unet_layout(unet.config)`.

    Raises:
        ValueError: a name has no ldm counterpart, or two names share one.
    """
    table: dict[str, str] = {}
    for name in diffusers_names:
        ldm = diffusers_to_ldm_name(name, layout)
        if ldm in table:
            raise ValueError(f"{name} and {table[ldm]} both map to the ldm name {ldm}")
        table[ldm] = name
    return table


@dataclass(frozen=True)
class LoRAPatch:
    """A low-rank patch `up @ down` (both flattened past dim 1), as the file stores it.

    Attributes:
        up: (out, rank) or (out, rank, 1, 1), the file's dtype (float16 when released).
        down: (rank, in) or (rank, in, kh, kw).
    """

    up: torch.Tensor
    down: torch.Tensor


@dataclass(frozen=True)
class DiffPatch:
    """A full-shape delta `Δ`; conv_in's may have more input channels than the weight."""

    delta: torch.Tensor


WeightPatch = LoRAPatch | DiffPatch


def parse_frozen_patches(
    state_dict: Mapping[str, torch.Tensor], table: Mapping[str, str]
) -> dict[str, WeightPatch]:
    """Group a frozen-patcher state dict into one patch per diffusers parameter.

    Args:
        state_dict: the file's tensors, keys `diffusion_model.<ldm name>::lora::0|1`
            or `diffusion_model.<ldm name>::diff::0`.
        table: {ldm name: diffusers name}, from `ldm_name_table`.

    Returns:
        {diffusers parameter name: LoRAPatch | DiffPatch}. Shapes are not checked
        here; the UNet's parameters are needed for that.

    Raises:
        ValueError: keys outside the grammar, ldm names not in `table` (all named,
            up to ten), a LoRA pair missing a half, or one parameter patched twice.
    """
    parts: dict[str, dict[tuple[str, int], torch.Tensor]] = {}
    malformed: list[str] = []
    unknown: list[str] = []
    for key, tensor in state_dict.items():
        pieces = key.split("::")
        if len(pieces) != 3 or not pieces[0].startswith(LDM_PREFIX) or not pieces[2].isdigit():
            malformed.append(key)
            continue
        ldm, kind, index = pieces[0].removeprefix(LDM_PREFIX), pieces[1], int(pieces[2])
        if (kind, index) not in (("lora", 0), ("lora", 1), ("diff", 0)):
            malformed.append(key)
        elif ldm not in table:
            unknown.append(key)
        else:
            parts.setdefault(table[ldm], {})[(kind, index)] = tensor
    if malformed:
        raise ValueError(
            f"{len(malformed)} keys are not '{LDM_PREFIX}<name>::lora::0|1' or "
            f"'::diff::0': {_listing(malformed)}"
        )
    if unknown:
        raise ValueError(f"{len(unknown)} keys name no parameter of this UNet: {_listing(unknown)}")
    patches: dict[str, WeightPatch] = {}
    for name, found in parts.items():
        kinds = set(found)
        if kinds == {("diff", 0)}:
            patches[name] = DiffPatch(found[("diff", 0)])
        elif kinds == {("lora", 0), ("lora", 1)}:
            patches[name] = LoRAPatch(up=found[("lora", 0)], down=found[("lora", 1)])
        elif ("diff", 0) in kinds:
            raise ValueError(f"{name} has both a diff and a lora patch")
        else:
            missing = "down (::lora::1)" if ("lora", 0) in kinds else "up (::lora::0)"
            raise ValueError(f"{name}: the lora pair lacks its {missing} tensor")
    return patches


# What each released file patches (layerdiffuse.md §1.1, checked by parameter counts in
# the tests): "lora" = LoRA on attention q/k/v/out; "not-qkv" = a delta of every weight
# but attention q/k/v and the embedding MLPs; "resblocks" = deltas of the ResBlocks, the
# down/upsamplers, conv_in and the output head. The int is conv_in's input channels.
RELEASED_SDXL_FILES: dict[str, tuple[str, int]] = {
    "layer_xl_transparent_attn": ("lora", 4),
    "layer_xl_transparent_conv": ("not-qkv", 4),
    "layer_xl_fg2ble": ("resblocks", 8),
    "layer_xl_bg2ble": ("resblocks", 8),
    "layer_xl_fgble2bg": ("resblocks", 12),
    "layer_xl_bgble2fg": ("not-qkv", 12),
}
_ATTENTION_LINEAR = re.compile(r"\.attn[12]\.to_(q|k|v|out\.0)\.weight$")
_QKV = re.compile(r"\.attn[12]\.to_[qkv]\.weight$")
_RESBLOCK_OR_SAMPLER = re.compile(
    r"\.(in_layers|emb_layers|out_layers|skip_connection)\.|\.0\.op\.|^output_blocks\.\d+\.\d\.conv\."
)
_EDGES = ("input_blocks.0.0.", "out.0.", "out.2.")
_EMBEDDINGS = ("time_embed.", "label_emb.")


def released_key_shapes(
    parameter_shapes: Mapping[str, tuple[int, ...]],
    layout: SDXLUNetLayout,
    name: str,
    rank: int = 256,
) -> dict[str, tuple[int, ...]]:
    """The keys and tensor shapes of a released SDXL file, for a UNet of this structure.

    Used to build files in the released format (the demo set) and to check the real
    key sets against the real UNet.

    Args:
        parameter_shapes: {diffusers parameter name: shape} of the UNet.
        layout: from `read_unet_layout(unet.config)`.
        name: a key of `RELEASED_SDXL_FILES`.
        rank: LoRA rank (256 in the released file).
    """
    coverage, conv_in_channels = RELEASED_SDXL_FILES[name]
    shapes: dict[str, tuple[int, ...]] = {}
    for ldm, diffusers in ldm_name_table(parameter_shapes, layout).items():
        shape, key = tuple(parameter_shapes[diffusers]), f"{LDM_PREFIX}{ldm}"
        if coverage == "lora":
            if _ATTENTION_LINEAR.search(ldm):
                shapes[f"{key}::lora::0"] = (shape[0], rank)
                shapes[f"{key}::lora::1"] = (rank, shape[1])
            continue
        if coverage == "not-qkv":
            chosen = not _QKV.search(ldm) and not ldm.startswith(_EMBEDDINGS)
        else:
            chosen = bool(_RESBLOCK_OR_SAMPLER.search(ldm)) or ldm.startswith(_EDGES)
        if chosen:
            if ldm == "input_blocks.0.0.weight":
                shape = (shape[0], conv_in_channels, *shape[2:])
            shapes[f"{key}::diff::0"] = shape
    return shapes


def _listing(keys: list[str]) -> str:
    shown = ", ".join(sorted(keys)[:10])
    return shown if len(keys) <= 10 else f"{shown}, …"
