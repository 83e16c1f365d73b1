"""A LoRA merged into a model set's UNet and text encoders, and taken out exactly.

The merge is the SDXL layer files' (`layerdiffuse.weight_patches`): in float32,
`W + weight · (up @ down)`, cast back, as new parameters swapped in for the originals,
which the handle keeps. Detaching reinstalls the very tensors that were there, bit-exact
in any dtype, so a LoRA can be switched off or changed between jobs without drift.

Merged before a job's layer model: the SDXL layer files merge on top of the LoRA's
weights and put them back when they detach, and an SD1.5 layer model computes its
per-frame weights from them (the model set drops kept SD1.5 layer models whenever the
LoRA changes, `ModelSet.use_lora`).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from ..layerdiffuse import OriginalsPlace, ParameterSwap, check_patch_shapes, merged_tensor
from .formats import LoRAPatches, read_lora


class LoRAHandle:
    """A merged LoRA; `detach()` puts every original parameter back.

    Attributes:
        weight: the strength it was merged with.
        patched: per component, how many parameters it changed.
    """

    def __init__(
        self, swaps: list[ParameterSwap], weight: float, on_cpu: bool, patched: dict[str, int]
    ) -> None:
        self._swaps = swaps
        self._on_cpu = on_cpu
        self.weight = weight
        self.patched = patched

    @property
    def attached(self) -> bool:
        return bool(self._swaps)

    @torch.no_grad()
    def detach(self) -> None:
        """Reinstall the original parameters (idempotent)."""
        for swap in reversed(self._swaps):
            swap.install(False, self._on_cpu)
        self._swaps = []


@torch.no_grad()
def attach_lora(
    components: Mapping[str, nn.Module],
    state_dict: Mapping[str, torch.Tensor],
    weight: float = 1.0,
    *,
    originals_on: OriginalsPlace = "cpu",
) -> LoRAHandle:
    """Merge a LoRA file into the components it names.

    Every key is resolved and every shape checked before anything changes; a failure
    midway (out of memory) puts back what was already merged.

    Args:
        components: `unet`, `text_encoder` and (SDXL) `text_encoder_2`, on their final
            device and dtype.
        state_dict: the LoRA file's tensors (`formats.read_lora` reads its keys).
        weight: the strength, 0..2.
        originals_on: where the unmerged tensors wait: "cpu" (the default: a distilled
            LoRA touches most of the UNet, and it changes rarely) or "device".

    Raises:
        ValueError: from `read_lora`, a shape that does not fit, a bad `originals_on`.
    """
    if originals_on not in ("device", "cpu"):
        raise ValueError(f"originals_on {originals_on!r} is not 'device' or 'cpu'")
    patches: LoRAPatches = read_lora(state_dict, components)
    for component, component_patches in patches.items():
        parameters = dict(components[component].named_parameters())
        if check_patch_shapes(component_patches, parameters):
            raise ValueError(f"{component}: a LoRA does not widen conv_in")
    on_cpu = originals_on == "cpu"
    swaps: list[ParameterSwap] = []
    try:
        for component, component_patches in patches.items():
            model = components[component]
            parameters = dict(model.named_parameters())
            for name, patch in component_patches.items():
                module_name, _, attribute = name.rpartition(".")
                original = parameters[name]
                merged = nn.Parameter(
                    merged_tensor(original, patch, weight), requires_grad=original.requires_grad
                )
                swap = ParameterSwap(
                    model.get_submodule(module_name), attribute, original, merged, original.device
                )
                swap.install(True, on_cpu)
                swaps.append(swap)
    except BaseException:
        for swap in reversed(swaps):
            swap.install(False, on_cpu)
        raise
    counts = {component: len(found) for component, found in patches.items()}
    return LoRAHandle(swaps, weight, on_cpu, counts)
