"""Split into Layers: a flat picture to transparent layers (Qwen-Image-Layered), and the
matting fallback for checkpoints on which LayerDiffuse fails.

Importable without the server: `from backend.split import split_into_layers, matte`.
"""

from __future__ import annotations

from .layered import (
    DEFAULT_CFG,
    DEFAULT_LAYERS,
    DEFAULT_RESOLUTION,
    DEFAULT_STEPS,
    MAX_LAYERS,
    QWEN_LAYERED_REPO,
    TRAINED_RESOLUTIONS,
    LayeredComponents,
    load_layered_components,
    split_into_layers,
)
from .matting import (
    NEUTRAL_GRAY,
    MattingNet,
    detect_failing_family,
    matte,
    matte_on_gray,
    unmix_foreground,
)

__all__ = [
    "DEFAULT_CFG",
    "DEFAULT_LAYERS",
    "DEFAULT_RESOLUTION",
    "DEFAULT_STEPS",
    "MAX_LAYERS",
    "NEUTRAL_GRAY",
    "QWEN_LAYERED_REPO",
    "TRAINED_RESOLUTIONS",
    "LayeredComponents",
    "MattingNet",
    "detect_failing_family",
    "load_layered_components",
    "matte",
    "matte_on_gray",
    "split_into_layers",
    "unmix_foreground",
]
