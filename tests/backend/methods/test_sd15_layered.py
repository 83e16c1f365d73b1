"""SD1.5 joint, fg→bg and bg→fg end to end on the demo set: layers, sizes, alpha, any N."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from backend import model_set
from backend.errors import InvalidRequest
from backend.methods import sd15_frames
from backend.methods.framing import Framing
from backend.methods.registry import run_method
from backend.methods.request import GenerationRequest
from backend.methods.stages import encode_text
from backend.model_set import ModelSet
from backend.store.model_sets import open_model_set
from protocol import METHOD_SPECS, LayerRole, Method, Sampler

FG, BG, BLEND = LayerRole.FOREGROUND, LayerRole.BACKGROUND, LayerRole.BLENDED


def layer(height: int, width: int, colour: tuple[int, int, int], alpha_box: bool) -> np.ndarray:
    image = np.zeros((height, width, 4), dtype=np.uint8)
    image[..., :3] = colour
    if alpha_box:
        image[height // 4 : 3 * height // 4, width // 4 : 3 * width // 4, 3] = 255
    else:
        image[..., 3] = 255
    return image


INPUTS = {
    Method.SD15_JOINT: {},
    Method.SD15_FG_TO_BG: {FG: layer(96, 64, (220, 40, 20), alpha_box=True)},
    Method.SD15_BG_TO_FG: {BG: layer(96, 64, (20, 90, 200), alpha_box=False)},
}


def request_for(method: Method, **options: object) -> GenerationRequest:
    fields: dict[str, object] = {
        "method": method,
        "prompt": "a cat on a sofa",
        "negative_prompt": "bad, ugly",
        "inputs": INPUTS[method],
        "width": 80,
        "height": 112,
        "steps": 2,
        "seed": 5,
    }
    fields.update(options)
    return GenerationRequest(**fields)  # type: ignore[arg-type]


@pytest.mark.parametrize("method", list(INPUTS))
def test_each_method_returns_its_layers_at_the_requested_size(
    method: Method, demo_models: ModelSet
) -> None:
    result = run_method(request_for(method), demo_models)
    (layers,) = result.images
    assert set(layers) == set(METHOD_SPECS[method].outputs)
    assert result.generation_size == (64, 128)
    for role, image in layers.items():
        assert image.shape == (112, 80, 4) and image.dtype == np.uint8, role
        alpha = image[..., 3]
        if role == FG:  # alpha where it belongs: decoded by the transparent decoder
            assert alpha.min() < 255 and alpha.max() > 0 and len(np.unique(alpha)) > 8
        else:
            assert (alpha == 255).all()


@pytest.mark.parametrize("count", [1, 2, 4])
def test_any_number_of_results_works(count: int, demo_models: ModelSet) -> None:
    request = request_for(Method.SD15_JOINT, batch_size=count, width=64, height=64)
    result = run_method(request, demo_models)
    assert len(result.images) == count
    # Rows are results × 3 frames with consecutive seeds, as A1111 seeds a batch of 3N.
    assert result.seeds == [5 + 3 * i for i in range(count)]
    assert all(set(images) == {FG, BG, BLEND} for images in result.images)


def test_batch_count_continues_the_seeds(demo_models: ModelSet) -> None:
    request = request_for(Method.SD15_FG_TO_BG, batch_size=2, batch_count=2, width=64, height=64)
    assert run_method(request, demo_models).seeds == [5, 7, 9, 11]


def test_layer_prompts_replace_only_the_positive_rows_and_only_until_stop_at(
    demo_models: ModelSet,
) -> None:
    """As the original's cond_overwrite: frame f's positive rows see "<layer>, <prompt>"
    while the layer model is on; after Stop At the plain UNet sees the prompt."""
    unet = demo_models.base.unet
    seen: list[torch.Tensor] = []

    def look(module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        seen.append(kwargs["encoder_hidden_states"].clone())

    request = request_for(
        Method.SD15_JOINT,
        prompt="high quality",
        layer_prompts={FG: "apple", BLEND: "apple on a table"},
        width=64,
        height=64,
        steps=4,
        sampler=Sampler.EULER,  # timesteps 999, 666 | 333, 0: Stop At 0.5 stops after two
        ending_step=0.5,
    )
    hook = unet.register_forward_pre_hook(look, with_kwargs=True)
    try:
        run_method(request, demo_models)
    finally:
        hook.remove()
    texts = ["high quality", "apple, high quality", "apple on a table, high quality"]
    (main, fg, blend), (negative, _, _) = encode_text(demo_models, texts, ["bad, ugly"] * 3)
    layered = torch.stack([fg, main, blend])  # frames: foreground, background, blend
    plain = torch.stack([main, main, main])
    assert len(seen) == 4 and all(context.shape[0] == 6 for context in seen)  # uncond | cond
    for step, context in enumerate(seen):
        torch.testing.assert_close(context[:3], negative.expand(3, -1, -1))
        torch.testing.assert_close(context[3:], layered if step < 2 else plain)


def test_without_layer_prompts_every_step_sees_the_prompt(demo_models: ModelSet) -> None:
    unet = demo_models.base.unet
    seen: list[torch.Tensor] = []
    hook = unet.register_forward_pre_hook(
        lambda module, args, kwargs: seen.append(kwargs["encoder_hidden_states"]),
        with_kwargs=True,
    )
    try:
        run_method(request_for(Method.SD15_FG_TO_BG, width=64, height=64), demo_models)
    finally:
        hook.remove()
    (main,), _ = encode_text(demo_models, ["a cat on a sofa"], ["bad, ugly"])
    for context in seen:
        torch.testing.assert_close(context[2:], main.expand(2, -1, -1))


def test_a_layer_prompt_changes_that_layer(demo_models: ModelSet) -> None:
    plain = run_method(request_for(Method.SD15_JOINT, width=64, height=64), demo_models)
    prompted = run_method(
        request_for(Method.SD15_JOINT, width=64, height=64, layer_prompts={FG: "a red apple"}),
        demo_models,
    )
    assert not np.array_equal(plain.images[0][FG], prompted.images[0][FG])


def test_the_control_image_steers_the_result(demo_models: ModelSet) -> None:
    red = run_method(request_for(Method.SD15_FG_TO_BG), demo_models).images[0][BG]
    other = {FG: layer(96, 64, (10, 200, 30), alpha_box=False)}
    green = run_method(request_for(Method.SD15_FG_TO_BG, inputs=other), demo_models).images[0][BG]
    assert not np.array_equal(red, green)


def test_stop_at_zero_differs_from_the_full_layer_model(demo_models: ModelSet) -> None:
    full = run_method(request_for(Method.SD15_BG_TO_FG), demo_models).images[0][BLEND]
    never = run_method(request_for(Method.SD15_BG_TO_FG, ending_step=0.0), demo_models)
    assert not np.array_equal(full, never.images[0][BLEND])


def test_same_seed_reproduces(demo_models: ModelSet) -> None:
    first = run_method(request_for(Method.SD15_BG_TO_FG), demo_models).images[0]
    second = run_method(request_for(Method.SD15_BG_TO_FG), demo_models).images[0]
    assert all(np.array_equal(first[role], second[role]) for role in first)


def test_the_unet_is_left_as_found(demo_models: ModelSet) -> None:
    before = dict(demo_models.base.unet.attn_processors)
    run_method(request_for(Method.SD15_FG_TO_BG), demo_models)
    assert demo_models.base.unet.attn_processors == before


@pytest.mark.parametrize(
    ("method", "message"),
    [
        (Method.SD15_FG_TO_BG, "inputs: sd15_fg2bg needs a foreground layer"),
        (Method.SD15_BG_TO_FG, "inputs: sd15_bg2fg needs a background layer"),
    ],
)
def test_a_missing_condition_layer_is_refused(
    method: Method, message: str, demo_models: ModelSet
) -> None:
    with pytest.raises(InvalidRequest) as caught:
        run_method(request_for(method, inputs={}), demo_models)
    assert str(caught.value) == message


def test_control_image_is_composited_on_gray_and_mapped_into_the_generation() -> None:
    request = request_for(Method.SD15_FG_TO_BG, width=64, height=96)
    framing = Framing(request_size=(64, 96), generation_size=(64, 128))
    image = sd15_frames.control_image(request, FG, framing)
    assert image.shape == (1, 3, 128, 64) and image.dtype == torch.float32
    # Transparent pixels become 50 % gray, as the original's rgba2rgbfp32 makes them.
    assert torch.allclose(image[0, :, 0, 0], torch.full((3,), 0.5))
    centre = image[0, :, 64, 32]
    assert torch.allclose(centre, torch.tensor([220, 40, 20]) / 255.0, atol=1e-6)


@pytest.mark.parametrize("sampler", list(Sampler))
def test_every_sampler_runs_the_layer_methods(sampler: Sampler, demo_models: ModelSet) -> None:
    request = request_for(Method.SD15_BG_TO_FG, sampler=sampler, width=64, height=64)
    layers = run_method(request, demo_models).images[0]
    assert set(layers) == {FG, BLEND}
    assert all(image.shape == (64, 64, 4) for image in layers.values())


@pytest.fixture
def fresh_models(demo_cache_dir: Path) -> ModelSet:
    """A demo set of its own: these tests watch its layer-model cache from empty."""
    return open_model_set(demo=True, cache_dir=demo_cache_dir, device="cpu", dtype="float32")


def test_jobs_with_the_same_file_reuse_its_attached_layer_model(
    fresh_models: ModelSet, demo_models: ModelSet, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The merge runs once per file while it stays kept; results stay bit for bit."""
    reference = run_method(request_for(Method.SD15_FG_TO_BG), demo_models).images[0]
    attached: list[int] = []
    real_attach = model_set.attach_sd15_layer_model

    def counting_attach(unet: torch.nn.Module, state_dict: dict) -> object:
        # the kept one is detached before another is merged: one on the device at a time
        assert not fresh_models._layer_handles
        attached.append(len(state_dict))
        return real_attach(unet, state_dict)

    monkeypatch.setattr(model_set, "attach_sd15_layer_model", counting_attach)
    own = dict(fresh_models.base.unet.attn_processors)

    def job(method: Method) -> dict[LayerRole, np.ndarray]:
        images = run_method(request_for(method), fresh_models).images[0]
        assert fresh_models.base.unet.attn_processors == own  # switched off between jobs
        return images

    first, second = job(Method.SD15_FG_TO_BG), job(Method.SD15_FG_TO_BG)
    assert len(attached) == 1
    for images in (first, second):
        assert all(np.array_equal(images[role], reference[role]) for role in reference)
    job(Method.SD15_JOINT)  # another file: fg2bg's is detached (one is kept)
    assert len(attached) == 2
    job(Method.SD15_JOINT)
    assert len(attached) == 2
    last = job(Method.SD15_FG_TO_BG)
    assert len(attached) == 3
    assert all(np.array_equal(last[role], reference[role]) for role in reference)


