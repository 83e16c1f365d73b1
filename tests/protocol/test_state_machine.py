"""protocol.state_machine: both ends driven with plain strings and bytes, no sockets."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from protocol import (
    PROTOCOL_VERSION,
    Accepted,
    CancelRequested,
    Capabilities,
    ClientProtocol,
    Done,
    Error,
    ErrorCode,
    ErrorInfo,
    ErrorReceived,
    GenerationParameters,
    Hello,
    HelloReceived,
    ImageRef,
    JobAccepted,
    JobDone,
    JobStatus,
    JobSubmitted,
    LayerImage,
    LayerRole,
    Limits,
    Method,
    ModelFamily,
    ModelInfo,
    PixelFormat,
    Progress,
    ProgressReceived,
    ProtocolError,
    ResizeMode,
    Result,
    ResultReceived,
    Sampler,
    ServerProtocol,
    Submit,
    Welcome,
    WelcomeReceived,
    decode_message,
    encode_message,
    pack_chunk,
    unpack_chunk,
)
from protocol.errors import (
    BadImage,
    BadMessage,
    DuplicateJob,
    InvalidField,
    LimitExceeded,
    NotReady,
    UnknownType,
    UnsupportedVersion,
)

FG, BG, BLEND = LayerRole.FOREGROUND, LayerRole.BACKGROUND, LayerRole.BLENDED
LIMITS = Limits(max_chunk_bytes=1000, max_image_side=64, max_image_pixels=2048, max_inputs=2)


def pump(frames: list[str | bytes], receiver: Any) -> list[Any]:
    """Feed frames to one end, as its connection layer would; collect the events."""
    events: list[Any] = []
    for frame in frames:
        if isinstance(frame, str):
            events += receiver.receive_text(frame)
        else:
            events += receiver.receive_binary(frame)
    return events


def make_welcome(limits: Limits = LIMITS, session: str = "s1", minor: int = 0) -> Welcome:
    return Welcome(
        (1, minor),
        "krita-layerdiffuse/0.1.0",
        session,
        ModelInfo("demo", ModelFamily.SD15, demo=True),
        Capabilities(
            tuple(Method),
            (ModelFamily.SD15,),
            tuple(Sampler),
            tuple(ResizeMode),
            tuple(PixelFormat),
        ),
        limits,
    )


def connect(
    limits: Limits = LIMITS, session: str | None = None, **server: Any
) -> tuple[ClientProtocol, ServerProtocol]:
    """A client and a server past the handshake."""
    client, server_end = ClientProtocol("krita-layerdiffuse/0.1"), ServerProtocol(limits, **server)
    assert pump(client.send_hello(session), server_end) == [
        HelloReceived(Hello(PROTOCOL_VERSION, "krita-layerdiffuse/0.1", session))
    ]
    welcome = make_welcome(limits, session or "s1")
    assert pump(server_end.send_welcome(welcome), client) == [WelcomeReceived(welcome)]
    assert client.limits == limits
    return client, server_end


def raw_input(job: str, role: LayerRole, width: int, height: int) -> tuple[LayerImage, bytes]:
    ref = ImageRef.raw(f"{job}/{role.value}", width, height, PixelFormat.BGRA8)
    return LayerImage(role, ref), bytes(i % 251 for i in range(ref.size))


def fg2bg(job: str = "j1", width: int = 30, height: int = 20) -> tuple[Submit, dict[str, bytes]]:
    """A submit with one 2400-byte input: three frames at 1000 bytes each."""
    layer, data = raw_input(job, FG, width, height)
    request = GenerationParameters(Method.SD15_FG_TO_BG, prompt="a garden", width=30, height=20)
    return Submit(job, request, (layer,)), {layer.image.id: data}


def params(method: Method, **fields: Any) -> GenerationParameters:
    """Parameters within LIMITS: 32 × 32 results."""
    return GenerationParameters(method, **{"width": 32, "height": 32, **fields})


def txt2img(job: str = "j1", **request: Any) -> Submit:
    return Submit(job, params(Method.SD15_TRANSPARENT, **request))


# -- a whole job --------------------------------------------------------------------


def test_a_whole_job_with_previews_and_multi_chunk_images() -> None:
    """submit + 3 input frames → accepted → progress with previews → 2 results → done."""
    client, server = connect()
    submit, images = fg2bg()
    frames = client.send_submit(submit, images)
    assert [type(f) for f in frames] == [str, bytes, bytes, bytes]
    assert [server.receive_text(frames[0]), *map(server.receive_binary, frames[1:3])] == [[]] * 3
    [submitted] = server.receive_binary(frames[3])
    assert submitted == JobSubmitted(
        submit, {FG: (submit.inputs[0].image, images["j1/foreground"])}
    )
    assert server.unfinished_jobs == {"j1"} == client.unfinished_jobs

    assert pump(server.send_accepted("j1", 0), client) == [JobAccepted(Accepted("j1", 0))]
    assert pump(server.send_progress("j1", 0, 2), client) == [
        ProgressReceived(Progress("j1", 0, 2), None)
    ]
    preview = bytes(range(40)) * 40  # 20 × 20 × 4: two frames
    frames = server.send_progress("j1", 1, 2, (20, 20, preview))
    assert [type(f) for f in frames] == [str, bytes, bytes]
    assert [client.receive_text(frames[0]), client.receive_binary(frames[1])] == [[], []]
    ref = ImageRef.raw("j1/preview/1", 20, 20, PixelFormat.RGBA8)
    assert client.receive_binary(frames[2]) == [
        ProgressReceived(Progress("j1", 1, 2, ref), preview)
    ]

    for index in range(2):
        background, blended = bytes([index]) * 2400, bytes([index + 7]) * 2400
        frames = server.send_result(
            "j1",
            index,
            7 + index,
            [(BG, 30, 20, background), (BLEND, 30, 20, blended)],
            PixelFormat.BGRA8,
        )
        assert [type(f) for f in frames] == [str] + [bytes] * 6
        events = [pump([frame], client) for frame in frames]
        assert events[:-1] == [[]] * 6
        [received] = events[-1]
        assert isinstance(received, ResultReceived)
        assert received.result == Result(
            "j1",
            index,
            7 + index,
            (
                LayerImage(BG, ImageRef.raw(f"j1/{index}/background", 30, 20, PixelFormat.BGRA8)),
                LayerImage(BLEND, ImageRef.raw(f"j1/{index}/blended", 30, 20, PixelFormat.BGRA8)),
            ),
        )
        assert received.images == {BG: background, BLEND: blended}

    assert pump(server.send_done("j1", JobStatus.COMPLETED), client) == [
        JobDone(Done("j1", JobStatus.COMPLETED))
    ]
    assert server.unfinished_jobs == frozenset() == client.unfinished_jobs
    # the id is free again
    assert pump(client.send_submit(*fg2bg()), server)[0].submit.job == "j1"


def test_png_results_are_sent_as_given() -> None:
    """The protocol never converts pixels: PNG bytes travel with their own size."""
    client, server = connect()
    png = b"\x89PNG\r\n\x1a\n" + b"z" * 1500
    [received] = pump(server.send_result("j1", 0, 1, [(FG, 64, 32, png)], PixelFormat.PNG), client)
    assert received.result.layers[0].image == ImageRef(
        "j1/0/foreground", 64, 32, PixelFormat.PNG, 1508
    )
    assert received.images == {FG: png}


def test_send_refuses_bytes_that_do_not_match_or_exceed_the_limits() -> None:
    """A wrong-sized layer or an oversized preview raises before any frame exists."""
    _, server = connect()
    with pytest.raises(
        InvalidField, match=r"^image 'j1/0/background': 5 bytes given for a reference of 2400$"
    ):
        server.send_result("j1", 0, 1, [(BG, 30, 20, b"12345")], PixelFormat.RGBA8)
    with pytest.raises(
        LimitExceeded, match=r"^image 'j1/preview/3': width 65 exceeds the limit of 64$"
    ):
        server.send_progress("j1", 3, 5, (65, 1, bytes(260)))


# -- sessions, cancel, duplicates ------------------------------------------------------


def test_a_reconnect_resumes_its_session() -> None:
    """hello carries the session; results and cancels of an earlier connection's jobs pass."""
    client, server = connect(session="3f1c9a")
    assert client.welcome is not None and client.welcome.session == "3f1c9a"
    frames = server.send_result("old", 0, 5, [(FG, 1, 1, b"abcd")], PixelFormat.RGBA8)
    frames += server.send_done("old", JobStatus.COMPLETED)
    events = pump(frames, client)
    assert [type(e) for e in events] == [ResultReceived, JobDone]
    assert events[0].images == {FG: b"abcd"}
    assert pump(client.send_cancel("old"), server) == [CancelRequested("old", submitted=True)]


