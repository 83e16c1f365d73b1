"""Every SDXL method end to end on the SDXL-shaped demo set: layers, alpha, batches, Stop At."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from backend.methods import sdxl_blending, sdxl_recipe
from backend.methods.registry import run_method
from backend.methods.request import GenerationRequest
from backend.methods.stages import encode_text_sdxl
from backend.model_set import ModelSet
from backend.store.model_sets import open_model_set
from protocol import METHOD_SPECS, LayerRole, Method, ModelFamily, Sampler

FG, BG, BLEND = LayerRole.FOREGROUND, LayerRole.BACKGROUND, LayerRole.BLENDED


def layer(colour: tuple[int, int, int], transparent_border: bool) -> np.ndarray:
    image = np.zeros((96, 64, 4), dtype=np.uint8)
    image[..., :3] = colour
    image[..., 3] = 0 if transparent_border else 255
    image[24:72, 16:48, 3] = 255
    return image


FOREGROUND = layer((220, 40, 20), transparent_border=True)
BACKGROUND = layer((20, 90, 200), transparent_border=False)
BLENDING = layer((120, 110, 100), transparent_border=False)
INPUTS = {
    Method.SDXL_TRANSPARENT_ATTN: {},
    Method.SDXL_TRANSPARENT_CONV: {},
    Method.SDXL_FG_TO_BLEND: {FG: FOREGROUND},
    Method.SDXL_BG_TO_BLEND: {BG: BACKGROUND},
    Method.SDXL_FG_BLEND_TO_BG: {FG: FOREGROUND, BLEND: BLENDING},
    Method.SDXL_BG_BLEND_TO_FG: {BG: BACKGROUND, BLEND: BLENDING},
    Method.SDXL_FG_TO_BG: {FG: FOREGROUND},
    Method.SDXL_BG_TO_FG: {BG: BACKGROUND},
}


def request_for(method: Method, **options: object) -> GenerationRequest:
    fields: dict[str, object] = {
        "method": method,
        "prompt": "a cat on a sofa",
        "inputs": INPUTS[method],
        "width": 64,
        "height": 96,
        "steps": 2,
        "seed": 9,
    }
    fields.update(options)
    return GenerationRequest(**fields)  # type: ignore[arg-type]


@pytest.mark.parametrize("method", list(INPUTS))
def test_every_method_returns_its_layers_with_alpha_where_it_belongs(
    method: Method, demo_sdxl_models: ModelSet
) -> None:
    parameters = dict(demo_sdxl_models.base.unet.named_parameters())
    conv_in = demo_sdxl_models.base.unet.conv_in
    result = run_method(request_for(method, batch_size=2), demo_sdxl_models)
    assert len(result.images) == 2 and result.seeds == [9, 10]
    for layers in result.images:
        assert set(layers) == set(METHOD_SPECS[method].outputs)
        for role, image in layers.items():
            assert image.shape == (96, 64, 4) and image.dtype == np.uint8
            alpha = image[..., 3]
            if role is FG:
                assert alpha.min() < 255 and alpha.max() > 0, role
            else:
                assert (alpha == 255).all(), role
    # The UNet is left exactly as found: same parameters, same conv_in, 4 input channels.
    unet = demo_sdxl_models.base.unet
    assert unet.conv_in is conv_in and unet.config.in_channels == 4
    assert all(p is parameters[name] for name, p in unet.named_parameters())


@pytest.mark.parametrize("option", [{"ending_step": 0.0}, {"weight": 0.0}])
def test_stop_at_zero_and_weight_zero_change_the_result(
    option: dict[str, float], demo_sdxl_models: ModelSet
) -> None:
    method = Method.SDXL_FG_TO_BLEND
    full = run_method(request_for(method), demo_sdxl_models).images[0][BLEND]
    changed = run_method(request_for(method, **option), demo_sdxl_models).images[0][BLEND]
    assert not np.array_equal(full, changed)


def test_the_condition_steers_the_result(demo_sdxl_models: ModelSet) -> None:
    method = Method.SDXL_BG_TO_BLEND
    blue = run_method(request_for(method), demo_sdxl_models).images[0][BLEND]
    other = {BG: layer((240, 240, 20), transparent_border=False)}
    yellow = run_method(request_for(method, inputs=other), demo_sdxl_models).images[0][BLEND]
    assert not np.array_equal(blue, yellow)


def test_conditions_are_concatenated_in_the_references_order(
    demo_sdxl_models: ModelSet, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[list[tuple[int, int, int]]] = []
    original = sdxl_recipe.condition_latents

    def spy(models, images):
        seen.append([tuple(image[48, 32, :3]) for image in images])  # each layer's colour
        return original(models, images)

    monkeypatch.setattr(sdxl_recipe, "condition_latents", spy)
    for method in (Method.SDXL_FG_BLEND_TO_BG, Method.SDXL_BG_BLEND_TO_FG):
        run_method(request_for(method), demo_sdxl_models)
    fg, bg, blend = ((220, 40, 20), (20, 90, 200), (120, 110, 100))
    assert seen == [[fg, blend], [bg, blend]]


def _spy_steps(monkeypatch: pytest.MonkeyPatch) -> list[tuple[object, ...]]:
    """Record, per call of one layer file: the file, prompts, sampler, Stop At, seed, conditions."""
    calls: list[tuple[object, ...]] = []
    original = sdxl_blending.sample_layer_file

    def spy(request, models, on_step, **options):
        calls.append(
            (
                options["layer_file"],
                request.prompt,
                request.negative_prompt,
                request.sampler,
                request.ending_step,
                request.seed,
                len(options["conditions"]),
            )
        )
        return original(request, models, on_step, **options)

    monkeypatch.setattr(sdxl_blending, "sample_layer_file", spy)
    return calls


def test_one_click_reproduces_the_seed_readmes_two_step_recipe_in_one_call(
    demo_sdxl_models: ModelSet, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Step 1 "a dog sitting in room", DPM++ 2M SDE Karras, Stop At 1; step 2 "room",
    UniPC, Stop At 0.5 (the README's Foreground Condition, SDXL, two steps)."""
    calls = _spy_steps(monkeypatch)
    request = request_for(
        Method.SDXL_FG_TO_BG,
        prompt="a dog sitting in room, high quality",
        negative_prompt="bad, ugly",
        second_prompt="room, high quality",
        sampler=Sampler.DPMPP_2M_SDE_KARRAS,
        cfg_scale=7.0,
        seed=12345,
    )
    run_method(request, demo_sdxl_models)
    assert calls == [
        ("layer_xl_fg2ble", "a dog sitting in room, high quality", "bad, ugly",
         Sampler.DPMPP_2M_SDE_KARRAS, 1.0, 12345, 1),
        ("layer_xl_fgble2bg", "room, high quality", "bad, ugly", Sampler.UNIPC, 0.5, 12345, 2),
    ]  # fmt: skip


