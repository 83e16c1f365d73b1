"""Transparent img2img for the layer methods the original allows it for.

Forge's `before_process_init_images` installs the transparent encoder for the methods
whose output has alpha: the transparent ones, SD1.5 joint and bg2fg, SDXL bgble2fg. The
init image is encoded once and, as A1111 starts every image of a batch from it, every
frame of a result starts from that latent.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from backend.errors import InvalidRequest
from backend.methods import stages
from backend.methods.denoise import seeded_noise
from backend.methods.registry import run_method
from backend.methods.request import GenerationRequest
from backend.methods.schedule import plan_schedule
from backend.model_set import ModelSet
from protocol import METHOD_SPECS, LayerRole, Method, ModelFamily, Sampler

FG, BG, BLEND = LayerRole.FOREGROUND, LayerRole.BACKGROUND, LayerRole.BLENDED
IMG2IMG_METHODS = [Method.SD15_JOINT, Method.SD15_BG_TO_FG, Method.SDXL_BG_BLEND_TO_FG]


def _layer(colour: tuple[int, int, int], alpha: int) -> np.ndarray:
    image = np.zeros((64, 64, 4), dtype=np.uint8)
    image[..., :3] = colour
    image[16:48, 16:48, 3] = alpha
    return image


def _request(method: Method, **options: object) -> GenerationRequest:
    conditions = {BG: _layer((20, 90, 200), 255), BLEND: _layer((120, 110, 100), 255)}
    inputs = {role: conditions[role] for role in METHOD_SPECS[method].required_inputs}
    inputs[FG] = _layer((230, 120, 20), 200)
    fields: dict[str, object] = {
        "method": method,
        "prompt": "a glass cup",
        "inputs": inputs,
        "width": 64,
        "height": 64,
        "steps": 4,
        "seed": 21,
        "sampler": Sampler.EULER,
        "denoise_strength": 0.5,
    }
    fields.update(options)
    return GenerationRequest(**fields)  # type: ignore[arg-type]


def _models(method: Method, sd15: ModelSet, sdxl: ModelSet) -> ModelSet:
    return sd15 if METHOD_SPECS[method].family is ModelFamily.SD15 else sdxl


def test_exactly_the_methods_with_a_transparent_output_take_a_foreground_to_rework() -> None:
    reworkable = {m for m, spec in METHOD_SPECS.items() if FG in spec.optional_inputs}
    assert reworkable == {
        Method.SD15_TRANSPARENT,
        Method.SDXL_TRANSPARENT_ATTN,
        Method.SDXL_TRANSPARENT_CONV,
        Method.FLUX_TRANSPARENT,
        *IMG2IMG_METHODS,
    }
    for method in reworkable:  # the original decodes each with alpha
        assert FG in METHOD_SPECS[method].outputs and FG not in METHOD_SPECS[method].required_inputs


@pytest.mark.parametrize("method", IMG2IMG_METHODS, ids=lambda method: method.value)
def test_every_frame_starts_from_the_encoded_foreground(
    method: Method,
    demo_models: ModelSet,
    demo_sdxl_models: ModelSet,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    models = _models(method, demo_models, demo_sdxl_models)
    sources: list[torch.Tensor] = []
    encode = stages.encode_transparent_source

    def recorded(models: ModelSet, rgba: np.ndarray) -> torch.Tensor:
        assert rgba.shape == (64, 64, 4) and (rgba[32, 32] == (230, 120, 20, 200)).all()
        sources.append(encode(models, rgba))
        return sources[-1]

    monkeypatch.setattr(stages, "encode_transparent_source", recorded)
    first_inputs: list[torch.Tensor] = []

    def look(module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        if not first_inputs:
            first_inputs.append(args[0].clone())

    hook = models.base.unet.register_forward_pre_hook(look, with_kwargs=True)
    try:
        result = run_method(_request(method), models)
    finally:
        hook.remove()
    (source,) = sources
    frames = METHOD_SPECS[method].frames
    assert set(result.images[0]) == set(METHOD_SPECS[method].outputs)

    # Euler, 4 steps at 0.5: t_enc 2, so the run starts at σ index 4 - 2 - 1 = 1 of the
    # txt2img schedule, every frame's row from the source with its own seed's noise.
    txt2img = plan_schedule(Sampler.EULER, models.base.scheduler_config, 4, img2img=False)
    sigma = float(txt2img.scheduler.sigmas[1])
    noise, _ = seeded_noise(
        list(range(21, 21 + frames)), tuple(source.shape[1:]), models.device, models.dtype
    )
    expected = (source + sigma * noise) / math.sqrt(sigma**2 + 1)  # what the UNet sees
    (seen,) = first_inputs
    torch.testing.assert_close(seen, torch.cat([expected, expected]), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("method", IMG2IMG_METHODS, ids=lambda method: method.value)
def test_the_foreground_changes_the_result(
    method: Method, demo_models: ModelSet, demo_sdxl_models: ModelSet
) -> None:
    models = _models(method, demo_models, demo_sdxl_models)
    reworked = run_method(_request(method), models).images[0][FG]
    request = _request(method)
    del request.inputs[FG]
    fresh = run_method(request, models).images[0][FG]
    assert reworked.shape == fresh.shape == (64, 64, 4)
    assert not np.array_equal(reworked, fresh)


@pytest.mark.parametrize("method", [Method.SDXL_BG_TO_BLEND, Method.SDXL_BG_TO_FG])
def test_methods_without_a_transparent_layer_of_the_original_take_no_foreground(
    method: Method,
) -> None:
    inputs = {BG: _layer((1, 2, 3), 255), FG: _layer((4, 5, 6), 255)}
    with pytest.raises(InvalidRequest) as caught:
        GenerationRequest(method=method, inputs=inputs).check()
    assert str(caught.value) == f"inputs: {method.value} takes no foreground layer"
