"""Checks that need a CUDA device: run with `python -m pytest -m gpu tests/gpu`.

They are deselected by default (`-m "not gpu"` in pyproject.toml), never skipped: on a
machine without CUDA, running them explicitly fails.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from backend.bench import build_random, random_sd15_model_set, random_sdxl_model_set
from backend.layerdiffuse import (
    TransparentVAEDecoder,
    attach_sdxl_layer_model,
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


@pytest.fixture(scope="module")
def sdxl_models() -> ModelSet:
    """Real-size SDXL and its LayerDiffuse files with random weights, fp16 on CUDA."""
    return random_sdxl_model_set(CUDA, torch.float16)


SDXL_INPUTS = {
    Method.SDXL_TRANSPARENT_ATTN: (),
    Method.SDXL_TRANSPARENT_CONV: (),
    Method.SDXL_FG_TO_BLEND: (LayerRole.FOREGROUND,),
    Method.SDXL_BG_TO_BLEND: (LayerRole.BACKGROUND,),
    Method.SDXL_FG_BLEND_TO_BG: (LayerRole.FOREGROUND, LayerRole.BLENDED),
    Method.SDXL_BG_BLEND_TO_FG: (LayerRole.BACKGROUND, LayerRole.BLENDED),
    Method.SDXL_FG_TO_BG: (LayerRole.FOREGROUND,),
    Method.SDXL_BG_TO_FG: (LayerRole.BACKGROUND,),
}


@pytest.mark.parametrize("method", list(SDXL_INPUTS))
def test_every_sdxl_method_runs_at_real_size_in_fp16(method: Method, sdxl_models: ModelSet) -> None:
    layer = np.full((1024, 1024, 4), 255, dtype=np.uint8)
    inputs = {role: layer for role in SDXL_INPUTS[method]}
    request = GenerationRequest(
        method=method, prompt="a cup", inputs=inputs, width=1024, height=1024, steps=2, batch_size=2
    )
    result = run_method(request, sdxl_models)
    assert len(result.images) == 2
    for layers in result.images:
        for role, image in layers.items():
            assert image.shape == (1024, 1024, 4) and image.dtype == np.uint8, role


def test_sdxl_originals_kept_on_the_cpu_restore_exactly_and_save_gpu_memory(
    sdxl_models: ModelSet,
) -> None:
    unet = sdxl_models.base.unet
    state = sdxl_models.layer_state_dict("layer_xl_transparent_conv", on_device=False)
    before = {name: p.detach().clone() for name, p in unet.named_parameters()}
    results = {}
    for place in ("device", "cpu"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        baseline = torch.cuda.memory_allocated()
        handle = attach_sdxl_layer_model(unet, state, originals_on=place)
        torch.cuda.synchronize()
        results[place] = (
            torch.cuda.memory_allocated() - baseline,
            torch.cuda.max_memory_allocated() - baseline,
        )
        handle.set_active(False)
        handle.set_active(True)
        handle.detach()
        assert all(torch.equal(p, before[name]) for name, p in unet.named_parameters())
    (on_device, _), (on_cpu, peak_cpu) = results["device"], results["cpu"]
    print(
        f"extra GPU memory while attached: originals on device {on_device / 2**30:.2f} GiB, "
        f"on cpu {on_cpu / 2**30:.2f} GiB (peak {peak_cpu / 2**30:.2f} GiB)"
    )
    assert on_cpu < on_device / 4