def test_one_click_steps_2_defaults_are_the_recipes_and_each_can_be_set(
    demo_sdxl_models: ModelSet, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = _spy_steps(monkeypatch)
    run_method(request_for(Method.SDXL_BG_TO_FG, negative_prompt="bad"), demo_sdxl_models)
    # the foreground's step keeps the layer model to the end: its alpha needs it
    assert calls[1] == ("layer_xl_bgble2fg", "a cat on a sofa", "bad", Sampler.UNIPC, 1.0, 9, 2)
    calls.clear()
    request = request_for(
        Method.SDXL_BG_TO_FG,
        second_prompt="",
        second_negative_prompt="blurry",
        second_sampler=Sampler.EULER_A,
        second_ending_step=0.8,
        ending_step=0.9,
    )
    run_method(request, demo_sdxl_models)
    assert calls[0][3:5] == (Sampler.DPMPP_2M_KARRAS, 0.9)  # step 1: the request's own
    assert calls[1] == ("layer_xl_bgble2fg", "", "blurry", Sampler.EULER_A, 0.8, 9, 2)


def test_one_click_runs_each_results_step_2_from_its_blend_and_seed_with_one_progress_bar(
    demo_sdxl_models: ModelSet, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = _spy_steps(monkeypatch)
    progress: list[tuple[int, int]] = []
    request = request_for(Method.SDXL_FG_TO_BG, batch_size=2, sampler=Sampler.DDIM, steps=3)
    result = run_method(
        request, demo_sdxl_models, lambda step, total, _: progress.append((step, total))
    )
    assert [(call[0], call[5], call[6]) for call in calls] == [
        ("layer_xl_fg2ble", 9, 1),
        ("layer_xl_fgble2bg", 9, 2),
        ("layer_xl_fgble2bg", 10, 2),
    ]
    assert [set(layers) for layers in result.images] == [{BG, BLEND}] * 2
    # DDIM makes 3 calls at 3 steps (A1111's 1, 334, 667, 999: all but the lowest), UniPC
    # runs 4 steps (as many as that list is long): 3 + 2 x 4 in one bar
    assert progress == [(step, 11) for step in range(1, 12)]


def test_transparent_img2img_through_the_sdxl_encoder(demo_sdxl_models: ModelSet) -> None:
    method = Method.SDXL_TRANSPARENT_ATTN
    txt2img = run_method(request_for(method), demo_sdxl_models).images[0][FG]
    img2img = run_method(request_for(method, inputs={FG: FOREGROUND}), demo_sdxl_models).images[0][
        FG
    ]
    assert img2img.shape == txt2img.shape and not np.array_equal(img2img, txt2img)


def test_sdxl_vae_is_kept_in_float32_when_the_set_runs_in_half(demo_cache_dir: Path) -> None:
    """SDXL's VAE overflows in float16 (force_upcast in its config); the UNet does not."""
    models = open_model_set(
        demo=True,
        demo_family=ModelFamily.SDXL,
        cache_dir=demo_cache_dir,
        device="cpu",
        dtype="float16",
    )
    assert models.base.vae.config.force_upcast is True
    assert models.base.vae.dtype == torch.float32
    assert models.base.unet.dtype == torch.float16


def test_an_empty_negative_prompt_is_zeros_as_a1111s_sdxl_makes_it(
    demo_sdxl_models: ModelSet,
) -> None:
    context, uncond, (negative, positive) = encode_text_sdxl(
        demo_sdxl_models, ["an apple", "an apple"], ["", "bad, ugly"], 64, 64
    )
    pooled = negative["text_embeds"]
    assert torch.count_nonzero(uncond[0]) == 0 and torch.count_nonzero(pooled[0]) == 0
    assert torch.count_nonzero(uncond[1]) > 0 and torch.count_nonzero(pooled[1]) > 0
    assert torch.count_nonzero(context) > 0
    assert torch.equal(negative["time_ids"], positive["time_ids"])  # the sizes stay
