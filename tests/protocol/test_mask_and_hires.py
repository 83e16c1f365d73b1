"""Protocol 1.1's selection mask (an input role) and second pass (`hires`, `hires_strength`).

Old clients keep working: a 1.0 request has no mask and gets the defaults of the two new
fields; a 1.0 server ignores the fields from a 1.1 client. A mask is an input of every
method and never an output or a layer prompt.
"""

from __future__ import annotations

import json

import pytest

from protocol import (
    METHOD_SPECS,
    PARAMETERS,
    GenerationParameters,
    Hires,
    ImageRef,
    InvalidField,
    InvalidParameter,
    LayerImage,
    LayerRole,
    Method,
    PixelFormat,
    Result,
    Submit,
    check_input_roles,
    check_mask_size,
    check_parameters,
    decode_message,
    encode_message,
)

MASK = LayerRole.MASK


def _ref(image_id: str, width: int = 64, height: int = 48) -> ImageRef:
    return ImageRef(image_id, width, height, PixelFormat.BGRA8, width * height * 4)


def test_every_method_takes_a_mask_and_none_makes_or_prompts_one() -> None:
    for method, spec in METHOD_SPECS.items():
        assert MASK in spec.optional_inputs, method
        assert MASK not in spec.outputs and MASK not in spec.required_inputs, method
        assert MASK not in spec.layer_prompts, method
        check_input_roles(method, [*spec.required_inputs, MASK])


def test_a_mask_travels_as_one_more_input() -> None:
    request = GenerationParameters(method=Method.SD15_BG_TO_FG, width=64, height=48)
    submit = Submit(
        "j1",
        request,
        inputs=(
            LayerImage(LayerRole.BACKGROUND, _ref("j1/background")),
            LayerImage(MASK, _ref("j1/mask")),
        ),
    )
    text = encode_message(submit)
    assert json.loads(text)["inputs"][1] == {
        "role": "mask",
        "image": {"id": "j1/mask", "width": 64, "height": 48, "format": "bgra8", "size": 12288},
    }
    assert decode_message(text) == submit


def test_a_mask_is_never_a_result_layer() -> None:
    result = Result("j1", 0, 7, (LayerImage(MASK, _ref("j1/0/mask")),))
    with pytest.raises(InvalidField, match=r"^layers\[0\].role: a mask is an input, never a"):
        encode_message(result)
    text = json.dumps(
        {
            "type": "result",
            "job": "j1",
            "index": 0,
            "seed": 7,
            "layers": [
                {"role": "blended", "image": _wire_ref("j1/0/b")},
                {"role": "mask", "image": _wire_ref("j1/0/m")},
            ],
        }
    )
    with pytest.raises(InvalidField, match=r"^layers\[1\].role: a mask") as caught:
        decode_message(text)
    assert caught.value.job == "j1"


def _wire_ref(image_id: str) -> dict[str, object]:
    return {"id": image_id, "width": 64, "height": 48, "format": "bgra8", "size": 12288}


def test_a_mask_has_no_layer_prompt() -> None:
    with pytest.raises(InvalidParameter, match=r"^layer_prompts: sd15_joint takes no mask prompt"):
        check_parameters(GenerationParameters(Method.SD15_JOINT, layer_prompts={MASK: "x"}))


def test_a_mask_is_at_the_requests_size() -> None:
    request = GenerationParameters(Method.SD15_TRANSPARENT, width=640, height=480)
    check_mask_size(request, 640, 480)
    with pytest.raises(InvalidParameter) as caught:
        check_mask_size(request, 320, 240, lambda path: f"<{path}>")
    assert str(caught.value) == (
        "<inputs.mask>: the mask is 320x240, the request 640x480 "
        "(a mask is sent at the request's size)"
    )


def test_a_request_without_the_second_pass_fields_gets_auto_and_half() -> None:
    """What a 1.0 client sends."""
    submit = decode_message('{"type":"submit","job":"j1","request":{"method":"sd15_transparent"}}')
    assert isinstance(submit, Submit)
    assert (submit.request.hires, submit.request.hires_strength) == (Hires.AUTO, 0.5)
    assert (PARAMETERS["hires"].default, PARAMETERS["hires_strength"].default) == (Hires.AUTO, 0.5)


def test_the_second_pass_fields_travel() -> None:
    request = GenerationParameters(Method.SDXL_BG_TO_FG, hires=Hires.OFF, hires_strength=0.35)
    text = encode_message(Submit("j1", request))
    wire = json.loads(text)["request"]
    assert (wire["hires"], wire["hires_strength"]) == ("off", 0.35)
    assert decode_message(text) == Submit("j1", request)


def test_a_1_0_server_ignores_them_from_a_1_1_client() -> None:
    """A newer minor's unknown fields are ignored: what a 1.0 server does with ours."""
    text = '{"type":"submit","job":"j1","request":{"method":"sd15_transparent","hiresx":"on"}}'
    submit = decode_message(text, allow_unknown_fields=True)
    assert isinstance(submit, Submit) and submit.request.hires is Hires.AUTO


@pytest.mark.parametrize(
    ("field", "value", "error", "message"),
    [
        ("hires", "always", InvalidField, "request.hires: expected one of auto, on, off"),
        ("hires_strength", "half", InvalidField, "request.hires_strength: expected a number"),
    ],
)
def test_a_bad_value_is_an_invalid_field(
    field: str, value: object, error: type[Exception], message: str
) -> None:
    text = json.dumps(
        {"type": "submit", "job": "j1", "request": {"method": "sd15_transparent", field: value}}
    )
    with pytest.raises(error, match=f"^{message}"):
        decode_message(text)


def test_the_strength_is_a_fraction() -> None:
    check_parameters(GenerationParameters(Method.SD15_TRANSPARENT, hires_strength=1.0))
    with pytest.raises(InvalidParameter, match=r"^hires_strength: 1.5 outside 0.0..1.0$"):
        check_parameters(GenerationParameters(Method.SD15_TRANSPARENT, hires_strength=1.5))