def test_cancel_of_a_job_whose_images_are_arriving_drops_it() -> None:
    """The protocol forgets it (submitted=False); its later frames are not announced."""
    client, server = connect()
    frames = client.send_submit(*fg2bg())
    assert pump(frames[:2], server) == []
    assert pump(client.send_cancel("j1"), server) == [CancelRequested("j1", submitted=False)]
    assert server.unfinished_jobs == frozenset()
    with pytest.raises(BadImage, match=r"^image 'j1/foreground' was not announced$") as caught:
        server.receive_binary(frames[2])
    assert caught.value.job is None
    assert pump(server.send_done("j1", JobStatus.CANCELLED), client) == [
        JobDone(Done("j1", JobStatus.CANCELLED))
    ]
    assert client.unfinished_jobs == frozenset()


def test_an_upload_that_stalls_can_be_abandoned() -> None:
    """The server drops a submit whose images stopped arriving; its later frames are refused."""
    client, server = connect()
    frames = client.send_submit(*fg2bg())
    pump(frames[:2], server)
    assert server.receiving_jobs == frozenset({"j1"})
    assert server.abandon("j1") is True
    assert server.abandon("j1") is False
    assert server.receiving_jobs == server.unfinished_jobs == frozenset()
    with pytest.raises(BadImage, match=r"^image 'j1/foreground' was not announced$"):
        server.receive_binary(frames[2])
    assert pump(server.send_error(ErrorCode.BAD_IMAGE, "upload timed out", "j1"), client) == [
        ErrorReceived(Error(ErrorCode.BAD_IMAGE, "upload timed out", "j1"))
    ]
    assert client.unfinished_jobs == frozenset()


