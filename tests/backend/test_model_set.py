"""ModelSet keeps recently used layer files and the transparent VAE models loaded."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

from backend.layerdiffuse import TransparentVAEDecoder, TransparentVAEEncoder
from backend.model_set import ModelSet
from protocol import ModelFamily

TRANSPARENT = "layer_sd15_transparent_attn"
JOINT = "layer_sd15_joint"
FG2BG = "layer_sd15_fg2bg"
DECODER = "layer_sd15_vae_transparent_decoder"
ENCODER = "layer_sd15_vae_transparent_encoder"


class _CountingLoader:
    """Loads through the demo store and records every name it is asked for."""

    def __init__(self, load: Callable[[str], dict[str, torch.Tensor]]) -> None:
        self.load = load
        self.calls: list[str] = []

    def __call__(self, name: str) -> dict[str, torch.Tensor]:
        self.calls.append(name)
        return self.load(name)


@pytest.fixture
def loader(demo_models: ModelSet) -> _CountingLoader:
    return _CountingLoader(demo_models.load_layer_file)


def _model_set(
    demo_models: ModelSet, loader: _CountingLoader, *, cached: int = 2, **options: object
) -> ModelSet:
    """A fresh ModelSet on the demo base model, in float64 so that the cast shows."""
    fields: dict[str, object] = {
        "base": demo_models.base,
        "load_layer_file": loader,
        "offset_scales": {ENCODER: 0.5},
        "device": torch.device("cpu"),
        "dtype": torch.float64,
        "cached_layer_files": cached,
    }
    fields.update(options)
    return ModelSet(**fields)  # type: ignore[arg-type]


def test_a_layer_file_is_loaded_once_and_kept(
    demo_models: ModelSet, loader: _CountingLoader
) -> None:
    models = _model_set(demo_models, loader)
    first = models.layer_state_dict(TRANSPARENT)
    assert models.layer_state_dict(TRANSPARENT) is first
    assert loader.calls == [TRANSPARENT]


def test_layer_tensors_are_cast_to_the_sets_device_and_dtype(
    demo_models: ModelSet, loader: _CountingLoader
) -> None:
    models = _model_set(demo_models, loader)
    original = demo_models.load_layer_file(TRANSPARENT)
    tensors = models.layer_state_dict(TRANSPARENT)
    assert {value.dtype for value in original.values()} == {torch.float32}
    assert tensors.keys() == original.keys()
    assert {(value.device.type, value.dtype) for value in tensors.values()} == {
        ("cpu", torch.float64)
    }
    assert all(torch.equal(tensors[key], original[key].double()) for key in original)


def test_the_least_recently_used_file_is_dropped_beyond_cached_layer_files(
    demo_models: ModelSet, loader: _CountingLoader
) -> None:
    models = _model_set(demo_models, loader, cached=2)
    models.layer_state_dict(TRANSPARENT)
    models.layer_state_dict(JOINT)
    models.layer_state_dict(TRANSPARENT)  # kept; now the most recently used
    models.layer_state_dict(FG2BG)  # drops JOINT, the least recently used
    models.layer_state_dict(TRANSPARENT)  # still kept
    assert loader.calls == [TRANSPARENT, JOINT, FG2BG]
    models.layer_state_dict(JOINT)  # loaded again; drops FG2BG
    models.layer_state_dict(FG2BG)
    assert loader.calls == [TRANSPARENT, JOINT, FG2BG, JOINT, FG2BG]


def test_one_cached_file_reloads_on_every_switch(
    demo_models: ModelSet, loader: _CountingLoader
) -> None:
    models = _model_set(demo_models, loader, cached=1)
    for name in (TRANSPARENT, TRANSPARENT, JOINT, TRANSPARENT):
        models.layer_state_dict(name)
    assert loader.calls == [TRANSPARENT, JOINT, TRANSPARENT]


def test_the_transparent_decoder_is_loaded_once_on_the_sets_dtype(
    demo_models: ModelSet, loader: _CountingLoader
) -> None:
    models = _model_set(demo_models, loader)
    decoder = models.transparent_decoder()
    assert isinstance(decoder, TransparentVAEDecoder)
    assert models.transparent_decoder() is decoder
    assert loader.calls == [DECODER]
    assert {parameter.dtype for parameter in decoder.parameters()} == {torch.float64}


def test_the_transparent_encoder_is_loaded_once_with_its_offset_scale(
    demo_models: ModelSet, loader: _CountingLoader
) -> None:
    models = _model_set(demo_models, loader)
    encoder, scale = models.transparent_encoder()
    assert isinstance(encoder, TransparentVAEEncoder)
    assert scale == 0.5
    again, _ = models.transparent_encoder()
    assert again is encoder
    assert loader.calls == [ENCODER]
    assert {parameter.dtype for parameter in encoder.parameters()} == {torch.float64}


def test_an_encoder_without_an_offset_scale_uses_1(
    demo_models: ModelSet, loader: _CountingLoader
) -> None:
    _, scale = _model_set(demo_models, loader, offset_scales={}).transparent_encoder()
    assert scale == 1.0


def test_the_vae_models_do_not_take_a_layer_file_slot(
    demo_models: ModelSet, loader: _CountingLoader
) -> None:
    models = _model_set(demo_models, loader, cached=1)
    models.layer_state_dict(TRANSPARENT)
    models.transparent_decoder()
    models.transparent_encoder()
    models.layer_state_dict(TRANSPARENT)
    assert loader.calls == [TRANSPARENT, DECODER, ENCODER]


def test_the_family_is_the_base_models(demo_models: ModelSet) -> None:
    assert demo_models.family is ModelFamily.SD15
    assert demo_models.is_demo
