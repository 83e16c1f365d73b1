"""Protocol 1.2's few-step mode: `lora`, `lora_weight`, two samplers, `capabilities.loras`.

Old peers keep working: a 1.1 request without the fields gets no LoRA, a 1.1 welcome
without `loras` offers none, and a client reading a newer server drops an offered LoRA it
cannot read (a sampler it lacks) instead of failing the welcome.
"""

from __future__ import annotations

import dataclasses
import json

import pytest

from protocol import (
    DEFAULT_LIMITS,
    PARAMETERS,
    Capabilities,
    GenerationParameters,
    InvalidField,
    InvalidParameter,
    LoRAInfo,
    Method,
    ModelFamily,
    ModelInfo,
    PixelFormat,
    ResizeMode,
    Sampler,
    Submit,
    Welcome,
    check_parameters,
    decode_message,
    encode_message,
)

HYPER = LoRAInfo(
    "hyper_sd15_8steps",
    ModelFamily.SD15,
    "Hyper-SD 8 steps",
    sampler=Sampler.EULER_SGM_UNIFORM,
    steps=8,
    cfg_scale=1.0,
    weight=1.0,
)
STYLE = LoRAInfo("watercolour", ModelFamily.SD15, "watercolour")


def welcome(minor: int, loras: tuple[LoRAInfo, ...]) -> Welcome:
    return Welcome(
        protocol=(1, minor),
        server="krita-layerdiffuse/0.1.0",
        session="s1",
        model=ModelInfo("demo", ModelFamily.SD15, demo=True),
        capabilities=Capabilities(
            methods=(Method.SD15_TRANSPARENT,),
            families=(ModelFamily.SD15,),
            samplers=tuple(Sampler),
            resize_modes=tuple(ResizeMode),
            formats=tuple(PixelFormat),
            loras=loras,
        ),
        limits=DEFAULT_LIMITS,
    )


def test_a_request_without_them_gets_no_lora() -> None:
    """What a 1.1 client sends."""
    submit = decode_message('{"type":"submit","job":"j1","request":{"method":"sd15_transparent"}}')
    assert isinstance(submit, Submit)
    assert (submit.request.lora, submit.request.lora_weight) == (None, 1.0)
    assert PARAMETERS["lora"].nullable and PARAMETERS["lora"].default is None


def test_a_lora_and_the_few_step_samplers_travel() -> None:
    request = GenerationParameters(
        method=Method.SD15_TRANSPARENT,
        lora="hyper_sd15_8steps",
        lora_weight=0.8,
        sampler=Sampler.LCM,
        steps=4,
        cfg_scale=1.0,
    )
    text = encode_message(Submit("j1", request))
    wire = json.loads(text)["request"]
    assert (wire["lora"], wire["lora_weight"], wire["sampler"]) == ("hyper_sd15_8steps", 0.8, "lcm")
    assert decode_message(text) == Submit("j1", request)
    assert Sampler.EULER_SGM_UNIFORM.label == "Euler SGM Uniform"
    assert Sampler.LCM.label == "LCM"


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("lora", "", "lora: expected a name, got an empty text"),
        ("lora", "x" * 257, "lora: 257 characters exceed 256"),
        ("lora_weight", 2.5, "lora_weight: 2.5 outside 0.0..2.0"),
    ],
)
def test_a_bad_lora_field_is_an_invalid_parameter(field: str, value: object, message: str) -> None:
    parameters = GenerationParameters(method=Method.SD15_TRANSPARENT, **{field: value})
    with pytest.raises(InvalidParameter) as caught:
        check_parameters(parameters)
    assert (str(caught.value), caught.value.field) == (message, field)


def test_the_wire_refuses_an_empty_lora_name() -> None:
    text = '{"type":"submit","job":"j1","request":{"method":"sd15_transparent","lora":""}}'
    with pytest.raises(InvalidField, match=r"^request\.lora: "):
        decode_message(text)


def test_offered_loras_travel_and_a_1_1_welcome_offers_none() -> None:
    message = welcome(2, (HYPER, STYLE))
    text = encode_message(message)
    assert json.loads(text)["capabilities"]["loras"][1] == {
        "name": "watercolour",
        "family": "sd15",
        "label": "watercolour",
        "sampler": None,
        "steps": None,
        "cfg_scale": None,
        "weight": 1.0,
    }
    assert decode_message(text) == message
    old = json.loads(encode_message(welcome(1, ())))
    del old["capabilities"]["loras"]
    assert decode_message(json.dumps(old)).capabilities.loras == ()


def test_a_newer_servers_lora_this_side_cannot_read_is_dropped() -> None:
    """A LoRA advising a sampler of a later minor does not break the welcome; from a
    peer of our own minor the same is an invalid field."""
    data = json.loads(encode_message(welcome(9, (HYPER, STYLE))))
    data["capabilities"]["loras"][0]["sampler"] = "tcd"
    decoded = decode_message(json.dumps(data))
    assert decoded.capabilities.loras == (STYLE,)
    data["protocol"] = [1, 2]
    with pytest.raises(InvalidField, match=r"loras\[0\]\.sampler: expected one of"):
        decode_message(json.dumps(data))


def test_the_backend_request_mirrors_the_new_fields() -> None:
    from backend.methods.request import GenerationRequest

    wire = [(f.name, f.default) for f in dataclasses.fields(GenerationParameters)][-3:-1]
    backend = {f.name: f.default for f in dataclasses.fields(GenerationRequest)}
    assert wire == [("lora", None), ("lora_weight", 1.0)]
    assert [(name, backend[name]) for name, _ in wire] == wire
