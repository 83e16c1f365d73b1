"""A first job before the server listens, so the painter's first click does not pay for it.

The first job of a freshly loaded model set pays once for what later jobs reuse: reading
and merging the transparent layer model, loading the transparent decoder to the device,
CUDA's kernel selection and allocator growth. `warm_up` runs the family's transparent
method once, small and short, and throws the result away; what it leaves behind is only
what any job leaves (the kept layer model switched off, the decoder loaded), so results
afterwards are the same as without it.
"""

from __future__ import annotations

import time

import numpy as np

from protocol import Hires, LayerRole, Method, ModelFamily

from ..model_set import AnyModelSet
from .registry import run_method
from .request import GenerationRequest

WARM_UP_METHODS = {
    ModelFamily.SD15: Method.SD15_TRANSPARENT,
    ModelFamily.SDXL: Method.SDXL_TRANSPARENT_ATTN,
    ModelFamily.FLUX: Method.FLUX_TRANSPARENT,
    ModelFamily.QWEN_LAYERED: Method.SPLIT_LAYERS,
}
"""What a painter clicks first: the family's transparent layer (a split of a gray picture
into two layers for Qwen-Image-Layered)."""


def warm_up(models: AnyModelSet, side: int = 256, steps: int = 2) -> float:
    """Run the family's transparent method once at `side`², `steps` steps; its seconds."""
    started = time.perf_counter()
    method = WARM_UP_METHODS[models.family]
    inputs = {}
    if method is Method.SPLIT_LAYERS:
        inputs[LayerRole.LAYER] = np.full((side, side, 4), 128, dtype=np.uint8)
        inputs[LayerRole.LAYER][..., 3] = 255
    request = GenerationRequest(
        method=method,
        prompt="warm-up",
        inputs=inputs,
        width=side,
        height=side,
        steps=steps,
        hires=Hires.OFF,
        layers=2,
    )
    run_method(request, models)
    return time.perf_counter() - started
