"""`split_layers` as the registry runs it, on the Qwen-Image-Layered demo set.

The demo's layers are noise, but everything a painter relies on is checked: N layers of
the request's size in one stack, the seed's determinism, the selection clearing what lies
outside it in every layer, refusals before any tensor, and the model set's family.
"""

from __future__ import annotations

import numpy as np
import pytest

from backend.errors import InvalidRequest
from backend.methods.registry import check_request, run_method
from backend.methods.request import GenerationRequest
from backend.methods.split_layers import resolution_for
from backend.model_set import LayeredModelSet
from backend.split import TRAINED_RESOLUTIONS
from backend.split.demo import DEMO_RESOLUTIONS
from protocol import LayerRole, Method, ModelFamily

LAYER, MASK = LayerRole.LAYER, LayerRole.MASK


def picture(width: int = 48, height: int = 40, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    rgba = rng.integers(0, 256, (height, width, 4), dtype=np.uint8)
    rgba[..., 3] = 255
    return rgba


def split(models, **fields) -> GenerationRequest:
    base = {
        "method": Method.SPLIT_LAYERS,
        "inputs": {LAYER: picture()},
        "width": 48,
        "height": 40,
        "steps": 2,
        "cfg_scale": 4.0,
        "layers": 3,
        "prompt": "a red cup on a table",
    }
    return GenerationRequest(**{**base, **fields})


def test_the_set_is_qwen_layered_and_offers_no_lora(demo_layered_models) -> None:
    assert demo_layered_models.family is ModelFamily.QWEN_LAYERED
    assert demo_layered_models.is_demo and demo_layered_models.offered_loras == {}
    with pytest.raises(ValueError, match="takes no LoRA"):
        demo_layered_models.use_lora("hyper_sd15_8steps")


def test_a_split_returns_its_layers_as_one_stack_bottom_first(demo_layered_models) -> None:
    steps = []
    result = run_method(
        split(demo_layered_models), demo_layered_models, lambda s, t, _: steps.append((s, t))
    )
    [layers] = result.images
    assert list(layers) == [LAYER]
    stack = layers[LAYER]
    assert stack.shape == (3, 40, 48, 4) and stack.dtype == np.uint8
    assert result.seeds == [12345]
    assert steps == [(1, 2), (2, 2)]
    width, height = result.generation_size
    small = demo_layered_models.resolutions[0]
    assert width % 32 == 0 and height % 32 == 0 and abs(width * height - small * small) < small * 64


def test_the_same_seed_splits_the_same_and_batches_count_on(demo_layered_models) -> None:
    # One layer each: the demo's VAE decode at 640² is most of a split's time on a CPU.
    first = run_method(split(demo_layered_models, layers=1), demo_layered_models)
    again = run_method(split(demo_layered_models, layers=1, batch_count=2), demo_layered_models)
    assert again.seeds == [12345, 12346]
    assert np.array_equal(first.images[0][LAYER], again.images[0][LAYER])
    assert not np.array_equal(again.images[0][LAYER], again.images[1][LAYER])


def test_a_selection_clears_every_layer_outside_it(demo_layered_models) -> None:
    mask = np.zeros((40, 48, 4), dtype=np.uint8)
    mask[8:30, 10:40, 3] = 255
    request = split(demo_layered_models, inputs={LAYER: picture(), MASK: mask}, layers=2)
    stack = run_method(request, demo_layered_models).images[0][LAYER]
    outside = mask[..., 3] == 0
    assert (stack[:, outside, 3] == 0).all()
    assert stack[:, ~outside, 3].any()


def test_a_picture_of_another_size_is_fitted_to_the_request(demo_layered_models) -> None:
    request = split(demo_layered_models, inputs={LAYER: picture(96, 80)}, layers=1)
    assert run_method(request, demo_layered_models).images[0][LAYER].shape == (1, 40, 48, 4)


def test_refusals_name_the_field(demo_layered_models, demo_models) -> None:
    empty = picture()
    empty[..., 3] = 0
    with pytest.raises(InvalidRequest, match=r"^inputs\.layer: the picture to split has nothing"):
        run_method(split(demo_layered_models, inputs={LAYER: empty}), demo_layered_models)
    with pytest.raises(InvalidRequest, match=r"^inputs: split_layers needs a layer layer"):
        check_request(split(demo_layered_models, inputs={}))
    with pytest.raises(InvalidRequest, match=r"^layers: 11 outside 1\.\.10"):
        check_request(split(demo_layered_models, layers=11))
    with pytest.raises(InvalidRequest, match=r"split_layers needs a qwen_layered base model"):
        check_request(split(demo_models), demo_models)


def test_the_area_is_640_unless_the_request_is_as_large_as_1024(demo_layered_models) -> None:
    release = LayeredModelSet(base=demo_layered_models.base).resolutions
    assert release == TRAINED_RESOLUTIONS == (640, 1024)
    assert resolution_for(split(demo_layered_models, width=1000, height=1000), release) == 640
    assert resolution_for(split(demo_layered_models, width=1024, height=1024), release) == 1024
    large = split(demo_layered_models, width=2048, height=1024, fit_to_native=True)
    assert resolution_for(large, release) == 640


def test_the_demo_splits_at_its_own_smaller_areas(demo_layered_models) -> None:
    assert demo_layered_models.resolutions == DEMO_RESOLUTIONS == (256, 512)
    result = run_method(
        split(
            demo_layered_models, width=512, height=512, inputs={LAYER: picture(512, 512)}, layers=1
        ),
        demo_layered_models,
    )
    assert result.generation_size == (512, 512)  # the large area: the request is 512²
    assert result.images[0][LAYER].shape == (1, 512, 512, 4)
