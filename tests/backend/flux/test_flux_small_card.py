"""FLUX's 24 GB plan (issue #17): text encoders on the CPU, the merged transformer in fp8.

On the CPU-only demo the plan is forced on: the transformer's weights are stored as
`float8_e4m3fn` (the norms and embeddings diffusers keeps in full precision aside), and a
job stays close to the full-precision one: fp8 rounds each weight, it does not change
the method.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch

from backend.methods.registry import run_method
from backend.methods.request import GenerationRequest
from backend.model_set import FluxModelSet
from backend.store.flux_demo import FluxDemoSet
from backend.store.flux_sets import (
    FP8_KEPT,
    FP8_STORAGE,
    open_flux_demo_files,
    wants_small_card_plan,
)
from protocol import LayerRole, Method

from .conftest import FLUX_DEV_TRANSFORMER


@pytest.fixture(scope="module")
def small_card_flux(flux_demo_set: FluxDemoSet, tmp_path_factory: pytest.TempPathFactory):
    cache = tmp_path_factory.mktemp("flux-small-card")
    return open_flux_demo_files(
        flux_demo_set, cache, torch.device("cpu"), torch.float32, small_card=True
    )


def test_the_plan_is_asked_for_or_decided_by_the_card() -> None:
    assert wants_small_card_plan(torch.device("cpu"), None) is False
    assert wants_small_card_plan(torch.device("cpu"), True) is True
    assert wants_small_card_plan(torch.device("cuda"), False) is False


def test_the_merged_transformer_is_stored_in_fp8(
    small_card_flux: FluxModelSet, flux_demo: FluxModelSet
) -> None:
    dtypes = {p.dtype for p in small_card_flux.transformer.parameters()}
    assert FP8_STORAGE in dtypes
    # every linear of the blocks is stored in fp8; the embedders and the head are kept
    linears = {
        name: module.weight.dtype
        for name, module in small_card_flux.transformer.named_modules()
        if isinstance(module, torch.nn.Linear)
    }
    kept = {name for name in linears if re.search("|".join(FP8_KEPT), name)}
    assert kept and all(linears[name] != FP8_STORAGE for name in kept)
    assert all(dtype == FP8_STORAGE for name, dtype in linears.items() if name not in kept)
    # the merged weights are what was cast: the LoRA's delta is in the fp8 copy too
    name = next(n for n, p in flux_demo.transformer.named_parameters() if "to_q.weight" in n)
    full = dict(flux_demo.transformer.named_parameters())[name]
    cast = dict(small_card_flux.transformer.named_parameters())[name]
    assert torch.allclose(cast.float(), full.to(FP8_STORAGE).float())
    for encoder in (small_card_flux.text_encoder, small_card_flux.text_encoder_2):
        assert next(encoder.parameters()).device.type == "cpu"


def test_a_job_in_the_plan_stays_close_to_the_full_precision_one(
    small_card_flux: FluxModelSet, flux_demo: FluxModelSet, tmp_path: Path
) -> None:
    request = GenerationRequest(
        Method.FLUX_TRANSPARENT, prompt="a cup", width=64, height=64, steps=3, cfg_scale=3.5
    )
    full = run_method(request, flux_demo).images[0][LayerRole.FOREGROUND].astype(int)
    small = run_method(request, small_card_flux).images[0][LayerRole.FOREGROUND].astype(int)
    assert small.shape == full.shape
    difference = np.abs(small - full)
    assert 0 < difference.mean() < 8, difference.mean()  # rounded weights, same method


def test_the_real_transformer_takes_12_gb_in_the_plan() -> None:
    """FLUX.1-dev's transformer built on `meta`: 23.8 GB in bf16, 12.0 GB in the plan."""
    from diffusers import FluxTransformer2DModel
    from diffusers.hooks import apply_layerwise_casting

    with torch.device("meta"):
        transformer = FluxTransformer2DModel(**FLUX_DEV_TRANSFORMER).to(torch.bfloat16)

    def size() -> float:
        return sum(p.numel() * p.element_size() for p in transformer.parameters()) / 1e9

    assert size() == pytest.approx(23.8, abs=0.1)
    apply_layerwise_casting(
        transformer,
        storage_dtype=FP8_STORAGE,
        compute_dtype=torch.bfloat16,
        skip_modules_pattern=FP8_KEPT,
    )
    assert size() == pytest.approx(11.97, abs=0.02)
