"""LoRA files as they ship, read into per-parameter patches of a diffusers model set.

A LoRA names its target modules in one of three ways; all are read here:

- kohya (`lora_unet_<module>`, `lora_te_<module>`, `lora_te1_`/`lora_te2_` for SDXL's two
  text encoders), the module path with dots turned into underscores, in diffusers
  block names (`lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn1_to_q`:
  LCM-LoRA's training scripts, DMD2, SDXL-Lightning) or ldm ones
  (`lora_unet_input_blocks_4_1_proj_in`);
- diffusers / peft (`unet.<module>`, `text_encoder.<module>`), also without the prefix;
- diffusers' older attention processors (`<attention>.processor.to_q_lora`).

A module's tensors are `.lora_down.weight` and `.lora_up.weight` (peft: `.lora_A`,
`.lora_B`; diffusers: `.lora.down`, `.lora.up`) and an optional `.alpha`: the patch is
`(alpha / rank) · up @ down` (scale 1 without alpha; DMD2's alpha 8 at rank 64 is 1/8).
A conv LoRA's down is (rank, in, kh, kw) and its up (out, rank, 1, 1); both flatten to
matrices. Names are resolved against the model's own modules, so a file for another
model (an SDXL LoRA on SD1.5) is refused by name or by shape before anything changes.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import nn

from ..layerdiffuse import LoRAPatch, ldm_name_table, read_unet_layout

_TENSOR_SUFFIXES = {
    ".lora_down.weight": "down",
    ".lora_up.weight": "up",
    ".lora_A.weight": "down",
    ".lora_B.weight": "up",
    ".lora.down.weight": "down",
    ".lora.up.weight": "up",
    "_lora.down.weight": "down",  # processor.to_q_lora.down.weight
    "_lora.up.weight": "up",
    ".alpha": "alpha",
}
_UNSUPPORTED = {
    ".lora_mid.weight": "LoCon with a CP middle tensor",
    ".dora_scale": "DoRA",
    ".hada_w1_a": "LoHa",
    ".lokr_w1": "LoKr",
    ".diff": "a full weight difference",
}
_KOHYA_PREFIXES = {
    "lora_unet_": "unet",
    "lora_te_": "text_encoder",
    "lora_te1_": "text_encoder",
    "lora_te2_": "text_encoder_2",
}
_DOTTED_PREFIXES = ("unet.", "text_encoder.", "text_encoder_2.")
_PROCESSOR_NAMES = {
    "processor.to_q": "to_q",
    "processor.to_k": "to_k",
    "processor.to_v": "to_v",
    "processor.to_out": "to_out.0",
}

LoRAPatches = dict[str, dict[str, LoRAPatch]]
"""{component ("unet", "text_encoder", "text_encoder_2"): {parameter name: patch}}."""


@dataclass(frozen=True)
class _Pair:
    down: torch.Tensor | None = None
    up: torch.Tensor | None = None
    alpha: float | None = None


def read_lora(
    state_dict: Mapping[str, torch.Tensor], components: Mapping[str, nn.Module]
) -> LoRAPatches:
    """Resolve a LoRA file's keys against the model's components.

    Args:
        state_dict: the file's tensors.
        components: the models it may patch, by diffusers name: `unet`, `text_encoder`
            and, for SDXL, `text_encoder_2`.

    Returns:
        Per component, {parameter name (`<module>.weight`): LoRAPatch}, the scale
        `alpha / rank` folded into `up`, both in float32.

    Raises:
        ValueError: an empty file, a key of no known format, a LoRA type this reader does
            not merge (LoHa, LoKr, DoRA), a module the model does not have, a pair
            missing a half, or one module patched twice.
    """
    if not state_dict:
        raise ValueError("the LoRA file holds no tensors")
    tables = {name: _module_table(name, module) for name, module in components.items()}
    pairs: dict[tuple[str, str], dict[str, object]] = {}
    unknown: list[str] = []
    for key, tensor in state_dict.items():
        for suffix, what in _UNSUPPORTED.items():
            if key.endswith(suffix) or f"{suffix}." in key:
                raise ValueError(f"{key}: {what} is not supported, only LoRA up/down pairs")
        split = _split_suffix(key)
        if split is None:
            unknown.append(key)
            continue
        stem, part = split
        target = _resolve(stem, tables)
        if target is None:
            unknown.append(key)
            continue
        slot = pairs.setdefault(target, {})
        if part in slot:
            raise ValueError(f"{key}: {target[0]} module {target[1]} is patched twice")
        slot[part] = tensor
    if unknown:
        shown = ", ".join(sorted(unknown)[:3])
        raise ValueError(
            f"{len(unknown)} keys name no module of this model ({shown}"
            f"{', …' if len(unknown) > 3 else ''}): a LoRA for another model family?"
        )
    patches: LoRAPatches = {}
    for (component, module), parts in sorted(pairs.items()):
        patches.setdefault(component, {})[f"{module}.weight"] = _patch(component, module, parts)
    return patches


def _split_suffix(key: str) -> tuple[str, str] | None:
    for suffix, part in _TENSOR_SUFFIXES.items():
        if key.endswith(suffix):
            return key[: -len(suffix)], part
    return None


def _resolve(stem: str, tables: Mapping[str, Mapping[str, str]]) -> tuple[str, str] | None:
    """(component, diffusers module name) of a key's module part, or None."""
    for prefix, component in _KOHYA_PREFIXES.items():
        if stem.startswith(prefix) and component in tables:
            module = tables[component].get(stem[len(prefix) :])
            return None if module is None else (component, module)
    for prefix, processor_name in _PROCESSOR_NAMES.items():
        if stem.endswith("." + prefix):
            stem = stem[: -len(prefix)] + processor_name
            break
    component = "unet"
    for prefix in _DOTTED_PREFIXES:
        if stem.startswith(prefix):
            component, stem = prefix[:-1], stem[len(prefix) :]
            break
    table = tables.get(component)
    if table is None:
        return None
    module = table.get(stem)
    return None if module is None else (component, module)


