"""protocol.parameters: one table of defaults and ranges, and the checks that read it."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any

import pytest

from protocol import (
    PARAMETERS,
    GenerationParameters,
    InvalidParameter,
    InvalidRequest,
    LayerRole,
    Method,
    check_input_roles,
    check_parameters,
    parameter_table,
)

FG, BG, BLEND = LayerRole.FOREGROUND, LayerRole.BACKGROUND, LayerRole.BLENDED


def test_the_table_has_every_field_of_the_request_in_order_with_its_default() -> None:
    """A field added to `GenerationParameters` without a range cannot slip through."""
    wire = dataclasses.fields(GenerationParameters)
    assert list(PARAMETERS) == [field.name for field in wire]
    defaults = dataclasses.asdict(GenerationParameters(method=Method.SD15_JOINT))
    for name, spec in PARAMETERS.items():
        expected = None if name == "method" else defaults[name]
        assert spec.default == expected, name
        assert spec.meaning, name


def test_every_number_has_a_range_and_every_choice_its_values() -> None:
    for spec in PARAMETERS.values():
        if spec.kind in ("integer", "number"):
            assert spec.low is not None and spec.high is not None and spec.low < spec.high
        elif spec.kind == "choice":
            assert spec.choices
        else:
            assert spec.kind in ("text", "name", "boolean", "layer prompts"), spec.name


def test_the_defaults_pass() -> None:
    check_parameters(GenerationParameters(method=Method.SD15_TRANSPARENT))


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("steps", 0, "steps: 0 outside 1..150"),
        ("cfg_scale", 30.5, "cfg_scale: 30.5 outside 1.0..30.0"),
        ("seed", 2**32, "seed: 4294967296 outside 0..4294967295"),
        ("ending_step", 2.0, "ending_step: 2.0 outside 0.0..1.0"),
        ("width", 7.5, "width: expected an integer, got 7.5"),
        ("prompt", "a" * 4001, "prompt: 4001 characters exceed 4000"),
    ],
)
def test_a_value_outside_its_range_is_an_invalid_parameter_naming_the_field(
    field: str, value: Any, message: str
) -> None:
    parameters = GenerationParameters(method=Method.SD15_TRANSPARENT, **{field: value})
    with pytest.raises(InvalidParameter) as caught:
        check_parameters(parameters)
    assert (str(caught.value), caught.value.field) == (message, field)
    assert isinstance(caught.value, InvalidRequest)  # on the wire: invalid_request


def test_a_label_names_the_field_as_the_caller_shows_it() -> None:
    """The command line names its flags; the reason is the same text."""
    parameters = GenerationParameters(method=Method.SD15_TRANSPARENT, ending_step=2.0)
    flags = {"ending_step": "--stop-at"}
    with pytest.raises(InvalidParameter) as caught:
        check_parameters(parameters, lambda name: flags.get(name, name))
    assert str(caught.value) == "--stop-at: 2.0 outside 0.0..1.0"
    assert (caught.value.field, caught.value.reason) == ("ending_step", "2.0 outside 0.0..1.0")


def test_the_results_in_all_are_bounded() -> None:
    check_parameters(GenerationParameters(Method.SD15_TRANSPARENT, batch_size=8, batch_count=8))
    with pytest.raises(InvalidParameter, match=r"^batch_size: 72 images in all exceed the limit"):
        check_parameters(GenerationParameters(Method.SD15_TRANSPARENT, batch_size=8, batch_count=9))


@pytest.mark.parametrize(
    ("method", "prompts", "message"),
    [
        (Method.SD15_TRANSPARENT, {FG: "x"}, "sd15_transparent takes no foreground prompt"),
        (Method.SD15_JOINT, {BG: "a" * 4001}, "the background prompt's 4001 characters exceed"),
    ],
)
def test_layer_prompts_are_those_the_method_reads(
    method: Method, prompts: dict[LayerRole, str], message: str
) -> None:
    with pytest.raises(InvalidParameter, match=rf"^layer_prompts: {message}"):
        check_parameters(GenerationParameters(method, layer_prompts=prompts))


def test_input_roles_are_those_the_method_needs_and_takes() -> None:
    check_input_roles(Method.SD15_FG_TO_BG, {FG})
    check_input_roles(Method.SD15_TRANSPARENT, set())
    with pytest.raises(InvalidParameter, match=r"^inputs: sd15_fg2bg needs a foreground layer$"):
        check_input_roles(Method.SD15_FG_TO_BG, set())
    with pytest.raises(InvalidParameter, match=r"^inputs: sdxl_fg2ble takes no blended layer$"):
        check_input_roles(Method.SDXL_FG_TO_BLEND, {FG, BLEND})


DOC = Path(__file__).resolve().parents[2] / "docs" / "protocol.md"


def test_the_doc_states_every_request_field_as_the_table_does() -> None:
    """docs/protocol.md's request table is `parameter_table()`, character for character."""
    match = re.search(
        r"<!-- request-fields:.*?-->\n(.*?)\n<!-- /request-fields -->", DOC.read_text(), re.DOTALL
    )
    assert match is not None, "the request-fields markers are missing from docs/protocol.md"
    assert match.group(1) == parameter_table(), (
        "docs/protocol.md's request table is out of date; replace it with the output of\n"
        "python -c 'from protocol import parameter_table; print(parameter_table())'"
    )


def test_the_table_shows_each_fields_default_and_range() -> None:
    rows = {line.split(" | ")[0].strip("|` "): line for line in parameter_table().splitlines()[2:]}
    assert list(rows) == list(PARAMETERS)
    assert rows["steps"] == "| `steps` | integer | `20` | 1..150 | sampler steps |"
    assert "| `0.7` | 0.0..1.0 |" in rows["denoise_strength"]
    assert "| `dpmpp_2m_karras` | `dpmpp_2m_karras`, `dpmpp_2m_sde_karras`," in rows["sampler"]