def test_a_job_that_fails_midway_leaves_the_unet_as_found(fresh_models: ModelSet) -> None:
    own = dict(fresh_models.base.unet.attn_processors)
    reference = run_method(request_for(Method.SD15_BG_TO_FG), fresh_models).images[0]

    def fail(step: int, total: int, preview: object = None) -> None:
        raise RuntimeError("the sampler stopped")

    with pytest.raises(RuntimeError, match="the sampler stopped"):
        run_method(request_for(Method.SD15_BG_TO_FG), fresh_models, fail)
    assert fresh_models.base.unet.attn_processors == own
    again = run_method(request_for(Method.SD15_BG_TO_FG), fresh_models).images[0]
    assert all(np.array_equal(again[role], reference[role]) for role in reference)


def test_keeping_no_layer_model_attaches_one_per_job(
    fresh_models: ModelSet, monkeypatch: pytest.MonkeyPatch
) -> None:
    fresh_models.kept_layer_models = 0
    own = dict(fresh_models.base.unet.attn_processors)
    attached: list[object] = []
    real_attach = model_set.attach_sd15_layer_model

    def counting_attach(unet: torch.nn.Module, state_dict: dict) -> object:
        attached.append(handle := real_attach(unet, state_dict))
        return handle

    monkeypatch.setattr(model_set, "attach_sd15_layer_model", counting_attach)
    first = run_method(request_for(Method.SD15_FG_TO_BG), fresh_models).images[0]
    second = run_method(request_for(Method.SD15_FG_TO_BG), fresh_models).images[0]
    assert len(attached) == 2 and not fresh_models._layer_handles
    assert all(np.array_equal(first[role], second[role]) for role in first)
    assert fresh_models.base.unet.attn_processors == own
    with pytest.raises(RuntimeError, match="detached"):  # each was dropped after its job
        attached[0].set_active(True)  # type: ignore[attr-defined]