def test_cancel_of_a_queued_job_is_for_the_application() -> None:
    """A job handed over is cancelled by the application's queue."""
    client, server = connect()
    [submitted] = pump(client.send_submit(txt2img(), {}), server)
    assert submitted == JobSubmitted(txt2img(), {})
    assert pump(client.send_cancel("j1"), server) == [CancelRequested("j1")]


def test_a_job_id_in_use_is_a_duplicate() -> None:
    """Either end refuses a second unfinished j1; the error does not end the first."""
    client, server = connect()
    text = client.send_submit(txt2img(), {})[0]
    pump([text], server)
    with pytest.raises(DuplicateJob) as caught:
        server.receive_text(text)
    assert (str(caught.value), caught.value.job) == ("job 'j1' is already in use", "j1")
    pump(server.send_error(caught.value.code, str(caught.value), caught.value.job), client)
    assert server.unfinished_jobs == {"j1"} == client.unfinished_jobs
    with pytest.raises(DuplicateJob, match=r"^job 'j1' is already in use$"):
        client.send_submit(txt2img(), {})
    pump(server.send_accepted("j1", 0) + server.send_done("j1", JobStatus.CANCELLED), client)
    assert pump(client.send_submit(txt2img(), {}), server) == [JobSubmitted(txt2img(), {})]


