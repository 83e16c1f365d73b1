"""Checks that need a CUDA device: run with `python -m pytest -m gpu tests/gpu`.

They are deselected by default (`-m "not gpu"` in pyproject.toml), never skipped: on a
machine without CUDA, running them explicitly fails.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from backend.bench import build_random, random_sd15_model_set
from backend.layerdiffuse import (
    TransparentVAEDecoder,
    group_norm_by_reduction,
    use_reduction_group_norm,
)
from backend.methods.registry import run_method
from backend.methods.request import GenerationRequest
from backend.model_set import ModelSet
from protocol import LayerRole, Method

pytestmark = pytest.mark.gpu
CUDA = torch.device("cuda")


@pytest.fixture(scope="module")
def models() -> ModelSet:
    """Real-size SD1.5 and LayerDiffuse modules with random weights, fp16 on CUDA."""
    return random_sd15_model_set(CUDA, torch.float16)


@pytest.mark.parametrize("channels_last", [False, True])
def test_reduction_group_norm_matches_native_on_cuda(channels_last: bool) -> None:
    torch.manual_seed(0)
    x = (torch.randn(1, 32, 1024, 1024, device=CUDA) * 2 + 0.5).half()
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    weight = torch.randn(32, device=CUDA).half()
    bias = torch.randn(32, device=CUDA).half()
    expected = F.group_norm(x.float(), 4, weight.float(), bias.float(), 1e-5)
    actual = group_norm_by_reduction(x, 4, weight, bias, 1e-5)
    assert actual.dtype == torch.float16
    assert (actual.float() - expected).abs().max().item() < 2e-2


def test_batched_tta_with_reduction_norm_matches_the_reference_loop() -> None:
    """fp16 on CUDA: ours (batched views, reduction GroupNorm) vs the reference's loop."""
    decoder = build_random(TransparentVAEDecoder, CUDA, torch.float16)
    with torch.no_grad():
        for parameter in decoder.parameters():  # keep fp16 activations in range
            parameter.mul_(0.5)
        pixel = torch.rand(1, 3, 512, 512, device=CUDA, dtype=torch.float16)
        latent = torch.randn(1, 4, 64, 64, device=CUDA, dtype=torch.float16)
        use_reduction_group_norm(decoder, enabled=False)
        reference = decoder.estimate_augmented_sequential(pixel, latent).float()
        use_reduction_group_norm(decoder, enabled=True)
        ours = decoder.estimate_augmented(pixel, latent).float()
    assert torch.isfinite(reference).all()
    difference = (ours - reference).abs()
    largest, mean = difference.max().item(), difference.mean().item()
    print(f"max |ours - reference| = {largest:.4g}, mean {mean:.3g}")
    assert largest < 3e-2
    assert mean < 1e-3


@pytest.mark.parametrize(
    "method",
    [Method.SD15_TRANSPARENT, Method.SD15_JOINT, Method.SD15_FG_TO_BG, Method.SD15_BG_TO_FG],
)
def test_every_sd15_method_runs_at_real_size_in_fp16(method: Method, models: ModelSet) -> None:
    layer = np.full((640, 512, 4), 255, dtype=np.uint8)
    inputs = {
        Method.SD15_FG_TO_BG: {LayerRole.FOREGROUND: layer},
        Method.SD15_BG_TO_FG: {LayerRole.BACKGROUND: layer},
    }.get(method, {})
    request = GenerationRequest(
        method=method, prompt="a cup", inputs=inputs, width=512, height=640, steps=4
    )
    result = run_method(request, models)
    assert len(result.images) == 1
    for role, image in result.images[0].items():
        assert image.shape == (640, 512, 4), role
        assert image.dtype == np.uint8
