"""`torch.compile` for the SD UNet, with the layer models merged (issue #13 item 2).

The UNet's `forward` is replaced by its compiled form (static shapes: a painter's jobs
come in a few sizes, and each size compiles once). The layer models change the UNet the
way dynamo can follow: SD1.5's attention-sharing processors and the SDXL patches are
ordinary modules and tensors, so a method switch costs a compile only when it brings a
graph not seen yet (another frame count, another size), not every time; `graph_count`
tells how many the cache holds, which `layerdiffuse bench --stages compile` reports after
switching methods and back. Compiling happens on the first job of each shape: `serve
--compile` runs the warm-up so that the first painter does not pay for it.

Measured on this project's 2-core CPU with the demo set (docs/benchmarks.md): the 20-step
transparent job 0.63 s eager, 0.45 s compiled, after a 73 s compile; a GPU figure needs
a device run.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from protocol import ModelFamily

from ..model_set import AnyModelSet

COMPILED_FAMILIES = (ModelFamily.SD15, ModelFamily.SDXL)


@dataclass
class CompiledUNet:
    """A UNet whose `forward` is compiled; `undo` gives it its own back."""

    unet: torch.nn.Module
    original: Callable[..., Any]

    def undo(self) -> None:
        self.unet.forward = self.original  # type: ignore[method-assign]


def compile_unet(models: AnyModelSet, backend: str = "inductor") -> CompiledUNet:
    """Compile the model set's UNet in place.

    Args:
        backend: dynamo's backend ("inductor" generates kernels; "eager" only captures
            graphs, which tests use to check capture and guards quickly).

    Raises:
        ValueError: a family without a UNet (FLUX, Qwen-Image-Layered).
    """
    if models.family not in COMPILED_FAMILIES:
        names = ", ".join(family.value for family in COMPILED_FAMILIES)
        raise ValueError(f"compiling is for the {names} UNets, not {models.family.value}")
    unet = models.base.unet
    original = unet.forward
    unet.forward = torch.compile(original, backend=backend, dynamic=False)
    return CompiledUNet(unet, original)


def graph_count() -> int:
    """Graphs dynamo has compiled in this process (each guard failure adds one)."""
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])