def test_an_error_ends_a_job_not_yet_accepted() -> None:
    """queue_full for j1 frees its id at both ends; an error after accepted does not."""
    client, server = connect()
    pump(client.send_submit(txt2img("j1"), {}) + client.send_submit(txt2img("j2"), {}), server)
    events = pump(server.send_error(ErrorCode.QUEUE_FULL, "8 unfinished jobs", job="j1"), client)
    assert events == [ErrorReceived(Error(ErrorCode.QUEUE_FULL, "8 unfinished jobs", "j1"))]
    assert server.unfinished_jobs == {"j2"} == client.unfinished_jobs
    pump(server.send_accepted("j2", 0), client)
    pump(server.send_error(ErrorCode.UNKNOWN_JOB, "no job 'j2'", job="j2"), client)
    assert server.unfinished_jobs == {"j2"} == client.unfinished_jobs
    failed = ErrorInfo(ErrorCode.INVALID_REQUEST, "steps 0 outside 1..150")
    assert pump(server.send_done("j2", JobStatus.FAILED, failed), client) == [
        JobDone(Done("j2", JobStatus.FAILED, failed))
    ]


# -- order and readiness --------------------------------------------------------------


def test_hello_comes_first() -> None:
    """Before hello everything is not_ready, text or binary, with the job when readable."""
    server = ServerProtocol(LIMITS)
    with pytest.raises(NotReady) as caught:
        server.receive_text(encode_message(txt2img()))
    assert (str(caught.value), caught.value.job) == ("expected hello first, got submit", "j1")
    with pytest.raises(NotReady, match=r"^expected hello first, got a binary frame$"):
        server.receive_binary(pack_chunk("a", 0, b"x"))
    assert server.receive_text(encode_message(Hello((1, 0), "k"))) == [
        HelloReceived(Hello((1, 0), "k"))
    ]
    with pytest.raises(BadMessage, match=r"^hello already received$"):
        server.receive_text(encode_message(Hello((1, 0), "k")))
    # Another major version ends a handshake, but after one it is only a second hello.
    with pytest.raises(BadMessage, match=r"^hello already received$"):
        server.receive_text('{"type":"hello","":"","protocol":[0,0]}')
    with pytest.raises(UnsupportedVersion):
        ServerProtocol(LIMITS).receive_text('{"type":"hello","":"","protocol":[0,0]}')


def test_the_client_waits_for_welcome() -> None:
    """No submit or cancel before welcome; only welcome or error may arrive first."""
    client = ClientProtocol("k")
    with pytest.raises(NotReady, match=r"^hello not sent yet$"):
        client.receive_text(encode_message(make_welcome()))
    client.send_hello()
    with pytest.raises(BadMessage, match=r"^hello already sent$"):
        client.send_hello()
    with pytest.raises(NotReady, match=r"^no welcome received yet$") as caught:
        client.send_submit(txt2img(), {})
    assert caught.value.job == "j1"
    with pytest.raises(NotReady, match=r"^no welcome received yet$"):
        client.send_cancel("j1")
    with pytest.raises(NotReady, match=r"^expected welcome first, got accepted$"):
        client.receive_text(encode_message(Accepted("j1", 0)))
    error = Error(ErrorCode.INTERNAL_ERROR, "internal error")
    assert client.receive_text(encode_message(error)) == [ErrorReceived(error)]
    assert client.receive_text(encode_message(make_welcome())) == [WelcomeReceived(make_welcome())]
    with pytest.raises(BadMessage, match=r"^welcome already received$"):
        client.receive_text(encode_message(make_welcome()))
    other_major = json.loads(encode_message(make_welcome()))
    other_major["protocol"] = [2, 0]
    with pytest.raises(BadMessage, match=r"^welcome already received$"):
        client.receive_text(json.dumps(other_major))


