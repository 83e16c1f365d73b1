"""protocol.codec: round trips, the doc's example frames, every rejection, and fuzzing."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import re
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from protocol import (
    DEFAULT_LIMITS,
    MESSAGE_TYPES,
    Accepted,
    Cancel,
    Capabilities,
    Done,
    Error,
    ErrorCode,
    ErrorInfo,
    GenerationParameters,
    Hello,
    ImageRef,
    JobStatus,
    LayerImage,
    LayerRole,
    Limits,
    Method,
    ModelFamily,
    ModelInfo,
    PixelFormat,
    Progress,
    ProtocolError,
    ResizeMode,
    Result,
    Sampler,
    Submit,
    Welcome,
    decode_message,
    encode_message,
)
from protocol.errors import (
    BadMessage,
    InvalidField,
    LimitExceeded,
    MissingField,
    UnknownType,
    UnsupportedVersion,
)

DOC = Path(__file__).resolve().parents[2] / "docs" / "protocol.md"
FG, BG, BLEND = LayerRole.FOREGROUND, LayerRole.BACKGROUND, LayerRole.BLENDED

WELCOME = Welcome(
    protocol=(1, 0),
    server="krita-layerdiffuse/0.1.0",
    session="3f1c9a",
    model=ModelInfo("realisticVisionV51", ModelFamily.SD15, demo=False),
    capabilities=Capabilities(
        methods=(
            Method.SD15_TRANSPARENT,
            Method.SD15_JOINT,
            Method.SD15_FG_TO_BG,
            Method.SD15_BG_TO_FG,
        ),
        families=(ModelFamily.SD15,),
        samplers=tuple(Sampler)[:6],  # a 1.0 server's: the few-step ones came in 1.2
        resize_modes=tuple(ResizeMode),
        formats=tuple(PixelFormat),
    ),
    limits=DEFAULT_LIMITS,
)
FULL_REQUEST = GenerationParameters(
    method=Method.SD15_JOINT,
    prompt="a cat, ünïcode ✓",
    negative_prompt="blurry",
    layer_prompts={FG: "a cat", BG: "a garden", BLEND: ""},
    width=1024,
    height=768,
    fit_to_native=True,
    resize_mode=ResizeMode.RESIZE_AND_FILL,
    seed=2**32 - 1,
    steps=30,
    cfg_scale=5.5,
    sampler=Sampler.EULER_A,
    batch_size=3,
    batch_count=2,
    weight=0.8,
    ending_step=0.5,
    denoise_strength=0.25,
)
SAMPLES: list[Any] = [
    Hello((1, 0), "krita-layerdiffuse/0.1"),
    Hello((1, 0), "krita-layerdiffuse/0.1", session="3f1c9a"),
    WELCOME,
    dataclasses.replace(
        WELCOME, limits=Limits(max_steps=50), model=ModelInfo("demo", ModelFamily.SDXL, True)
    ),
    Submit("j1", GenerationParameters(Method.SD15_TRANSPARENT)),
    Submit(
        "j2",
        FULL_REQUEST,
        inputs=(
            LayerImage(FG, ImageRef.raw("j2/fg", 64, 32, PixelFormat.BGRA8)),
            LayerImage(BG, ImageRef("j2/bg", 64, 32, PixelFormat.PNG, 999)),
        ),
        result_format=PixelFormat.PNG,
        previews=False,
    ),
    Accepted("j1", 0),
    Accepted("j1", 7),
    Progress("j1", 0, 20),
    Progress("j1", 20, 20, ImageRef.raw("j1/preview/20", 96, 72, PixelFormat.RGBA8)),
    Result("j1", 0, 7, (LayerImage(FG, ImageRef.raw("j1/0/foreground", 8, 8, PixelFormat.BGRA8)),)),
    Result(
        "j1",
        5,
        -3,
        (
            LayerImage(BG, ImageRef.raw("j1/5/background", 8, 8, PixelFormat.RGBA8)),
            LayerImage(BLEND, ImageRef("j1/5/blended", 8, 8, PixelFormat.PNG, 100)),
        ),
    ),
    Done("j1", JobStatus.COMPLETED),
    Done("j1", JobStatus.CANCELLED),
    Done("j1", JobStatus.FAILED, ErrorInfo(ErrorCode.INVALID_REQUEST, "steps 0 outside 1..150")),
    Cancel("j1"),
    Error(ErrorCode.BAD_MESSAGE, "not valid JSON: expecting value"),
    Error(ErrorCode.QUEUE_FULL, "8 unfinished jobs", job="j9"),
]


@pytest.mark.parametrize("message", SAMPLES, ids=lambda m: type(m).__name__)
def test_every_message_round_trips(message: Any) -> None:
    """decode(encode(m)) == m, from text and from UTF-8 bytes."""
    text = encode_message(message)
    assert decode_message(text) == message
    assert decode_message(text.encode()) == message


def test_every_message_type_is_sampled() -> None:
    """The registry holds the nine types of the doc, and each is round-tripped above."""
    assert set(MESSAGE_TYPES) == {
        "hello",
        "welcome",
        "submit",
        "accepted",
        "progress",
        "result",
        "done",
        "cancel",
        "error",
    }
    assert {type(m) for m in SAMPLES} == set(MESSAGE_TYPES.values())
    assert all(cls.type == tag for tag, cls in MESSAGE_TYPES.items())


def test_encoding_is_compact_and_complete() -> None:
    """No spaces, every field written (defaults too), enums as values, text unescaped."""
    text = encode_message(Submit("j1", GenerationParameters(Method.SD15_FG_TO_BG, prompt="é")))
    assert text.startswith('{"type":"submit","job":"j1","request":{"method":"sd15_fg2bg"')
    assert '"prompt":"é"' in text and ": " not in text and ", " not in text
    data = json.loads(text)
    assert list(data["request"]) == [f.name for f in dataclasses.fields(GenerationParameters)]
    assert data["inputs"] == [] and data["result_format"] == "bgra8" and data["previews"] is True


def test_generation_parameters_mirror_the_backend_request() -> None:
    """Same fields, order and defaults as backend GenerationRequest, minus `inputs` and
    the backend-only `refine` (a second pass's starting layers)."""
    from backend.methods.request import GenerationRequest

    def shape(cls: type) -> list[tuple[str, Any]]:
        return [
            (
                f.name,
                f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default,
            )
            for f in dataclasses.fields(cls)
            if f.name not in ("inputs", "refine")
        ]

    assert shape(GenerationParameters) == shape(GenerationRequest)


# -- the doc's example --------------------------------------------------------------

DOC_FRAMES = [
    '{"type":"hello","protocol":[1,0],"client":"krita-layerdiffuse/0.1","session":null}',
    '{"type":"welcome","protocol":[1,0],"server":"krita-layerdiffuse/0.1.0",'
    '"session":"3f1c9a","model":{"name":"realisticVisionV51","family":"sd15","demo":false},'
    '"capabilities":{"methods":["sd15_transparent","sd15_joint","sd15_fg2bg","sd15_bg2fg"],'
    '"families":["sd15"],'
    '"samplers":["dpmpp_2m_karras","dpmpp_2m_sde_karras","euler_a","euler","unipc","ddim"],'
    '"resize_modes":["just_resize","crop_and_resize","resize_and_fill"],'
    '"formats":["bgra8","rgba8","png"]},'
    '"limits":{"max_text_bytes":1048576,"max_chunk_bytes":4194304,"max_image_side":8192,'
    '"max_image_pixels":40000000,"max_inputs":4,"max_images":16,'
    '"max_steps":150,"max_queued_jobs":8}}',
    '{"type":"submit","job":"j1",'
    '"request":{"method":"sd15_fg2bg","prompt":"a garden","width":1200,"height":900,'
    '"fit_to_native":true,"steps":20,"seed":7},'
    '"inputs":[{"role":"foreground","image":{"id":"j1/foreground","width":1200,'
    '"height":900,"format":"bgra8","size":4320000}}],'
    '"result_format":"bgra8","previews":true}',
    '{"image":"j1/foreground","offset":0}',
    '{"image":"j1/foreground","offset":4194304}',
    '{"type":"accepted","job":"j1","position":0}',
    '{"type":"progress","job":"j1","step":1,"total":20,'
    '"preview":{"id":"j1/preview/1","width":96,"height":72,"format":"rgba8","size":27648}}',
    '{"image":"j1/preview/1","offset":0}',
    '{"type":"result","job":"j1","index":0,"seed":7,'
    '"layers":[{"role":"background","image":{"id":"j1/0/background","width":1200,'
    '"height":900,"format":"bgra8","size":4320000}},'
    '{"role":"blended","image":{"id":"j1/0/blended","width":1200,'
    '"height":900,"format":"bgra8","size":4320000}}]}',
    '{"type":"done","job":"j1","status":"completed"}',
    '{"type":"done","job":"j9","status":"failed",'
    '"error":{"code":"internal_error","message":"internal error: the server log has the details"}}',
    '{"type":"error","code":"limit_exceeded","message":"request.steps: 500 exceeds the '
    'limit of 150","job":"j3"}',
]


def test_the_doc_shows_these_frames() -> None:
    """Each frame above is in docs/protocol.md (diagram bars and line breaks aside)."""
    flat = re.sub(r"\s|\|", "", DOC.read_text())
    for frame in DOC_FRAMES:
        assert re.sub(r"\s", "", frame) in flat, frame[:60]


def test_the_doc_example_decodes() -> None:
    """The whole-job example decodes to the messages it describes."""
    texts = [frame for frame in DOC_FRAMES if '"type"' in frame]
    decoded = [decode_message(text) for text in texts]
    foreground = ImageRef.raw("j1/foreground", 1200, 900, PixelFormat.BGRA8)
    assert decoded == [
        Hello((1, 0), "krita-layerdiffuse/0.1", None),
        WELCOME,
        Submit(
            "j1",
            GenerationParameters(
                Method.SD15_FG_TO_BG,
                prompt="a garden",
                width=1200,
                height=900,
                fit_to_native=True,
                steps=20,
                seed=7,
            ),
            (LayerImage(FG, foreground),),
        ),
        Accepted("j1", 0),
        Progress("j1", 1, 20, ImageRef.raw("j1/preview/1", 96, 72, PixelFormat.RGBA8)),
        Result(
            "j1",
            0,
            7,
            (
                LayerImage(BG, ImageRef.raw("j1/0/background", 1200, 900, PixelFormat.BGRA8)),
                LayerImage(BLEND, ImageRef.raw("j1/0/blended", 1200, 900, PixelFormat.BGRA8)),
            ),
        ),
        Done("j1", JobStatus.COMPLETED),
        Done(
            "j9",
            JobStatus.FAILED,
            ErrorInfo(ErrorCode.INTERNAL_ERROR, "internal error: the server log has the details"),
        ),
        Error(ErrorCode.LIMIT_EXCEEDED, "request.steps: 500 exceeds the limit of 150", "j3"),
    ]
    assert foreground.size == 4_320_000 == 4_194_304 + 125_696  # the two frames shown


# -- rejections ----------------------------------------------------------------------

SUBMIT = '{"type":"submit","job":"j1","request":{"method":"sd15_transparent"}}'


def submit_with(**request: Any) -> str:
    return json.dumps(
        {"type": "submit", "job": "j1", "request": {"method": "sd15_joint", **request}}
    )


def image(**fields: Any) -> dict[str, Any]:
    return {"id": "a", "width": 2, "height": 2, "format": "rgba8", "size": 16, **fields}


REJECTIONS: list[tuple[str, type[ProtocolError], str, str | None]] = [
    # not a message
    ("", BadMessage, "not valid JSON: expecting value: line 1 column 1 (char 0)", None),
    (
        "{",
        BadMessage,
        "not valid JSON: expecting property name enclosed in double quotes: "
        "line 1 column 2 (char 1)",
        None,
    ),
    (
        '{"type":"cancel","job":"j1"} x',
        BadMessage,
        "not valid JSON: extra data: line 1 column 30 (char 29)",
        None,
    ),
    ('{"type":"cancel","job":NaN}', BadMessage, "not valid JSON: NaN is not allowed", None),
    ("[" * 100_000, BadMessage, "not valid JSON: nested too deeply", None),
    ("[]", BadMessage, "expected a JSON object, got a list", None),
    ('"hello"', BadMessage, "expected a JSON object, got 'hello'", None),
    ("null", BadMessage, "expected a JSON object, got null", None),
    (
        "1" * 5000,
        BadMessage,
        "not valid JSON: an integer of 5000 digits",
        None,
    ),
    # the type
    ("{}", MissingField, "message: missing field 'type'", None),
    ('{"type":5}', InvalidField, "type: expected a string, got 5", None),
    ('{"type":"hack","job":"j1"}', UnknownType, "unknown message type 'hack'", "j1"),
    # fields
    ('{"type":"cancel"}', MissingField, "cancel: missing field 'job'", None),
    (
        '{"type":"submit","request":{"method":"sd15_joint"}}',
        MissingField,
        "submit: missing field 'job'",
        None,
    ),
    ('{"type":"submit","job":"j1"}', MissingField, "submit: missing field 'request'", "j1"),
    (
        '{"type":"submit","job":"j1","request":{}}',
        MissingField,
        "request: missing field 'method'",
        "j1",
    ),
    ('{"type":"cancel","job":"j1","hack":1}', InvalidField, "cancel: unknown field 'hack'", "j1"),
    (submit_with(stpes=20), InvalidField, "request: unknown field 'stpes'", "j1"),
    # types
    (submit_with(steps="x"), InvalidField, "request.steps: expected an integer, got 'x'", "j1"),
    (submit_with(steps=True), InvalidField, "request.steps: expected an integer, got true", "j1"),
    (submit_with(steps=20.0), InvalidField, "request.steps: expected an integer, got 20.0", "j1"),
    (
        submit_with(seed=2**64),
        InvalidField,
        "request.seed: expected an integer, got 18446744073709551616",
        "j1",
    ),
    (
        submit_with(cfg_scale="7"),
        InvalidField,
        "request.cfg_scale: expected a number, got '7'",
        "j1",
    ),
    (
        submit_with(cfg_scale=False),
        InvalidField,
        "request.cfg_scale: expected a number, got false",
        "j1",
    ),
    (
        '{"type":"submit","job":"j1","request":{"method":"sd15_joint","cfg_scale":1e999}}',
        InvalidField,
        "request.cfg_scale: expected a number, got inf",
        "j1",
    ),
    (
        submit_with(fit_to_native=1),
        InvalidField,
        "request.fit_to_native: expected true or false, got 1",
        "j1",
    ),
    (submit_with(prompt=None), InvalidField, "request.prompt: expected a string, got null", "j1"),
    (
        submit_with(prompt="p" * 4001),
        InvalidField,
        "request.prompt: 4001 characters exceed the limit of 4000",
        "j1",
    ),
    (
        submit_with(prompt="\ud800"),
        InvalidField,
        "request.prompt: not valid unicode (a lone surrogate)",
        "j1",
    ),
    (
        submit_with(layer_prompts=[]),
        InvalidField,
        "request.layer_prompts: expected an object, got a list",
        "j1",
    ),
    (
        submit_with(layer_prompts={"sky": "x"}),
        InvalidField,
        "request.layer_prompts: expected one of foreground, background, blended, mask, "
        "layer, got 'sky'",
        "j1",
    ),
    (
        submit_with(layer_prompts={"foreground": 3}),
        InvalidField,
        "request.layer_prompts.foreground: expected a string, got 3",
        "j1",
    ),
    (
        '{"type":"submit","job":"j1","request":5}',
        InvalidField,
        "request: expected an object, got 5",
        "j1",
    ),
    # enums
    (
        submit_with(method="sd3"),
        InvalidField,
        "request.method: expected one of sd15_transparent, sd15_joint, sd15_fg2bg, sd15_bg2fg, "
        "sdxl_transparent_attn, sdxl_transparent_conv, sdxl_fg2ble, sdxl_fgble2bg, "
        "sdxl_bg2ble, sdxl_bgble2fg, sdxl_fg2bg, sdxl_bg2fg, flux_transparent, split_layers, "
        "sd15_matted, sdxl_matted, got 'sd3'",
        "j1",
    ),
    (
        submit_with(sampler="DPM++ 2M Karras"),
        InvalidField,
        "request.sampler: expected one of dpmpp_2m_karras, dpmpp_2m_sde_karras, euler_a, "
        "euler, unipc, ddim, lcm, lcm_sgm_uniform, euler_sgm_uniform, got 'DPM++ 2M Karras'",
        "j1",
    ),
    (
        submit_with(resize_mode=0),
        InvalidField,
        "request.resize_mode: expected one of just_resize, crop_and_resize, resize_and_fill, got 0",
        "j1",
    ),
    (
        '{"type":"done","job":"j1","status":"ok"}',
        InvalidField,
        "status: expected one of completed, cancelled, failed, got 'ok'",
        "j1",
    ),
    (
        '{"type":"error","code":"oops","message":"m"}',
        InvalidField,
        "code: expected one of bad_message, unknown_type, missing_field, invalid_field, "
        "unsupported_version, not_ready, limit_exceeded, queue_full, unknown_job, "
        "duplicate_job, bad_image, invalid_request, model_unavailable, internal_error, "
        "got 'oops'",
        None,
    ),
    # job ids
    ('{"type":"cancel","job":""}', InvalidField, "job: expected a non-empty string", None),
    ('{"type":"cancel","job":5}', InvalidField, "job: expected a string, got 5", None),
    (
        json.dumps({"type": "cancel", "job": "j" * 129}),
        InvalidField,
        "job: 129 characters exceed the limit of 128",
        None,
    ),
    (
        '{"type":"error","code":"bad_message","message":"m","job":""}',
        InvalidField,
        "job: expected a non-empty string",
        None,
    ),
    # nested images and layers
    (
        json.dumps(
            {"type": "submit", "job": "j1", "request": {"method": "sd15_fg2bg"}, "inputs": {}}
        ),
        InvalidField,
        "inputs: expected a list, got an object",
        "j1",
    ),
    (
        json.dumps(
            {
                "type": "submit",
                "job": "j1",
                "request": {"method": "sd15_fg2bg"},
                "inputs": [{"role": "foreground"}],
            }
        ),
        MissingField,
        "inputs[0]: missing field 'image'",
        "j1",
    ),
    (
        json.dumps(
            {
                "type": "submit",
                "job": "j1",
                "request": {"method": "sd15_fg2bg"},
                "inputs": [{"role": "foreground", "image": image(width=0)}],
            }
        ),
        InvalidField,
        "inputs[0].image.width: expected an integer of at least 1, got 0",
        "j1",
    ),
    (
        json.dumps(
            {
                "type": "submit",
                "job": "j1",
                "request": {"method": "sd15_fg2bg"},
                "inputs": [{"role": "foreground", "image": image(format="jpeg")}],
            }
        ),
        InvalidField,
        "inputs[0].image.format: expected one of bgra8, rgba8, png, got 'jpeg'",
        "j1",
    ),
    (
        json.dumps(
            {
                "type": "submit",
                "job": "j1",
                "request": {"method": "sd15_fg2bg"},
                "inputs": [{"role": "foreground", "image": image(extra=1)}],
            }
        ),
        InvalidField,
        "inputs[0].image: unknown field 'extra'",
        "j1",
    ),
    (
        json.dumps(
            {
                "type": "submit",
                "job": "j1",
                "request": {"method": "sd15_fg2bg"},
                "inputs": [
                    {"role": "foreground", "image": image()},
                    {"role": "foreground", "image": image(id="b")},
                ],
            }
        ),
        InvalidField,
        "inputs[1].role: a second foreground layer",
        "j1",
    ),
    (
        json.dumps(
            {
                "type": "submit",
                "job": "j1",
                "request": {"method": "sd15_fg2bg"},
                "inputs": [
                    {"role": "foreground", "image": image()},
                    {"role": "background", "image": image()},
                ],
            }
        ),
        InvalidField,
        "inputs[1].image.id: 'a' is used twice",
        "j1",
    ),
    (
        '{"type":"result","job":"j1","index":0,"seed":1,"layers":[]}',
        InvalidField,
        "layers: expected at least 1 layer",
        "j1",
    ),
    (
        '{"type":"progress","job":"j1","step":3,"total":2}',
        InvalidField,
        "step: 3 exceeds total 2",
        "j1",
    ),
    (
        '{"type":"progress","job":"j1","step":-1,"total":2}',
        InvalidField,
        "step: expected an integer of at least 0, got -1",
        "j1",
    ),
    (
        '{"type":"accepted","job":"j1","position":-1}',
        InvalidField,
        "position: expected an integer of at least 0, got -1",
        "j1",
    ),
    # done and its error
    (
        '{"type":"done","job":"j1","status":"failed"}',
        MissingField,
        "done: missing field 'error' (the job failed)",
        "j1",
    ),
    (
        '{"type":"done","job":"j1","status":"completed","error":{"code":"internal_error","message":"x"}}',
        InvalidField,
        "error: a completed job carries no error",
        "j1",
    ),
    # versions and the welcome
    (
        '{"type":"hello","protocol":"1.0","client":"k"}',
        InvalidField,
        "protocol: expected [major, minor], got '1.0'",
        None,
    ),
    (
        '{"type":"hello","protocol":[1,true],"client":"k"}',
        InvalidField,
        "protocol: expected [major, minor], got a list",
        None,
    ),
    (
        '{"type":"hello","protocol":[1,0],"client":""}',
        InvalidField,
        "client: expected a non-empty string",
        None,
    ),
    (
        '{"type":"hello","protocol":[2,0],"whatever":1}',
        UnsupportedVersion,
        "protocol version 2.0 is not supported, this side speaks 1.3",
        None,
    ),
    ('{"type":"hello","client":"k"}', MissingField, "hello: missing field 'protocol'", None),
]


@pytest.mark.parametrize(
    ("text", "error", "message", "job"),
    REJECTIONS,
    ids=lambda v: str(v)[:40] if isinstance(v, str) else None,
)
def test_each_rejection_has_its_code_message_and_job(
    text: str, error: type[ProtocolError], message: str, job: str | None
) -> None:
    """The exact exception class (so wire code), message and job of every refusal."""
    with pytest.raises(ProtocolError) as caught:
        decode_message(text)
    assert type(caught.value) is error
    assert (str(caught.value), caught.value.job) == (message, job)


def test_welcome_limits_are_positive_integers() -> None:
    """A limit of 0 in a welcome is an invalid field, not a ValueError."""
    data = json.loads(encode_message(WELCOME))
    data["limits"]["max_steps"] = 0
    with pytest.raises(
        InvalidField, match=r"^limits.max_steps: expected an integer of at least 1, got 0$"
    ):
        decode_message(json.dumps(data))
    del data["limits"]["max_steps"]
    assert decode_message(json.dumps(data)) == WELCOME  # a missing limit takes its default


def test_over_long_text_is_refused_before_parsing() -> None:
    """Invalid JSON over the limit is limit_exceeded, so the length came first."""
    limits = Limits(max_text_bytes=100)
    with pytest.raises(
        LimitExceeded, match=r"^text frame of 101 characters exceeds the limit of 100 bytes$"
    ):
        decode_message("{" * 101, limits=limits)
    with pytest.raises(
        LimitExceeded, match=r"^text frame of 120 bytes exceeds the limit of 100 bytes$"
    ):
        decode_message("é" * 60, limits=limits)  # 60 characters, 120 bytes
    with pytest.raises(
        LimitExceeded, match=r"^text frame of 101 bytes exceeds the limit of 100 bytes$"
    ):
        decode_message(b"{" * 101, limits=limits)
    with pytest.raises(BadMessage, match=r"^not valid UTF-8: invalid start byte at byte 0$"):
        decode_message(b"\xff{}", limits=limits)
    assert decode_message('{"type":"cancel","job":"' + "j" * 70 + '"}', limits=limits)


def test_unknown_fields_pass_when_allowed() -> None:
    """allow_unknown_fields ignores unknown fields at every depth."""
    text = submit_with(future=1)[:-1] + ',"extra":{"a":1}}'
    assert decode_message(text, allow_unknown_fields=True) == Submit(
        "j1", GenerationParameters(Method.SD15_JOINT)
    )


def test_a_newer_minor_hello_may_carry_unknown_fields() -> None:
    """hello is read protocol first, so its own new fields pass."""
    hello = decode_message('{"type":"hello","protocol":[1,4],"client":"k","locale":"fr"}')
    assert hello == Hello((1, 4), "k")
    with pytest.raises(InvalidField, match=r"^hello: unknown field 'locale'$"):
        decode_message('{"type":"hello","protocol":[1,0],"client":"k","locale":"fr"}')


def test_a_newer_minor_welcome_drops_unknown_capabilities() -> None:
    """New samplers and fields of a 1.x server do not break a 1.0 client."""
    data = json.loads(encode_message(WELCOME))
    data["protocol"] = [1, 9]
    data["capabilities"]["samplers"].append("tcd")
    data["limits"]["max_video_frames"] = 10
    data["gpu"] = "H100"
    assert decode_message(json.dumps(data)) == dataclasses.replace(WELCOME, protocol=(1, 9))
    data["protocol"] = [1, 0]
    with pytest.raises(InvalidField, match=r"^welcome: unknown field 'gpu'$"):
        decode_message(json.dumps(data))


@pytest.mark.parametrize(
    ("message", "error", "text"),
    [
        (Cancel(""), InvalidField, "job: expected a non-empty string"),
        (
            Submit("j1", GenerationParameters(Method.SD15_JOINT, prompt="p" * 4001)),
            InvalidField,
            "request.prompt: 4001 characters exceed the limit of 4000",
        ),
        (
            Submit("j1", GenerationParameters(Method.SD15_JOINT, cfg_scale=float("nan"))),
            InvalidField,
            "request.cfg_scale: expected a number, got nan",
        ),
        (
            Submit("j1", GenerationParameters(Method.SD15_JOINT, steps="20")),
            InvalidField,
            "request.steps: expected an integer, got '20'",
        ),  # type: ignore[arg-type]
        (
            Done("j1", JobStatus.FAILED),
            MissingField,
            "done: missing field 'error' (the job failed)",
        ),
        (
            Hello((2, 0), "k"),
            UnsupportedVersion,
            "protocol version 2.0 is not supported, this side speaks 1.3",
        ),
    ],
)
def test_encoding_refuses_what_decoding_would(
    message: Any, error: type[Exception], text: str
) -> None:
    """A message one side can encode, the other can decode."""
    with pytest.raises(error) as caught:
        encode_message(message)
    assert str(caught.value) == text


def test_only_messages_encode() -> None:
    """Parts of messages are not messages."""
    with pytest.raises(TypeError, match=r"^not a message: ErrorInfo$"):
        encode_message(ErrorInfo(ErrorCode.BAD_MESSAGE, "x"))  # type: ignore[arg-type]


# -- fuzzing ----------------------------------------------------------------------------

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=20,
)


