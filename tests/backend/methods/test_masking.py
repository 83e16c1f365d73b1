"""A selection mask shapes every method's results and keeps the scene outside it.

docs/protocol.md, "Selection masks": every output but the blend has its alpha × mask
(exactly 0 outside, soft values kept at a feathered edge), the blend is the scene input
outside the selection byte for byte, and the latents outside it are kept (a foreground's
source or an empty layer, a background-scene blend's background).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from backend.errors import InvalidRequest
from backend.methods import masking, registry, sd15_frames, sdxl_recipe, stages
from backend.methods.registry import run_method
from backend.methods.request import GenerationRequest, GenerationResult
from backend.model_set import ModelSet
from protocol import METHOD_SPECS, LayerRole, Method, ModelFamily, Sampler

FG, BG, BLEND, MASK = (
    LayerRole.FOREGROUND,
    LayerRole.BACKGROUND,
    LayerRole.BLENDED,
    LayerRole.MASK,
)
SIZE = 64
HARD_ZERO = slice(0, 24)  # columns the selection leaves out (3 latent columns)
FEATHER = slice(24, 40)  # a 16-pixel soft edge
SELECTED = slice(40, SIZE)


def _mask() -> np.ndarray:
    """Left third out, a linear feather, the rest in; only the alpha counts."""
    mask = np.full((SIZE, SIZE, 4), 77, dtype=np.uint8)  # colour is ignored
    mask[..., 3] = 0
    mask[:, FEATHER, 3] = np.linspace(0, 255, 18)[1:-1].astype(np.uint8)
    mask[:, SELECTED, 3] = 255
    return mask


def _layer(colour: tuple[int, int, int], alpha: int) -> np.ndarray:
    rng = np.random.default_rng(sum(colour))
    image = rng.integers(0, 256, (SIZE, SIZE, 4), dtype=np.uint8)  # every byte matters
    image[..., :3] = (image[..., :3] // 4 + np.array(colour, dtype=np.uint8) // 4 * 3).clip(0, 255)
    image[..., 3] = alpha
    image[:8, :8, 3] = 0  # a hole: the scene's own alpha is kept too
    return image


INPUTS = {FG: _layer((230, 120, 20), 200), BG: _layer((20, 90, 200), 255)}
INPUTS[BLEND] = _layer((120, 110, 100), 255)


def _request(method: Method, **fields: object) -> GenerationRequest:
    inputs = {role: INPUTS[role] for role in METHOD_SPECS[method].required_inputs}
    inputs[MASK] = _mask()
    options: dict[str, object] = {
        "method": method,
        "inputs": inputs,
        "width": SIZE,
        "height": SIZE,
        "steps": 2,
        "sampler": Sampler.EULER,
        "seed": 5,
        **fields,
    }
    return GenerationRequest(**options)  # type: ignore[arg-type]


def _models(method: Method, sd15: ModelSet, sdxl: ModelSet) -> ModelSet:
    return sd15 if METHOD_SPECS[method].family is ModelFamily.SD15 else sdxl


def test_alpha_times_mask_is_exact_at_both_ends_and_rounds_between() -> None:
    image = np.zeros((1, 4, 4), dtype=np.uint8)
    image[..., 3] = [255, 200, 1, 128]
    mask = np.array([[0, 255, 128, 1]], dtype=np.uint8)
    assert masking.multiply_alpha(image, mask)[..., 3].tolist() == [[0, 200, 1, 1]]
    full = np.full((1, 4), 255, dtype=np.uint8)
    assert (masking.multiply_alpha(image, full) == image).all()
    assert (masking.multiply_alpha(image, full * 0)[..., 3] == 0).all()


def test_the_blend_over_the_scene_is_each_where_the_mask_is_hard_and_mixes_between() -> None:
    generated = np.array([[[200, 100, 0, 255]] * 3], dtype=np.uint8)
    scene = np.array([[[0, 100, 200, 255], [0, 100, 200, 0], [10, 20, 30, 255]]], dtype=np.uint8)
    mask = np.array([[0, 128, 255]], dtype=np.uint8)
    mixed = masking.blend_over_scene(generated, scene, mask)
    assert (mixed[0, 0] == scene[0, 0]).all() and (mixed[0, 2] == generated[0, 2]).all()
    # Half over a transparent scene pixel: half as opaque, the generated colour unmixed.
    assert mixed[0, 1].tolist() == [200, 100, 0, 128]


def test_the_scene_is_the_given_layer_of_a_method_that_blends_one() -> None:
    scenes = {method: masking.scene_role(method) for method in Method}
    assert {m for m, role in scenes.items() if role is BG} == {
        Method.SD15_BG_TO_FG,
        Method.SDXL_BG_TO_BLEND,
        Method.SDXL_BG_TO_FG,
    }
    assert {m for m, role in scenes.items() if role is FG} == {
        Method.SD15_FG_TO_BG,
        Method.SDXL_FG_TO_BLEND,
        Method.SDXL_FG_TO_BG,
    }
    assert {m for m, role in scenes.items() if role is None} == {
        m for m in Method if BLEND not in METHOD_SPECS[m].outputs
    } | {Method.SD15_JOINT}


# FLUX's method is shaped by the same `apply_mask`: tests/backend/flux/test_flux_method.py;
# a split's layers too: tests/backend/split/test_split_method.py
@pytest.mark.parametrize(
    "method",
    [m for m in Method if METHOD_SPECS[m].family in (ModelFamily.SD15, ModelFamily.SDXL)],
    ids=lambda method: method.value,
)
def test_every_method_is_shaped_by_the_selection(
    method: Method,
    demo_models: ModelSet,
    demo_sdxl_models: ModelSet,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    torch.set_num_threads(1)
    raw: list[GenerationResult] = []
    shape = registry.apply_mask

    def record(request: GenerationRequest, result: GenerationResult) -> GenerationResult:
        raw.append(result)
        return shape(request, result)

    monkeypatch.setattr(registry, "apply_mask", record)
    request = _request(method)
    result = run_method(request, _models(method, demo_models, demo_sdxl_models))
    mask = request.inputs[MASK][..., 3]
    scene_role = masking.scene_role(method)
    layers, (unshaped,) = result.images[0], [r.images[0] for r in raw]
    assert set(layers) == set(METHOD_SPECS[method].outputs)
    for role, image in layers.items():
        alpha = image[..., 3].astype(int)
        if role is BLEND and scene_role is not None:
            scene = INPUTS[scene_role]
            # Outside the selection, the scene input itself, every byte.
            assert (image[:, HARD_ZERO] == scene[:, HARD_ZERO]).all(), role
            assert (image[:, SELECTED] == unshaped[role][:, SELECTED]).all(), role
            continue
        # Alpha exactly 0 outside, and alpha × mask (rounded) inside and on the feather.
        assert (alpha[:, HARD_ZERO] == 0).all(), role
        expected = (unshaped[role][..., 3].astype(int) * mask + 127) // 255
        assert (alpha == expected).all(), role
        assert (image[..., :3] == unshaped[role][..., :3]).all(), role
        if (unshaped[role][..., 3] == 255).all():  # an opaque layer: its alpha is the mask
            assert (alpha == mask).all(), role
            assert 0 < alpha[0, FEATHER].min() < alpha[0, FEATHER].max() < 255


def _latents_of_decode(monkeypatch: pytest.MonkeyPatch, module: object) -> list[torch.Tensor]:
    seen: list[torch.Tensor] = []
    decode = stages.vae_decode

    def spy(models: ModelSet, latents: torch.Tensor) -> torch.Tensor:
        seen.append(latents.clone())
        return decode(models, latents)

    monkeypatch.setattr(module, "vae_decode", spy)
    return seen


OUTSIDE = (..., slice(0, 3))  # latent columns whose 8 × 8 blocks the selection leaves out


@pytest.mark.parametrize(
    ("method", "frames"),
    [
        (Method.SD15_TRANSPARENT, {FG: "source"}),
        (Method.SD15_BG_TO_FG, {FG: "empty", BLEND: "background"}),
        (Method.SD15_FG_TO_BG, {}),
        (Method.SDXL_BG_TO_BLEND, {BLEND: "background"}),
        (Method.SDXL_TRANSPARENT_ATTN, {FG: "empty"}),
    ],
    ids=lambda value: value.value if isinstance(value, Method) else "",
)
def test_the_latents_outside_the_selection_are_kept(
    method: Method,
    frames: dict[LayerRole, str],
    demo_models: ModelSet,
    demo_sdxl_models: ModelSet,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A reworked foreground keeps its source, a new one an empty layer, a background-scene
    blend its background; a frame that keeps nothing is generated everywhere."""
    torch.set_num_threads(1)
    models = _models(method, demo_models, demo_sdxl_models)
    family = METHOD_SPECS[method].family
    seen = _latents_of_decode(
        monkeypatch, sd15_frames if family is ModelFamily.SD15 else sdxl_recipe
    )
    fields = (
        {"inputs": {**_request(method).inputs, FG: INPUTS[FG]}}
        if frames.get(FG) == "source"
        else {}
    )
    run_method(_request(method, **fields), models)
    (latents,) = seen
    kept = {
        "source": stages.encode_transparent_source(models, INPUTS[FG]),
        "empty": stages.encode_transparent_source(models, np.zeros_like(INPUTS[FG])),
        "background": stages.encode_condition(models, INPUTS[BG]),
    }
    roles = METHOD_SPECS[method].outputs if family is ModelFamily.SDXL else _frame_roles(method)
    for row, role in enumerate(roles):
        outside = latents[row][OUTSIDE]
        if role in frames:
            torch.testing.assert_close(outside, kept[frames[role]][0][OUTSIDE])
        else:
            assert not any(torch.allclose(outside, k[0][OUTSIDE], atol=1e-3) for k in kept.values())


def _frame_roles(method: Method) -> tuple[LayerRole, ...]:
    return {
        Method.SD15_TRANSPARENT: (FG,),
        Method.SD15_BG_TO_FG: (FG, BLEND),
        Method.SD15_FG_TO_BG: (BG, BLEND),
    }[method]


def test_a_mask_of_another_size_than_the_request_is_refused() -> None:
    request = _request(Method.SD15_TRANSPARENT, width=SIZE, height=SIZE // 2)
    with pytest.raises(InvalidRequest) as caught:
        request.check()
    assert str(caught.value) == (
        "inputs.mask: the mask is 64x64, the request 64x32 (a mask is sent at the request's size)"
    )