def test_each_end_refuses_the_other_ends_messages() -> None:
    """A server does not take welcome, a client does not take submit."""
    client, server = connect()
    with pytest.raises(UnknownType, match=r"^'welcome' is not a client message$"):
        server.receive_text(encode_message(make_welcome()))
    with pytest.raises(UnknownType, match=r"^'submit' is not a server message$") as caught:
        client.receive_text(encode_message(txt2img()))
    assert caught.value.job == "j1"


def test_events_keep_the_order_of_their_messages() -> None:
    """A message after one waiting for its images waits too."""
    client, server = connect()
    frames = server.send_progress("j1", 1, 2, (20, 20, bytes(1600)))
    error = server.send_error(ErrorCode.BAD_IMAGE, "image 'x' was not announced")
    assert pump(frames[:2] + error, client) == []
    assert [type(e) for e in pump(frames[2:], client)] == [ProgressReceived, ErrorReceived]


# -- versions ---------------------------------------------------------------------------


def test_another_major_version_is_refused_and_the_server_still_waits() -> None:
    """unsupported_version leaves the server before hello; the caller closes."""
    server = ServerProtocol(LIMITS)
    with pytest.raises(UnsupportedVersion, match=r"^protocol version 2\.0 is not supported"):
        server.receive_text('{"type":"hello","protocol":[2,0],"agent":"k2"}')
    assert server.peer_version is None
    assert server.receive_text(encode_message(Hello((1, 0), "k")))
    client = ClientProtocol("k")
    client.send_hello()
    data = json.loads(encode_message(make_welcome()))
    data["protocol"] = [0, 9]
    with pytest.raises(UnsupportedVersion, match=r"^protocol version 0\.9 is not supported"):
        client.receive_text(json.dumps(data))


def test_a_newer_minor_client_may_send_unknown_fields() -> None:
    """From hello 1.4 on, unknown fields in messages and frame headers are ignored."""
    server = ServerProtocol(LIMITS)
    [hello] = server.receive_text('{"type":"hello","protocol":[1,4],"client":"k","locale":"fr"}')
    assert hello.hello == Hello((1, 4), "k") and server.peer_version == (1, 4)
    submit, images = fg2bg()
    data = json.loads(encode_message(submit))
    data["priority"] = 1
    data["request"]["tiling"] = True
    assert server.receive_text(json.dumps(data)) == []
    payload = images["j1/foreground"]
    events = []
    for offset in range(0, len(payload), 1000):
        header = json.dumps({"image": "j1/foreground", "offset": offset, "crc": 0}).encode()
        frame = len(header).to_bytes(4, "big") + header + payload[offset : offset + 1000]
        events += server.receive_binary(frame)
    assert events == [JobSubmitted(submit, {FG: (submit.inputs[0].image, payload)})]


def test_a_same_minor_client_may_not() -> None:
    """From a 1.0 client an unknown field is invalid_field, with its job."""
    _, server = connect()
    data = json.loads(encode_message(txt2img()))
    data["priority"] = 1
    with pytest.raises(InvalidField) as caught:
        server.receive_text(json.dumps(data))
    assert (str(caught.value), caught.value.job) == ("submit: unknown field 'priority'", "j1")


def test_a_newer_minor_server_may_send_unknown_fields() -> None:
    """A client reads a newer-minor server's messages, ignoring what it does not know."""
    client = ClientProtocol("k")
    client.send_hello()
    data = json.loads(encode_message(make_welcome(minor=9)))
    data["gpu"] = "H100"
    assert client.receive_text(json.dumps(data)) == [WelcomeReceived(make_welcome(minor=9))]
    assert client.receive_text('{"type":"accepted","job":"j1","position":0,"eta":3}') == [
        JobAccepted(Accepted("j1", 0))
    ]


# -- limits and bad frames ------------------------------------------------------------


def submit_text(submit: Submit) -> str:
    """A submit as a client that skips its pre-checks would send it."""
    return encode_message(submit)


