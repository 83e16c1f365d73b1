"""GenerationRequest.check refuses every out-of-range field with a message naming it."""

from __future__ import annotations

from dataclasses import fields
from typing import Any

import numpy as np
import pytest

from backend.errors import InvalidRequest
from backend.methods.request import GenerationRequest
from protocol import GenerationParameters, LayerRole, Method

FG, BG, BLEND = LayerRole.FOREGROUND, LayerRole.BACKGROUND, LayerRole.BLENDED


def _rgba(height: int = 8, width: int = 8) -> np.ndarray:
    return np.zeros((height, width, 4), dtype=np.uint8)


def _refusal(request: GenerationRequest) -> InvalidRequest:
    with pytest.raises(InvalidRequest) as caught:
        request.check()
    return caught.value


def test_the_defaults_and_a_foreground_for_fg2bg_pass() -> None:
    GenerationRequest(method=Method.SD15_TRANSPARENT).check()
    GenerationRequest(
        method=Method.SD15_FG_TO_BG, inputs={FG: _rgba()}, layer_prompts={BG: "a room"}
    ).check()


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("steps", 0, "steps: 0 outside 1..150"),
        ("steps", 151, "steps: 151 outside 1..150"),
        ("cfg_scale", 0.5, "cfg_scale: 0.5 outside 1.0..30.0"),
        ("cfg_scale", 30.5, "cfg_scale: 30.5 outside 1.0..30.0"),
        ("width", 7, "width: 7 outside 8..4096"),
        ("width", 4097, "width: 4097 outside 8..4096"),
        ("height", 7, "height: 7 outside 8..4096"),
        ("height", 4097, "height: 4097 outside 8..4096"),
        ("batch_size", 0, "batch_size: 0 outside 1..64"),
        ("batch_size", 65, "batch_size: 65 outside 1..64"),
        ("batch_count", 0, "batch_count: 0 outside 1..64"),
        ("batch_count", 65, "batch_count: 65 outside 1..64"),
        ("weight", -0.1, "weight: -0.1 outside 0.0..2.0"),
        ("weight", 2.5, "weight: 2.5 outside 0.0..2.0"),
        ("ending_step", -0.5, "ending_step: -0.5 outside 0.0..1.0"),
        ("ending_step", 1.5, "ending_step: 1.5 outside 0.0..1.0"),
        ("denoise_strength", -0.25, "denoise_strength: -0.25 outside 0.0..1.0"),
        ("denoise_strength", 1.25, "denoise_strength: 1.25 outside 0.0..1.0"),
        ("seed", -1, "seed: -1 outside 0..4294967295"),
        ("seed", 2**32, "seed: 4294967296 outside 0..4294967295"),
    ],
)
def test_a_value_outside_its_range_is_refused_by_name(field: str, value: Any, message: str) -> None:
    error = _refusal(GenerationRequest(method=Method.SD15_TRANSPARENT, **{field: value}))
    assert (str(error), error.field) == (message, field)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("steps", 1),
        ("steps", 150),
        ("cfg_scale", 1.0),
        ("cfg_scale", 30),
        ("width", 8),
        ("height", 4096),
        ("batch_size", 64),
        ("batch_count", 64),
        ("weight", 0),
        ("weight", 2.0),
        ("ending_step", 0.0),
        ("ending_step", 1),
        ("denoise_strength", 0.0),
        ("denoise_strength", 1.0),
        ("seed", 0),
        ("seed", 2**32 - 1),
    ],
)
def test_the_ends_of_each_range_are_accepted(field: str, value: Any) -> None:
    GenerationRequest(method=Method.SD15_TRANSPARENT, **{field: value}).check()


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("steps", True, "steps: expected a number, got bool"),
        ("cfg_scale", False, "cfg_scale: expected a number, got bool"),
        ("seed", True, "seed: expected a number, got bool"),
        ("width", "512", "width: expected a number, got str"),
        ("weight", None, "weight: expected a number, got NoneType"),
    ],
)
def test_a_bool_or_a_non_number_is_not_a_number(field: str, value: Any, message: str) -> None:
    assert str(_refusal(GenerationRequest(method=Method.SD15_TRANSPARENT, **{field: value}))) == (
        message
    )


def test_more_than_64_images_in_all_are_refused() -> None:
    GenerationRequest(method=Method.SD15_TRANSPARENT, batch_size=8, batch_count=8).check()
    error = _refusal(GenerationRequest(method=Method.SD15_TRANSPARENT, batch_size=8, batch_count=9))
    assert (str(error), error.field) == (
        "batch_size: 72 images in all exceed the limit of 64",
        "batch_size",
    )


