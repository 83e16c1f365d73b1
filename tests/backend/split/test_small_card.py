"""Qwen-Image-Layered's 24 GB plan: the transformer stored in fp8 (issue #19).

On the real config built on `meta` the stored transformer is the 20.45 GB the plan
quotes; on the CPU demo the plan is forced on, every block linear is stored as
`float8_e4m3fn`, and a split stays close to the full-precision one (fp8 rounds each
weight; it does not change the method).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import QwenImageTransformer2DModel

from backend.split.layered import (
    FP8_STORAGE,
    LayeredComponents,
    load_layered_components,
    split_into_layers,
)
from backend.store.layered_sets import open_layered_set, wants_fp8

from .test_layered_structure import LAYERED_TRANSFORMER


def test_the_plan_is_asked_for_or_decided_by_the_card() -> None:
    assert wants_fp8(torch.device("cpu"), None) is False
    assert wants_fp8(torch.device("cpu"), True) is True
    assert wants_fp8(torch.device("cuda"), False) is False


def test_the_real_transformer_stored_in_fp8_is_the_plans_size() -> None:
    with torch.device("meta"):
        transformer = QwenImageTransformer2DModel(**LAYERED_TRANSFORMER).to(torch.bfloat16)
    transformer.enable_layerwise_casting(storage_dtype=FP8_STORAGE, compute_dtype=torch.bfloat16)
    stored = sum(p.numel() * p.element_size() for p in transformer.parameters())
    kept = sum(p.numel() for p in transformer.parameters() if p.dtype != FP8_STORAGE)
    assert 20.44e9 < stored < 20.46e9, stored  # the docstring's 20.45 GB
    assert kept < 20e6, kept  # the norms and the output head only


@pytest.fixture(scope="module")
def fp8_demo(layered_demo_dir: Path) -> LayeredComponents:
    return load_layered_components(layered_demo_dir, dtype=torch.float32, fp8=True)


def test_every_block_linear_is_stored_in_fp8(fp8_demo: LayeredComponents) -> None:
    assert fp8_demo.fp8
    linears = {
        name: module.weight.dtype
        for name, module in fp8_demo.transformer.named_modules()
        if isinstance(module, torch.nn.Linear)
    }
    blocks = [dtype for name, dtype in linears.items() if name.startswith("transformer_blocks.")]
    assert blocks and all(dtype == FP8_STORAGE for dtype in blocks)
    assert linears["proj_out"] == torch.float32  # the output head is kept
    # the other pieces are untouched
    assert all(p.dtype == torch.float32 for p in fp8_demo.vae.parameters())
    assert all(p.dtype == torch.float32 for p in fp8_demo.text_encoder.parameters())


def test_a_split_in_the_plan_stays_close_to_the_full_precision_one(
    fp8_demo: LayeredComponents, layered_demo: LayeredComponents
) -> None:
    rgba = np.random.default_rng(4).integers(0, 256, (32, 40, 4), dtype=np.uint8)
    rgba[..., 3] = 255
    settings = {"prompt": "a cup", "steps": 2, "seed": 5, "resolution": 64}
    full = split_into_layers(layered_demo, rgba, 2, **settings)
    small = split_into_layers(fp8_demo, rgba, 2, **settings)
    for a, b in zip(full, small, strict=True):
        assert a.shape == b.shape
        difference = np.abs(a.astype(int) - b.astype(int))
        assert 0 < difference.mean() < 8, difference.mean()  # rounded weights, same method


def test_the_store_opens_the_plan_when_asked(layered_demo_dir: Path) -> None:
    models = open_layered_set(
        layered_demo_dir, device=torch.device("cpu"), dtype=torch.float32, offline=True, fp8=True
    )
    assert models.base.components.fp8
    assert any(p.dtype == FP8_STORAGE for p in models.base.components.transformer.parameters())