@pytest.mark.parametrize(
    ("submit", "message"),
    [
        (txt2img(steps=151), "request.steps: 151 exceeds the limit of 150"),
        (txt2img(batch_size=4, batch_count=5), "request: 4 x 5 = 20 images exceed the limit of 16"),
        (txt2img(width=65), "request.width: 65 exceeds the limit of 64"),
        (txt2img(width=64, height=64), "request: 64x64 is 4096 pixels, over the limit of 2048"),
        (
            Submit(
                "j1",
                params(Method.SDXL_FG_BLEND_TO_BG),
                tuple(raw_input("j1", role, 2, 2)[0] for role in (FG, BG, BLEND)),
            ),
            "inputs: 3 images exceed the limit of 2",
        ),
        (
            Submit("j1", params(Method.SD15_FG_TO_BG), (raw_input("j1", FG, 65, 1)[0],)),
            "image 'j1/foreground': width 65 exceeds the limit of 64",
        ),
    ],
)
def test_limits_are_enforced_by_the_server_and_prechecked_by_the_client(
    submit: Submit, message: str
) -> None:
    """Both ends raise limit_exceeded with the job; the client makes no frame."""
    client, server = connect()
    with pytest.raises(LimitExceeded) as caught:
        server.receive_text(submit_text(submit))
    assert (str(caught.value), caught.value.job) == (message, "j1")
    with pytest.raises(LimitExceeded) as caught:
        client.send_submit(submit, {})
    assert (str(caught.value), caught.value.job) == (message, "j1")
    assert server.unfinished_jobs == frozenset() == client.unfinished_jobs


def test_the_client_checks_the_bytes_it_is_given() -> None:
    """Missing, extra or wrong-sized image bytes are invalid fields; nothing is sent."""
    client, _ = connect()
    submit, images = fg2bg()
    cases = [
        ({}, "images: no bytes for input image 'j1/foreground'"),
        ({**images, "x": b""}, "images: 'x' is not an input of the submit"),
        ({"j1/foreground": b"abc"}, "image 'j1/foreground': 3 bytes given for a reference of 2400"),
    ]
    for given_images, message in cases:
        with pytest.raises(InvalidField) as caught:
            client.send_submit(submit, given_images)
        assert (str(caught.value), caught.value.job) == (message, "j1")
    small = ClientProtocol("k")
    small.send_hello()
    small.receive_text(encode_message(make_welcome(Limits(max_text_bytes=600))))
    with pytest.raises(LimitExceeded, match=r"^submit of 643 bytes exceeds the limit of 600$"):
        small.send_submit(txt2img(prompt="p" * 44), {})
    assert client.unfinished_jobs == frozenset() == small.unfinished_jobs


def test_pending_input_bytes_are_bounded_and_all_or_nothing() -> None:
    """A submit whose images overflow max_pending_bytes is refused and reserves nothing."""
    _, server = connect(max_pending_bytes=3000)
    layers = (raw_input("j1", FG, 30, 20)[0], raw_input("j1", BLEND, 30, 20)[0])
    with pytest.raises(LimitExceeded) as caught:
        server.receive_text(submit_text(Submit("j1", params(Method.SDXL_FG_BLEND_TO_BG), layers)))
    assert (str(caught.value), caught.value.job) == (
        "image 'j1/blended' of 2400 bytes exceeds the 600 bytes left for pending images",
        "j1",
    )
    assert server.unfinished_jobs == frozenset()
    assert server.receive_text(submit_text(fg2bg()[0])) == []  # the 2400 bytes are free again


def test_a_bad_input_frame_drops_its_submit() -> None:
    """The error names the job; its other images are discarded; the id is free."""
    client, server = connect()
    (fg, fg_data), (blend, _) = raw_input("j1", FG, 30, 20), raw_input("j1", BLEND, 2, 2)
    submit = Submit("j1", params(Method.SDXL_FG_BLEND_TO_BG), (fg, blend))
    frames = client.send_submit(submit, {fg.image.id: fg_data, blend.image.id: bytes(16)})
    pump(frames[:2], server)
    with pytest.raises(BadImage) as caught:
        server.receive_binary(pack_chunk("j1/blended", 5, b"x"))
    assert (str(caught.value), caught.value.job) == (
        "image 'j1/blended': frame at offset 5, expected 0",
        "j1",
    )
    assert server.unfinished_jobs == frozenset()
    with pytest.raises(BadImage, match=r"^image 'j1/foreground' was not announced$"):
        server.receive_binary(frames[2])
    assert pump(frames, server) == [
        JobSubmitted(submit, {FG: (fg.image, fg_data), BLEND: (blend.image, bytes(16))})
    ]


