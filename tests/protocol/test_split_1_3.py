"""Protocol 1.3: `split_layers` (family `qwen_layered`, role `layer`, field `layers`), the
matted fallback methods and `model.warning`.

A result of a split holds several `layer` layers (the only role that may repeat), in stack
order; an input list still holds one layer per role. Old peers keep working: a 1.2
welcome has no warning, and a 1.2 client reading a 1.3 server ignores what it lacks.
"""

from __future__ import annotations

import json

import pytest

from protocol import (
    DEFAULT_LIMITS,
    METHOD_SPECS,
    PARAMETERS,
    Capabilities,
    GenerationParameters,
    ImageRef,
    InvalidField,
    InvalidParameter,
    LayerImage,
    LayerRole,
    Method,
    ModelFamily,
    ModelInfo,
    PixelFormat,
    ResizeMode,
    Result,
    Sampler,
    Submit,
    Welcome,
    check_input_roles,
    check_parameters,
    decode_message,
    encode_message,
)

LAYER = LayerRole.LAYER


def ref(name: str) -> ImageRef:
    return ImageRef(name, 4, 4, PixelFormat.BGRA8, 64)


def welcome(model: ModelInfo, methods: tuple[Method, ...]) -> Welcome:
    return Welcome(
        protocol=(1, 3),
        server="krita-layerdiffuse/0.1.0",
        session="s1",
        model=model,
        capabilities=Capabilities(
            methods=methods,
            families=(model.family,),
            samplers=tuple(Sampler),
            resize_modes=tuple(ResizeMode),
            formats=tuple(PixelFormat),
        ),
        limits=DEFAULT_LIMITS,
    )


def test_split_layers_takes_one_layer_and_returns_layers() -> None:
    spec = METHOD_SPECS[Method.SPLIT_LAYERS]
    assert spec.family is ModelFamily.QWEN_LAYERED
    assert spec.required_inputs == (LAYER,) and spec.outputs == (LAYER,)
    check_input_roles(Method.SPLIT_LAYERS, {LAYER, LayerRole.MASK})
    with pytest.raises(InvalidParameter, match=r"^inputs: split_layers needs a layer layer$"):
        check_input_roles(Method.SPLIT_LAYERS, set())
    with pytest.raises(InvalidParameter, match=r"takes no foreground layer$"):
        check_input_roles(Method.SPLIT_LAYERS, {LAYER, LayerRole.FOREGROUND})


def test_the_matted_methods_are_transparent_methods_of_their_family() -> None:
    pairs = ((Method.SD15_MATTED, ModelFamily.SD15), (Method.SDXL_MATTED, ModelFamily.SDXL))
    for method, family in pairs:
        spec = METHOD_SPECS[method]
        assert spec.family is family
        assert spec.outputs == (LayerRole.FOREGROUND,) and spec.required_inputs == ()
        assert "Matte" in spec.label


def test_layers_is_a_bounded_integer_with_the_card_s_default() -> None:
    assert PARAMETERS["layers"].default == 4 == GenerationParameters(Method.SPLIT_LAYERS).layers
    check_parameters(GenerationParameters(Method.SPLIT_LAYERS, layers=10))
    for bad in (0, 11):
        with pytest.raises(InvalidParameter, match=rf"^layers: {bad} outside 1\.\.10$"):
            check_parameters(GenerationParameters(Method.SPLIT_LAYERS, layers=bad))


def test_a_result_carries_a_stack_of_layers_in_order() -> None:
    result = Result("j1", 0, 7, tuple(LayerImage(LAYER, ref(f"j1/{i}")) for i in range(3)))
    decoded = decode_message(encode_message(result))
    assert decoded == result
    assert [layer.image.id for layer in decoded.layers] == ["j1/0", "j1/1", "j1/2"]


def test_a_result_still_holds_one_foreground_and_images_are_never_shared() -> None:
    twice = Result("j1", 0, 7, (LayerImage(LayerRole.FOREGROUND, ref("a")),))
    data = json.loads(encode_message(twice))
    data["layers"].append({**data["layers"][0], "image": {**data["layers"][0]["image"]}})
    data["layers"][1]["image"]["id"] = "b"
    with pytest.raises(InvalidField, match=r"a second foreground layer"):
        decode_message(json.dumps(data))
    stack = json.loads(encode_message(Result("j1", 0, 7, (LayerImage(LAYER, ref("a")),))))
    stack["layers"].append(stack["layers"][0])
    with pytest.raises(InvalidField, match=r"'a' is used twice"):
        decode_message(json.dumps(stack))


def test_a_submit_sends_one_picture_to_split() -> None:
    request = GenerationParameters(Method.SPLIT_LAYERS, layers=3)
    submit = Submit("j1", request, (LayerImage(LAYER, ref("j1/in")),))
    assert decode_message(encode_message(submit)) == submit
    data = json.loads(encode_message(submit))
    data["inputs"].append({"role": "layer", "image": {**data["inputs"][0]["image"], "id": "x"}})
    with pytest.raises(InvalidField, match=r"inputs\[1\]\.role: a second layer layer"):
        decode_message(json.dumps(data))


def test_the_model_warning_travels_and_a_1_2_welcome_has_none() -> None:
    warned = ModelInfo(
        "waiIllustrious_v140", ModelFamily.SDXL, demo=False, warning="Illustrious-XL family"
    )
    message = welcome(warned, (Method.SDXL_TRANSPARENT_ATTN, Method.SDXL_MATTED))
    assert decode_message(encode_message(message)).model.warning == "Illustrious-XL family"
    data = json.loads(encode_message(message))
    data["protocol"] = [1, 2]
    del data["model"]["warning"]
    assert decode_message(json.dumps(data)).model.warning is None


def test_a_qwen_layered_server_offers_split_layers() -> None:
    model = ModelInfo("Qwen-Image-Layered", ModelFamily.QWEN_LAYERED, demo=True)
    decoded = decode_message(encode_message(welcome(model, (Method.SPLIT_LAYERS,))))
    assert decoded.model.family is ModelFamily.QWEN_LAYERED
    assert decoded.capabilities.methods == (Method.SPLIT_LAYERS,)
