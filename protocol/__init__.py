"""The contract between the Krita plugin and the backend: standard library only, no I/O."""

from __future__ import annotations

from .methods import (
    METHOD_SPECS,
    LayerRole,
    Method,
    MethodSpec,
    ModelFamily,
    ResizeMode,
    Sampler,
)

__all__ = [
    "METHOD_SPECS",
    "LayerRole",
    "Method",
    "MethodSpec",
    "ModelFamily",
    "ResizeMode",
    "Sampler",
]