def _module_table(component: str, model: nn.Module) -> dict[str, str]:
    """{every name a file may use for a patchable module: its diffusers module name}.

    Patchable modules are those with a weight of two or more dimensions (linear and
    conv layers). The UNet is also named in ldm terms, as kohya files of ldm-trained
    models name it.
    """
    names = [
        name.removesuffix(".weight")
        for name, parameter in model.named_parameters()
        if name.endswith(".weight") and parameter.dim() >= 2
    ]
    table = {name: name for name in names}
    if component.startswith("text_encoder"):
        # Files name CLIP's modules `text_model.encoder…`; transformers 5 drops the prefix.
        table |= {f"text_model.{name}": name for name in names if not name.startswith("text_")}
    table |= {alias.replace(".", "_"): name for alias, name in list(table.items())}
    if component == "unet":
        weights = [f"{name}.weight" for name in names]
        try:
            ldm = ldm_name_table(weights, read_unet_layout(model.config))
        except (ValueError, AttributeError, KeyError):
            ldm = {}  # not an SD-structured UNet: diffusers names only
        for ldm_name, diffusers_name in ldm.items():
            table.setdefault(ldm_name.removesuffix(".weight").replace(".", "_"), diffusers_name)
        table = {key: value.removesuffix(".weight") for key, value in table.items()}
    return table


def _patch(component: str, module: str, parts: Mapping[str, object]) -> LoRAPatch:
    where = f"{component} {module}"
    down, up, alpha = parts.get("down"), parts.get("up"), parts.get("alpha")
    if not isinstance(down, torch.Tensor) or not isinstance(up, torch.Tensor):
        missing = "down" if not isinstance(down, torch.Tensor) else "up"
        raise ValueError(f"{where}: the LoRA pair lacks its {missing} tensor")
    if down.dim() < 2 or up.dim() < 2:
        raise ValueError(
            f"{where}: up {tuple(up.shape)} and down {tuple(down.shape)} are not matrices"
        )
    rank = down.shape[0]
    scale = 1.0
    if isinstance(alpha, torch.Tensor):
        if alpha.numel() != 1:
            raise ValueError(f"{where}: alpha has {alpha.numel()} values, expected one")
        scale = float(alpha) / rank
    return LoRAPatch(up=up.to(torch.float32) * scale, down=down.to(torch.float32))
