"""SD1.5 transparent txt2img and img2img end to end on the demo model set."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from backend.errors import Cancelled, InvalidRequest
from backend.methods import registry, sd15_transparent
from backend.methods.denoise import seeded_noise
from backend.methods.registry import check_request, run_method
from backend.methods.request import GenerationRequest, GenerationResult
from backend.methods.schedule import plan_schedule
from backend.methods.sd15_frames import framing_of
from backend.methods.stages import encode_transparent_source, transparent_decode, vae_decode
from backend.model_set import ModelSet
from protocol import LayerRole, Method, ModelFamily, ResizeMode, Sampler

FG = LayerRole.FOREGROUND


def _generate(models: ModelSet, **options: object) -> GenerationResult:
    """A 64 x 64, 2-step transparent generation with `options` overriding."""
    fields: dict[str, object] = {
        "method": Method.SD15_TRANSPARENT,
        "prompt": "a glass of water",
        "negative_prompt": "bad, ugly",
        "width": 64,
        "height": 64,
        "steps": 2,
        "seed": 100,
    }
    fields.update(options)
    return run_method(GenerationRequest(**fields), models)  # type: ignore[arg-type]


def _foreground(result: GenerationResult, index: int = 0) -> np.ndarray:
    return result.images[index][FG]


def _disc(height: int, width: int) -> np.ndarray:
    """An orange disc with a soft edge on a transparent ground."""
    rows, columns = np.mgrid[0:height, 0:width]
    distance = np.hypot((rows - height / 2) / height, (columns - width / 2) / width)
    image = np.zeros((height, width, 4), dtype=np.uint8)
    image[..., :3] = (230, 120, 20)
    image[..., 3] = np.clip((0.45 - distance) * 255 / 0.15, 0, 255).astype(np.uint8)
    return image


def _processors(models: ModelSet) -> dict[str, object]:
    return dict(models.base.unet.attn_processors)


def test_a_100x70_request_returns_100x70_rgba_generated_at_multiples_of_64(
    demo_models: ModelSet,
) -> None:
    result = _generate(demo_models, width=100, height=70)
    assert result.generation_size == (128, 64)
    assert [set(layers) for layers in result.images] == [{FG}]
    assert (_foreground(result).shape, _foreground(result).dtype) == ((70, 100, 4), np.uint8)
    assert result.seeds == [100]


@pytest.mark.parametrize("mode", list(ResizeMode))
def test_every_resize_mode_returns_the_requested_size(
    demo_models: ModelSet, mode: ResizeMode
) -> None:
    # an img2img source of another aspect, so the mode acts on the input as well
    result = _generate(
        demo_models, width=100, height=70, resize_mode=mode, inputs={FG: _disc(40, 90)}
    )
    assert _foreground(result).shape == (70, 100, 4)


def test_two_batches_of_two_give_four_images_with_consecutive_seeds(
    demo_models: ModelSet,
) -> None:
    steps: list[tuple[int, int]] = []
    request = GenerationRequest(
        method=Method.SD15_TRANSPARENT, width=64, height=64, steps=2, seed=40, batch_size=2
    )
    request.batch_count = 2
    result = run_method(
        request, demo_models, lambda step, total, latents: steps.append((step, total))
    )
    assert result.seeds == [40, 41, 42, 43]
    assert [_foreground(result, index).shape for index in range(4)] == [(64, 64, 4)] * 4
    # progress counts the steps of both passes
    assert steps == [(1, 4), (2, 4), (3, 4), (4, 4)]


def test_a_seed_reproduces_its_image_bit_for_bit_and_another_seed_differs(
    demo_models: ModelSet,
) -> None:
    first = _foreground(_generate(demo_models, seed=7))
    assert np.array_equal(first, _foreground(_generate(demo_models, seed=7)))
    assert not np.array_equal(first, _foreground(_generate(demo_models, seed=8)))


@pytest.mark.parametrize("sampler", [Sampler.DDIM, Sampler.EULER_A])
def test_image_i_of_a_batch_is_its_seed_generated_alone(
    demo_models: ModelSet, sampler: Sampler
) -> None:
    """Per-row seeds (and, for Euler a, per-row step noise): batching does not change an image.

    Batched convolutions round differently from single ones, so a few pixels may move by one
    level; a different seed changes most of them.
    """
    batch = _generate(demo_models, sampler=sampler, seed=20, batch_size=3)
    alone = _foreground(_generate(demo_models, sampler=sampler, seed=22)).astype(int)
    neighbour = _foreground(_generate(demo_models, sampler=sampler, seed=21)).astype(int)
    third = _foreground(batch, 2).astype(int)
    assert batch.seeds == [20, 21, 22]
    assert np.abs(third - alone).max() <= 1
    assert (third != alone).mean() < 0.01
    assert (third != neighbour).mean() > 0.5


def test_alpha_spans_transparent_partial_and_opaque(demo_models: ModelSet) -> None:
    alpha = _foreground(_generate(demo_models, width=128, height=128, steps=3))[..., 3]
    assert alpha.dtype == np.uint8
    assert alpha.min() < 255 and alpha.max() > 0
    assert ((alpha > 0) & (alpha < 255)).any()
    assert np.unique(alpha).size > 10


@pytest.mark.parametrize("sampler", list(Sampler))
def test_every_sampler_runs(demo_models: ModelSet, sampler: Sampler) -> None:
    image = _foreground(_generate(demo_models, sampler=sampler, steps=3))
    assert image.shape == (64, 64, 4)
    assert np.unique(image[..., 3]).size > 1


def test_transparent_img2img_starts_from_the_foreground(demo_models: ModelSet) -> None:
    source = {FG: _disc(64, 64)}
    txt2img = _foreground(_generate(demo_models, seed=5))
    img2img = _foreground(_generate(demo_models, seed=5, inputs=source, denoise_strength=0.5))
    assert img2img.shape == (64, 64, 4)
    assert not np.array_equal(img2img, txt2img)


def test_img2img_at_denoise_0_with_ddim_is_the_sources_round_trip_at_timestep_1(
    demo_models: ModelSet,
) -> None:
    """No UNet call runs (A1111's DDIM at t_enc 0): the result is the encoded source, noised
    to timestep 1, decoded, whatever the prompt."""
    source = _disc(50, 80)
    options = {
        "width": 80,
        "height": 50,
        "inputs": {FG: source},
        "denoise_strength": 0.0,
        "sampler": Sampler.DDIM,
    }
    result = _foreground(_generate(demo_models, seed=1, **options))
    other = _foreground(_generate(demo_models, seed=1, prompt="a tree", **options))
    assert np.array_equal(result, other)

    request = GenerationRequest(method=Method.SD15_TRANSPARENT, width=80, height=50)
    framing = framing_of(request)
    latents = encode_transparent_source(demo_models, framing.to_generation(source))
    noise, _ = seeded_noise([1], tuple(latents.shape[1:]), demo_models.device, demo_models.dtype)
    schedule = plan_schedule(
        Sampler.DDIM, demo_models.base.scheduler_config, 2, img2img=True, strength=0.0
    )
    assert len(schedule.timesteps) == 0
    start = schedule.start(latents, noise)
    (decoded,) = transparent_decode(demo_models, start, vae_decode(demo_models, start))
    assert np.array_equal(result, framing.to_request(decoded))


def test_stop_at_0_never_uses_the_layer_model_and_differs_from_stop_at_1(
    demo_models: ModelSet,
) -> None:
    with_layer_model = _foreground(_generate(demo_models, ending_step=1.0))
    without = _foreground(_generate(demo_models, ending_step=0.0))
    assert not np.array_equal(with_layer_model, without)


def test_the_unets_processors_are_restored_after_a_run(demo_models: ModelSet) -> None:
    before = _processors(demo_models)
    during: list[bool] = []

    def look(step: int, total: int, latents: torch.Tensor) -> None:
        now = _processors(demo_models)
        during.append(any(now[name] is not before[name] for name in before))

    run_method(
        GenerationRequest(method=Method.SD15_TRANSPARENT, width=64, height=64, steps=2),
        demo_models,
        look,
    )
    after = _processors(demo_models)
    assert during == [True, True]
    assert after.keys() == before.keys()
    assert all(after[name] is before[name] for name in before)


def test_a_cancelled_run_raises_and_restores_the_unets_processors(demo_models: ModelSet) -> None:
    before = _processors(demo_models)
    steps: list[int] = []

    def cancel_at_step_2(step: int, total: int, latents: torch.Tensor) -> None:
        steps.append(step)
        if step == 2:
            raise Cancelled("cancelled by the test")

    request = GenerationRequest(method=Method.SD15_TRANSPARENT, width=64, height=64, steps=4)
    with pytest.raises(Cancelled, match=r"^cancelled by the test$"):
        run_method(request, demo_models, cancel_at_step_2)
    after = _processors(demo_models)
    assert steps == [1, 2]
    assert all(after[name] is before[name] for name in before)
    assert after.keys() == before.keys()


def test_an_sd15_method_is_refused_on_an_sdxl_model_set(demo_models: ModelSet) -> None:
    sdxl = dataclasses.replace(
        demo_models, base=dataclasses.replace(demo_models.base, family=ModelFamily.SDXL)
    )
    request = GenerationRequest(method=Method.SD15_TRANSPARENT)
    with pytest.raises(InvalidRequest) as caught:
        check_request(request, sdxl)
    assert str(caught.value) == (
        "method: sd15_transparent needs a sd15 base model, "
        "but demo-sd15 (tiny random weights: pictures are noise) is sdxl"
    )
    assert caught.value.field == "method"


def test_a_method_without_a_runner_is_not_available(
    demo_models: ModelSet, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(registry, "METHOD_RUNNERS", {Method.SD15_TRANSPARENT: sd15_transparent.run})
    with pytest.raises(InvalidRequest) as caught:
        run_method(GenerationRequest(method=Method.SD15_JOINT), demo_models)
    assert str(caught.value) == (
        "method: sd15_joint is not available in this backend; available: sd15_transparent"
    )


def test_an_sdxl_method_on_an_sd15_model_is_refused(demo_models: ModelSet) -> None:
    with pytest.raises(InvalidRequest) as caught:
        check_request(GenerationRequest(method=Method.SDXL_TRANSPARENT_ATTN), demo_models)
    assert str(caught.value) == (
        "method: sdxl_transparent_attn needs a sdxl base model, "
        "but demo-sd15 (tiny random weights: pictures are noise) is sd15"
    )
    assert Method.SDXL_TRANSPARENT_ATTN in registry.available_methods()


def test_an_invalid_request_is_refused_before_anything_runs(demo_models: ModelSet) -> None:
    steps: list[int] = []
    with pytest.raises(InvalidRequest, match=r"^steps: 0 outside 1\.\.150$"):
        run_method(
            GenerationRequest(method=Method.SD15_TRANSPARENT, steps=0),
            demo_models,
            lambda step, total, latents: steps.append(step),
        )
    assert steps == []