def test_an_input_id_already_in_flight_is_a_bad_image() -> None:
    """Two pending submits may not share an image id; the second is not registered."""
    _, server = connect()
    layer = raw_input("shared", FG, 2, 2)[0]
    server.receive_text(submit_text(Submit("j1", params(Method.SD15_FG_TO_BG), (layer,))))
    with pytest.raises(BadImage) as caught:
        server.receive_text(submit_text(Submit("j2", params(Method.SD15_FG_TO_BG), (layer,))))
    assert (str(caught.value), caught.value.job) == (
        "image 'shared/foreground' is already pending",
        "j2",
    )
    assert server.unfinished_jobs == {"j1"}


def test_a_bad_result_frame_drops_the_result_and_later_events_follow() -> None:
    """The client raises with the job; what the result held back comes with the next call."""
    client, server = connect()
    frames = server.send_result(
        "j1", 0, 1, [(FG, 30, 20, bytes(2400)), (BG, 2, 2, bytes(16))], PixelFormat.BGRA8
    )
    assert pump(frames[:2] + server.send_accepted("j2", 0), client) == []
    with pytest.raises(BadImage) as caught:
        client.receive_binary(pack_chunk("j1/0/background", 0, bytes(17)))
    assert (str(caught.value), caught.value.job) == (
        "image 'j1/0/background': frame ends at byte 17, beyond its size 16",
        "j1",
    )
    events = pump(server.send_progress("j2", 1, 5), client)
    assert events == [JobAccepted(Accepted("j2", 0)), ProgressReceived(Progress("j2", 1, 5), None)]
    with pytest.raises(BadImage, match=r"^image 'j1/0/foreground' was not announced$"):
        client.receive_binary(frames[2])


@pytest.mark.parametrize(
    "frame",
    [
        '{"type":"\\ud800"}',
        '{"type":"cancel","job":"\\ud800"}',
        '{"type":"cancel","job":"j1","\\udfff":1}',
        '{"type":"submit","job":"j1","request":{"method":"\\ud800"}}',
        "x" * 2_000_000,
        b"\xff" * 10,
        pack_chunk("\U0001f600" * 256, 0, b"x"),
        b"\x00\x00\x00\x1c" + b'{"image":"\\ud800","offset":0}',
    ],
)
def test_every_refusal_can_be_sent_back(frame: str | bytes) -> None:
    """Messages never echo what cannot travel: surrogates are escaped, texts are short."""
    _, server = connect()
    feed_safely(server, frame)


# -- fuzzing ----------------------------------------------------------------------------

FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
VALID_TEXTS = [
    encode_message(Hello((1, 0), "k")),
    encode_message(fg2bg("f1")[0]),
    encode_message(txt2img("f2")),
    encode_message(txt2img("f2", steps=500)),
    '{"type":"cancel","job":"f1"}',
]


@st.composite
def frames(draw: st.DrawFn) -> str | bytes:
    kind = draw(st.sampled_from(["text", "bytes", "near-text", "chunk"]))
    if kind == "text":
        return draw(st.text(max_size=200))
    if kind == "bytes":
        return draw(st.binary(max_size=200))
    if kind == "near-text":
        text = draw(st.sampled_from(VALID_TEXTS))
        start = draw(st.integers(0, len(text)))
        end = draw(st.integers(start, len(text)))
        return text[:start] + draw(st.text(max_size=10)) + text[end:]
    image_id = draw(st.sampled_from(["f1/foreground", "x"]) | st.text(min_size=1, max_size=10))
    return pack_chunk(image_id, draw(st.integers(0, 3000)), draw(st.binary(max_size=1200)))


