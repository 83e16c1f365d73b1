"""The warm-up job before `serve` listens: it loads what the first job needs, and changes
no result."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from backend.methods.registry import run_method
from backend.methods.request import GenerationRequest
from backend.methods.warmup import WARM_UP_METHODS, warm_up
from backend.store.model_sets import open_model_set
from protocol import METHOD_SPECS, LayerRole, ModelFamily


def test_each_family_warms_up_with_its_transparent_layer() -> None:
    for family, method in WARM_UP_METHODS.items():
        spec = METHOD_SPECS[method]
        # a split's outputs are its layers, each transparent
        assert spec.family is family and spec.outputs in (
            (LayerRole.FOREGROUND,),
            (LayerRole.LAYER,),
        )
    assert set(WARM_UP_METHODS) == set(ModelFamily)


def test_a_warmed_up_set_gives_the_cold_sets_results(demo_cache_dir: Path) -> None:
    torch.set_num_threads(1)
    request = GenerationRequest(
        method=WARM_UP_METHODS[ModelFamily.SD15], prompt="a glass", width=64, height=64, steps=2
    )
    cold = open_model_set(demo=True, cache_dir=demo_cache_dir, device="cpu")
    expected = run_method(request, cold).images[0][LayerRole.FOREGROUND]
    warm = open_model_set(demo=True, cache_dir=demo_cache_dir, device="cpu")
    assert warm_up(warm, side=64, steps=1) > 0
    assert "layer_sd15_transparent_attn" in warm._layer_handles  # merged, kept switched off
    assert warm._decoders  # the transparent decoder is on the device
    assert np.array_equal(run_method(request, warm).images[0][LayerRole.FOREGROUND], expected)
