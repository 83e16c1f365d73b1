"""Few-step mode: the distilled LoRAs' samplers, and a LoRA merged under every method.

The demo set carries tiny random LoRAs in the released few-step files' layout under the
catalogue's names, so the whole path (offer, check, merge under the layer model, take
out) runs as it does with the real files; the pictures are noise, the arithmetic real.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from backend.errors import InvalidRequest
from backend.methods.registry import run_method
from backend.methods.request import GenerationRequest
from backend.methods.schedule import plan_schedule
from backend.model_set import ModelSet
from backend.store.demo_loras import few_step_lora_state_dict
from backend.store.model_sets import open_model_set
from protocol import LayerRole, LoRAInfo, Method, ModelFamily, Sampler

FG = LayerRole.FOREGROUND


@pytest.fixture
def sd15(demo_models: ModelSet) -> Iterator[ModelSet]:
    """The session's SD1.5 demo set, with no LoRA before and after (a server test may
    have left one merged: the set is the session's)."""
    demo_models.use_lora(None)
    try:
        yield demo_models
    finally:
        demo_models.use_lora(None)


@pytest.fixture
def sdxl(demo_sdxl_models: ModelSet) -> Iterator[ModelSet]:
    demo_sdxl_models.use_lora(None)
    try:
        yield demo_sdxl_models
    finally:
        demo_sdxl_models.use_lora(None)


def state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: value.detach().clone() for name, value in model.state_dict().items()}


def same_state(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[name], b[name]) for name in a)


def transparent(**changes: object) -> GenerationRequest:
    fields: dict[str, object] = {
        "method": Method.SD15_TRANSPARENT,
        "prompt": "a glass",
        "width": 128,
        "height": 128,
        "steps": 2,
        "seed": 5,
    }
    return GenerationRequest(**(fields | changes))  # type: ignore[arg-type]


# samplers


def test_the_few_step_samplers_call_the_unet_at_their_authors_timesteps(demo_models) -> None:
    config = demo_models.base.scheduler_config
    timesteps = {
        sampler: plan_schedule(sampler, config, 4, img2img=False).timesteps.tolist()
        for sampler in (Sampler.LCM, Sampler.LCM_SGM_UNIFORM, Sampler.EULER_SGM_UNIFORM)
    }
    assert timesteps == {
        Sampler.LCM: [999, 759, 499, 259],  # LCMScheduler's default (LCM-LoRA)
        Sampler.LCM_SGM_UNIFORM: [999, 749, 499, 249],  # DMD2's
        Sampler.EULER_SGM_UNIFORM: [999.0, 749.0, 499.0, 249.0],  # Lightning, Hyper-SD
    }
    euler = plan_schedule(Sampler.EULER_SGM_UNIFORM, config, 4, img2img=False)
    assert euler.scheduler.sigmas[-1] == 0.0
    # img2img counts as A1111 does: 0.5 of 8 steps is 5 calls, from the middle down
    rework = plan_schedule(Sampler.LCM_SGM_UNIFORM, config, 8, img2img=True, strength=0.5)
    assert rework.timesteps.tolist() == [624, 499, 374, 249, 124]


# the offer and the checks


def test_the_demo_set_offers_its_familys_few_step_loras_with_their_settings(
    demo_models, demo_sdxl_models
) -> None:
    assert set(demo_models.offered_loras) == {"hyper_sd15_8steps", "hyper_sd15_8steps_cfg"}
    hyper = demo_models.offered_loras["hyper_sd15_8steps"]
    assert hyper == LoRAInfo(
        "hyper_sd15_8steps", ModelFamily.SD15, "Hyper-SD 8 steps", Sampler.EULER_SGM_UNIFORM, 8, 1.0
    )
    xl = demo_sdxl_models.offered_loras
    assert set(xl) == {
        "hyper_sdxl_8steps",
        "hyper_sdxl_8steps_cfg",
        "sdxl_lightning_4step",
        "sdxl_lightning_8step",
        "dmd2_sdxl_4step",
    }
    assert xl["dmd2_sdxl_4step"].label == "DMD2 4 steps (CC BY-NC 4.0: non-commercial use only)"


def test_a_lora_not_offered_or_of_another_family_is_refused_naming_the_field(sd15) -> None:
    sd15.use_lora("hyper_sd15_8steps")
    with pytest.raises(InvalidRequest) as caught:
        run_method(transparent(lora="lcm_sd21"), sd15)
    assert (caught.value.field, str(caught.value)) == (
        "lora",
        "lora: 'lcm_sd21' is not a LoRA this backend offers; offered: "
        "hyper_sd15_8steps, hyper_sd15_8steps_cfg",
    )
    offered = dict(sd15.offered_loras)
    sd15.offered_loras = offered | {"xl": LoRAInfo("xl", ModelFamily.SDXL, "xl")}
    try:
        with pytest.raises(InvalidRequest, match=r"^lora: xl is a sdxl LoRA, but demo-sd15 "):
            run_method(transparent(lora="xl"), sd15)
    finally:
        sd15.offered_loras = offered
    assert sd15.lora == ("hyper_sd15_8steps", 1.0)  # a refused request changes nothing