def feed_safely(receiver: Any, frame: str | bytes) -> None:
    """Feed one frame; a server answers a refusal with an error frame, as its edge does."""
    try:
        if isinstance(frame, str):
            receiver.receive_text(frame)
        else:
            receiver.receive_binary(frame)
    except ProtocolError as exc:
        if isinstance(receiver, ServerProtocol):
            [text] = receiver.send_error(exc.code, str(exc), exc.job)
            assert decode_message(text) == Error(exc.code, str(exc), exc.job)


@FUZZ
@given(st.sampled_from(["fresh", "hello", "receiving"]), st.lists(frames(), max_size=8))
def test_the_server_survives_any_frames(state: str, garbage: list[str | bytes]) -> None:
    """Any frames at any state raise only ProtocolError, each can be sent back as an error
    frame, and a valid job still works afterwards."""
    server = ServerProtocol(LIMITS)
    if state != "fresh":
        server.receive_text(VALID_TEXTS[0])
    if state == "receiving":
        submit, images = fg2bg("f1")
        server.receive_text(encode_message(submit))
        server.receive_binary(pack_chunk("f1/foreground", 0, images["f1/foreground"][:1000]))
    for frame in garbage:
        feed_safely(server, frame)
    if server.peer_version is None:
        server.receive_text(VALID_TEXTS[0])
    submit, images = fg2bg("after-fuzz")
    frames_out = [encode_message(submit)] + [
        pack_chunk(
            "after-fuzz/foreground", offset, images["after-fuzz/foreground"][offset : offset + 1000]
        )
        for offset in (0, 1000, 2000)
    ]
    assert pump(frames_out, server) == [
        JobSubmitted(submit, {FG: (submit.inputs[0].image, images["after-fuzz/foreground"])})
    ]


@FUZZ
@given(st.lists(frames(), max_size=8))
def test_the_client_survives_any_frames(garbage: list[str | bytes]) -> None:
    """A client fed garbage raises only ProtocolError and still completes a result."""
    client, server = connect()
    for frame in garbage:
        feed_safely(client, frame)
    result = server.send_result("after-fuzz", 0, 1, [(FG, 1, 1, b"abcd")], PixelFormat.RGBA8)
    events = pump(result, client)
    assert events[-1] == ResultReceived(
        Result(
            "after-fuzz",
            0,
            1,
            (LayerImage(FG, ImageRef.raw("after-fuzz/0/foreground", 1, 1, PixelFormat.RGBA8)),),
        ),
        {FG: b"abcd"},
    )


def test_submit_frames_are_checked_at_once_and_made_as_they_are_taken() -> None:
    """The lazy form of send_submit: the same frames, in chunks no larger than asked
    (and never above the welcome's limit); a bad submit raises before any frame."""
    client, server = connect()
    submit, images = fg2bg()
    lazy = client.submit_frames(submit, images, max_chunk_bytes=700)
    assert client.unfinished_jobs == frozenset({"j1"})  # reserved when checked
    text = next(lazy)
    assert isinstance(text, str) and json.loads(text)["type"] == "submit"
    chunks = list(lazy)
    assert [len(unpack_chunk(chunk)[2]) for chunk in chunks] == [700, 700, 700, 300]
    [event] = pump([text, *chunks], server)
    assert isinstance(event, JobSubmitted)
    assert bytes(event.images[FG][1]) == images["j1/foreground"]
    # Above the limit (1000 bytes per frame here): the limit.
    other, other_images = fg2bg("j2")
    frames = client.send_submit(other, other_images, max_chunk_bytes=10**6)
    assert [len(unpack_chunk(chunk)[2]) for chunk in frames[1:]] == [1000, 1000, 400]
    with pytest.raises(InvalidField):
        client.submit_frames(*fg2bg("j3")[:1], {})
    assert "j3" not in client.unfinished_jobs