@pytest.mark.parametrize("field", ["prompt", "negative_prompt"])
def test_a_prompt_over_4000_characters_is_refused(field: str) -> None:
    GenerationRequest(method=Method.SD15_TRANSPARENT, **{field: "a" * 4000}).check()
    error = _refusal(GenerationRequest(method=Method.SD15_TRANSPARENT, **{field: "a" * 4001}))
    assert str(error) == f"{field}: 4001 characters exceed 4000"


def test_a_required_input_that_is_missing_is_named() -> None:
    error = _refusal(GenerationRequest(method=Method.SD15_FG_TO_BG))
    assert (str(error), error.field) == ("inputs: sd15_fg2bg needs a foreground layer", "inputs")


@pytest.mark.parametrize(
    ("method", "inputs", "message"),
    [
        (
            Method.SD15_TRANSPARENT,
            {BG: _rgba()},
            "inputs: sd15_transparent takes no background layer",
        ),
        (
            Method.SD15_FG_TO_BG,
            {FG: _rgba(), BLEND: _rgba()},
            "inputs: sd15_fg2bg takes no blended layer",
        ),
        (Method.SD15_JOINT, {BG: _rgba()}, "inputs: sd15_joint takes no background layer"),
    ],
)
def test_an_input_for_a_role_the_method_does_not_take_is_refused(
    method: Method, inputs: dict[LayerRole, np.ndarray], message: str
) -> None:
    assert str(_refusal(GenerationRequest(method=method, inputs=inputs))) == message


@pytest.mark.parametrize(
    ("method", "inputs", "role", "message"),
    [
        (Method.SD15_TRANSPARENT, {}, FG, "sd15_transparent takes no foreground prompt"),
        (Method.SD15_FG_TO_BG, {FG: _rgba()}, FG, "sd15_fg2bg takes no foreground prompt"),
        (Method.SD15_BG_TO_FG, {BG: _rgba()}, BG, "sd15_bg2fg takes no background prompt"),
    ],
)
def test_a_layer_prompt_the_method_does_not_read_is_refused(
    method: Method, inputs: dict[LayerRole, np.ndarray], role: LayerRole, message: str
) -> None:
    error = _refusal(GenerationRequest(method=method, inputs=inputs, layer_prompts={role: "x"}))
    assert (str(error), error.field) == (f"layer_prompts: {message}", "layer_prompts")


@pytest.mark.parametrize(
    ("image", "message"),
    [
        (np.zeros((8, 8, 4), dtype=np.float32), "expected a uint8 image"),
        (np.zeros((8, 8, 4), dtype=np.uint16), "expected a uint8 image"),
        ([[[0, 0, 0, 0]]], "expected a uint8 image"),
        (
            np.zeros((8, 8, 3), dtype=np.uint8),
            "expected (height, width, 4) RGBA, got shape (8, 8, 3)",
        ),
        (np.zeros((8, 8), dtype=np.uint8), "expected (height, width, 4) RGBA, got shape (8, 8)"),
        (np.zeros((0, 8, 4), dtype=np.uint8), "size 8x0 outside 1..4096"),
        (np.zeros((1, 4097, 4), dtype=np.uint8), "size 4097x1 outside 1..4096"),
    ],
)
def test_a_bad_input_image_is_refused_with_its_role(image: Any, message: str) -> None:
    error = _refusal(GenerationRequest(method=Method.SD15_TRANSPARENT, inputs={FG: image}))
    assert (str(error), error.field) == (f"inputs.foreground: {message}", "inputs.foreground")


def test_image_count_is_batch_size_times_batch_count() -> None:
    assert (
        GenerationRequest(method=Method.SD15_TRANSPARENT, batch_size=3, batch_count=5).image_count
        == 15
    )


def test_the_request_has_the_wire_parameters_and_the_pixels() -> None:
    """The server builds a request from the wire's fields; names and defaults agree. Only
    the pixels and a second pass's starting layers (`refine`) are the backend's own."""
    wire = {f.name: f for f in fields(GenerationParameters)}
    ours = {f.name: f for f in fields(GenerationRequest)}
    assert set(ours) == set(wire) | {"inputs", "refine"}
    for name, field in wire.items():
        assert (ours[name].default, ours[name].default_factory) == (
            field.default,
            field.default_factory,
        ), name