@FUZZ
@given(st.one_of(st.text(), st.binary()))
def test_arbitrary_text_raises_only_protocol_errors(text: str | bytes) -> None:
    """Any text or bytes either decodes or raises a ProtocolError."""
    with contextlib.suppress(ProtocolError):
        decode_message(text)


@FUZZ
@given(json_values, st.sampled_from(sorted(MESSAGE_TYPES)))
def test_arbitrary_json_raises_only_protocol_errors(value: Any, tag: str) -> None:
    """Any JSON value, bare or as the fields of a typed message, decodes or is refused."""
    for data in (value, {"type": tag, **value} if isinstance(value, dict) else {"type": tag}):
        with contextlib.suppress(ProtocolError):
            decode_message(json.dumps(data))


def mutate(data: Any, draw: st.DrawFn) -> Any:
    """Drop, add or retype one field somewhere in a JSON object tree."""
    objects: list[dict[str, Any]] = []

    def collect(node: Any) -> None:
        if isinstance(node, dict):
            objects.append(node)
            for child in node.values():
                collect(child)
        elif isinstance(node, list):
            for child in node:
                collect(child)

    collect(data)
    target = draw(st.sampled_from(objects))
    action = draw(st.sampled_from(["drop", "add", "retype"]))
    if action == "add" or not target:
        target[draw(st.text(max_size=8))] = draw(json_values)
    else:
        key = draw(st.sampled_from(sorted(target)))
        if action == "drop":
            del target[key]
        else:
            target[key] = draw(json_values)
    return data


@FUZZ
@given(st.sampled_from(SAMPLES), st.data(), st.booleans())
def test_mutated_messages_are_refused_or_valid(
    message: Any, data: st.DataObject, tolerant: bool
) -> None:
    """A mutated message raises a ProtocolError, or decodes to one that re-encodes to itself."""
    mutated = mutate(json.loads(encode_message(message)), data.draw)
    try:
        decoded = decode_message(json.dumps(mutated), allow_unknown_fields=tolerant)
    except ProtocolError:
        return
    assert decode_message(encode_message(decoded)) == decoded
