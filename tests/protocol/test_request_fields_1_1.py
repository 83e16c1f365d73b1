"""The request fields of protocol 1.1: `noise_source` and step 2 of the one-click workflows.

Old clients keep working: a 1.0 request without them decodes to their defaults, and a
1.0 server reading a 1.1 client ignores them (a newer minor's unknown fields).
"""

from __future__ import annotations

import dataclasses
import json

import pytest

from protocol import (
    PARAMETERS,
    SECOND_STEP_FIELDS,
    SECOND_STEP_METHODS,
    GenerationParameters,
    InvalidField,
    InvalidParameter,
    Method,
    NoiseSource,
    Sampler,
    Submit,
    check_parameters,
    decode_message,
    encode_message,
    parameter_table,
)

ONE_CLICK = Method.SDXL_FG_TO_BG


def test_a_request_that_leaves_them_out_gets_their_defaults() -> None:
    """What a 1.0 client sends."""
    text = '{"type":"submit","job":"j1","request":{"method":"sdxl_fg2bg"}}'
    submit = decode_message(text)
    assert isinstance(submit, Submit)
    request = submit.request
    assert request.noise_source is NoiseSource.CPU
    assert [getattr(request, name) for name in SECOND_STEP_FIELDS] == [None] * 4


def test_they_travel_and_null_is_a_value() -> None:
    request = GenerationParameters(
        method=ONE_CLICK,
        noise_source=NoiseSource.GPU,
        second_prompt="room, high quality",
        second_negative_prompt="",
        second_sampler=Sampler.EULER_A,
        second_ending_step=0.5,
    )
    text = encode_message(Submit("j1", request))
    wire = json.loads(text)["request"]
    assert (wire["noise_source"], wire["second_sampler"], wire["second_ending_step"]) == (
        "gpu",
        "euler_a",
        0.5,
    )
    assert decode_message(text) == Submit("j1", request)
    plain = json.loads(encode_message(Submit("j2", GenerationParameters(method=ONE_CLICK))))
    assert [plain["request"][name] for name in SECOND_STEP_FIELDS] == [None] * 4


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("second_sampler", "DPM++", "request.second_sampler: expected one of"),
        ("second_ending_step", "half", "request.second_ending_step: expected a number"),
        ("noise_source", "nv", "request.noise_source: expected one of cpu, gpu"),
    ],
)
def test_a_bad_value_is_an_invalid_field(field: str, value: object, message: str) -> None:
    text = json.dumps(
        {"type": "submit", "job": "j1", "request": {"method": "sdxl_fg2bg", field: value}}
    )
    with pytest.raises(InvalidField, match=message.replace("+", r"\+")):
        decode_message(text)


def test_step_2_is_only_for_the_one_click_workflows() -> None:
    assert set(SECOND_STEP_METHODS) == {Method.SDXL_FG_TO_BG, Method.SDXL_BG_TO_FG}
    for method in SECOND_STEP_METHODS:
        check_parameters(GenerationParameters(method=method, second_prompt="room"))
    with pytest.raises(InvalidParameter) as caught:
        check_parameters(GenerationParameters(method=Method.SDXL_FG_TO_BLEND, second_prompt=""))
    assert str(caught.value) == (
        "second_prompt: sdxl_fg2ble has no step 2 (only sdxl_fg2bg and sdxl_bg2fg have)"
    )


def test_step_2s_ranges_are_checked_but_null_passes() -> None:
    check_parameters(GenerationParameters(method=ONE_CLICK, second_ending_step=None))
    with pytest.raises(InvalidParameter, match=r"^second_ending_step: 1.5 outside 0.0..1.0$"):
        check_parameters(GenerationParameters(method=ONE_CLICK, second_ending_step=1.5))
    with pytest.raises(InvalidParameter, match=r"^second_prompt: 4001 characters exceed 4000$"):
        check_parameters(GenerationParameters(method=ONE_CLICK, second_prompt="a" * 4001))


def test_the_table_shows_null_defaults_and_nullable_types() -> None:
    rows = {line.split("|")[1].strip(" `"): line for line in parameter_table().splitlines()[2:]}
    assert "| string or null | `null` |" in rows["second_prompt"]
    assert "| number or null | `null` | 0.0..1.0 |" in rows["second_ending_step"]
    assert "| string | `cpu` | `cpu`, `gpu` |" in rows["noise_source"]
    assert "| string | – |" in rows["method"]  # still the one required field
    assert all(PARAMETERS[name].nullable for name in SECOND_STEP_FIELDS)
    assert not PARAMETERS["method"].nullable


def test_the_backend_request_has_the_same_fields() -> None:
    """`GenerationRequest` mirrors the wire (checked by field name, default, order)."""
    names = [field.name for field in dataclasses.fields(GenerationParameters)]
    assert names[-10:-3] == ["noise_source", *SECOND_STEP_FIELDS, "hires", "hires_strength"]