# merged under the methods, and taken out exactly


def test_a_lora_changes_the_result_and_leaves_no_trace(sd15) -> None:
    """With the LoRA the layer differs; the next job without it is bit-identical to one
    before it, the UNet's tensors too (the kept layer model is rebuilt on the originals)."""
    unet_before = state(sd15.base.unet)
    plain = run_method(transparent(), sd15).images[0][FG]
    fast = run_method(
        transparent(lora="hyper_sd15_8steps", sampler=Sampler.EULER_SGM_UNIFORM, cfg_scale=1.0),
        sd15,
    ).images[0][FG]
    assert sd15.lora == ("hyper_sd15_8steps", 1.0)
    assert np.abs(plain.astype(int) - fast.astype(int)).mean() > 1.0
    again = run_method(transparent(), sd15).images[0][FG]
    assert sd15.lora is None
    assert np.array_equal(plain, again)
    assert same_state(unet_before, state(sd15.base.unet))


def test_the_same_lora_stays_merged_and_results_repeat(sd15) -> None:
    request = transparent(lora="hyper_sd15_8steps", lora_weight=0.5, sampler=Sampler.LCM)
    first = run_method(request, sd15).images[0][FG]
    handle = sd15._lora
    second = run_method(request, sd15).images[0][FG]
    assert sd15._lora is handle  # not merged again
    run_method(transparent(lora="hyper_sd15_8steps_cfg", lora_weight=0.5), sd15)
    third = run_method(request, sd15).images[0][FG]
    assert np.array_equal(first, second) and np.array_equal(first, third)


def test_weight_zero_is_no_lora(sd15) -> None:
    plain = run_method(transparent(), sd15).images[0][FG]
    zero = run_method(transparent(lora="hyper_sd15_8steps", lora_weight=0.0), sd15).images[0][FG]
    assert sd15.lora is None and np.array_equal(plain, zero)


@pytest.mark.parametrize(
    ("method", "lora"),
    [
        (Method.SDXL_TRANSPARENT_ATTN, "dmd2_sdxl_4step"),
        (Method.SDXL_TRANSPARENT_CONV, "sdxl_lightning_4step"),
    ],
)
def test_an_sdxl_layer_file_merges_on_top_of_the_lora_and_off_again(sdxl, method, lora) -> None:
    """The layer file's patches go on the LoRA's weights and come off leaving them; taking
    the LoRA out then leaves the UNet as loaded."""
    unet_before = state(sdxl.base.unet)
    request = GenerationRequest(
        method=method, prompt="glass", width=128, height=128, steps=2, seed=3, lora=lora
    )
    run_method(request, sdxl)
    merged = state(sdxl.base.unet)
    assert not same_state(unet_before, merged)
    run_method(request, sdxl)
    assert same_state(merged, state(sdxl.base.unet))  # the layer file came off exactly
    sdxl.use_lora(None)
    assert same_state(unet_before, state(sdxl.base.unet))


def test_a_lora_file_of_a_folder_is_offered_by_its_name(tmp_path: Path, demo_cache_dir) -> None:
    models = open_model_set(demo=True, cache_dir=demo_cache_dir, device="cpu", dtype="float32")
    path = tmp_path / "my_style.safetensors"
    save_file(few_step_lora_state_dict(models.base.unet, seed=9), str(path))
    models = open_model_set(
        demo=True,
        cache_dir=demo_cache_dir,
        device="cpu",
        dtype="float32",
        lora_files={"my_style": path},
    )
    assert models.offered_loras["my_style"] == LoRAInfo("my_style", ModelFamily.SD15, "my_style")
    before = state(models.base.unet)
    run_method(transparent(lora="my_style"), models)
    assert models.lora == ("my_style", 1.0)
    models.use_lora(None)
    assert same_state(before, state(models.base.unet))


def test_a_lora_for_another_model_is_refused_and_the_model_keeps_none(
    tmp_path: Path, demo_cache_dir, demo_sdxl_models
) -> None:
    """An SDXL LoRA given as a file to an SD1.5 model: a clear refusal naming the field."""
    path = tmp_path / "xl_style.safetensors"
    save_file(few_step_lora_state_dict(demo_sdxl_models.base.unet, seed=9), str(path))
    models = open_model_set(
        demo=True,
        cache_dir=demo_cache_dir,
        device="cpu",
        dtype="float32",
        lora_files={"xl_style": path},
    )
    before = state(models.base.unet)
    with pytest.raises(InvalidRequest, match=r"^lora: xl_style does not fit demo-sd15 .*: "):
        run_method(transparent(lora="xl_style"), models)
    assert models.lora is None
    assert same_state(before, state(models.base.unet))
