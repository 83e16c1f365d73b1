"""The server over real sockets on 127.0.0.1: jobs, clients, reconnects, bad input, admission."""

from __future__ import annotations

import asyncio
import json

import numpy as np
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from backend.store.model_sets import open_model_set
from protocol import (
    METHOD_SPECS,
    ErrorCode,
    ErrorReceived,
    JobAccepted,
    JobDone,
    JobStatus,
    LayerRole,
    Method,
    ModelFamily,
    PixelFormat,
    ProgressReceived,
    ResultReceived,
    Sampler,
)

from .conftest import ProtocolClient, RunningServer, run_with_server

FG, BG = LayerRole.FOREGROUND, LayerRole.BACKGROUND


def layer(height: int = 80, width: int = 64, opaque: bool = False) -> np.ndarray:
    image = np.zeros((height, width, 4), dtype=np.uint8)
    image[..., :3] = (200, 60, 30)
    image[16:64, 16:48, 3] = 255
    if opaque:
        image[..., 3] = 255
    return image


INPUTS = {
    Method.SD15_TRANSPARENT: {},
    Method.SD15_JOINT: {},
    Method.SD15_FG_TO_BG: {FG: layer()},
    Method.SD15_BG_TO_FG: {BG: layer(opaque=True)},
}


@pytest.mark.parametrize("method", list(INPUTS))
def test_a_full_job_per_method(method: Method, with_server) -> None:
    async def scenario(server: RunningServer) -> None:
        async with server.client() as client:
            welcome = (await client.hello()).welcome
            assert method in welcome.capabilities.methods
            assert welcome.model.demo is True
            await client.submit("j1", method, INPUTS[method], width=64, height=80)
            events = await client.until_done("j1")
        kinds = [type(event) for event in events]
        assert kinds[0] is JobAccepted and kinds[-1] is JobDone
        assert events[-1].done.status is JobStatus.COMPLETED
        progress = [e for e in events if isinstance(e, ProgressReceived)]
        assert [p.progress.step for p in progress] == [1, 2]
        assert all(p.preview is not None and len(p.preview) > 0 for p in progress)
        (result,) = [e for e in events if isinstance(e, ResultReceived)]
        assert result.result.seed == 12345
        assert set(result.images) == set(METHOD_SPECS[method].outputs)
        for role, data in result.images.items():
            assert len(data) == 64 * 80 * 4, role
            bgra = np.frombuffer(data, dtype=np.uint8).reshape(80, 64, 4)
            if role is not FG:
                assert (bgra[..., 3] == 255).all()

    with_server(scenario)


def test_binary_frames_sent_whole_or_in_fragments_are_the_same_job(with_server) -> None:
    """A binary frame is one websocket message, which a client may send fragmented."""

    async def scenario(server: RunningServer) -> None:
        results = []
        for fragment in (False, True):
            async with server.client() as client:
                client.fragment_binary_frames = fragment
                await client.hello()
                await client.submit("j", Method.SD15_FG_TO_BG, INPUTS[Method.SD15_FG_TO_BG])
                events = await client.until_done("j")
            (result,) = [e for e in events if isinstance(e, ResultReceived)]
            results.append({role: bytes(data) for role, data in result.images.items()})
        assert results[0] == results[1] and set(results[0]) == {BG, LayerRole.BLENDED}

    with_server(scenario)


def test_png_in_and_out(with_server) -> None:
    async def scenario(server: RunningServer) -> None:
        async with server.client() as client:
            await client.hello()
            await client.submit("p", Method.SD15_FG_TO_BG, {FG: layer()}, PixelFormat.PNG)
            events = await client.until_done("p")
        (result,) = [e for e in events if isinstance(e, ResultReceived)]
        for role, data in result.images.items():
            assert bytes(data[:8]) == b"\x89PNG\r\n\x1a\n", role

    with_server(scenario)


def test_three_clients_one_cancels_one_disconnects_the_others_get_everything(with_server) -> None:
    async def scenario(server: RunningServer) -> None:
        async with server.client() as a, server.client() as b:
            await a.hello()
            await b.hello()
            async with server.client() as c:
                session_c = (await c.hello()).welcome.session
                await c.submit("c1", steps=3)
                assert isinstance(await c.next_event(), JobAccepted)
            # c is gone; its job runs on.
            await a.submit("a1", steps=3)
            await b.submit("b1", steps=30)
            # b cancels once its job runs.
            while True:
                event = await b.next_event()
                if isinstance(event, ProgressReceived):
                    break
            await b.send(b.protocol.send_cancel("b1"))
            b_events = await b.until_done("b1")
            assert b_events[-1].done.status is JobStatus.CANCELLED
            assert not any(isinstance(e, ResultReceived) for e in b_events)
            a_events = await a.until_done("a1")
            assert a_events[-1].done.status is JobStatus.COMPLETED
            assert sum(isinstance(e, ResultReceived) for e in a_events) == 1
            # c comes back with its session and collects what finished while it was away.
            async with server.client() as c_again:
                await c_again.hello(session_c)
                collected = await c_again.until_done("c1")
            assert [type(e) for e in collected] == [ResultReceived, JobDone]
            assert collected[-1].done.status is JobStatus.COMPLETED

    with_server(scenario)


def test_cancel_of_a_queued_job_ends_it_at_once(with_server) -> None:
    async def scenario(server: RunningServer) -> None:
        async with server.client() as client:
            await client.hello()
            await client.submit("first", steps=20)
            await client.submit("second", steps=2)
            accepted = [await client.next_event(), await client.next_event()]
            positions = {e.accepted.job: e.accepted.position for e in accepted}
            assert positions == {"first": 0, "second": 1}
            await client.send(client.protocol.send_cancel("second"))
            second = await client.until_done("second")
            assert second[-1].done.status is JobStatus.CANCELLED
            await client.send(client.protocol.send_cancel("first"))
            first = await client.until_done("first")
            assert first[-1].done.status is JobStatus.CANCELLED

    with_server(scenario)


def test_a_new_session_for_an_unknown_id(with_server) -> None:
    async def scenario(server: RunningServer) -> None:
        async with server.client() as client:
            welcome = (await client.hello("no-such-session")).welcome
            assert welcome.session != "no-such-session" and len(welcome.session) >= 16

    with_server(scenario)


async def _send_raw_and_read_error(client: ProtocolClient, frame: str | bytes) -> ErrorReceived:
    await client.websocket.send(frame)
    event = await client.next_event()
    assert isinstance(event, ErrorReceived), event
    return event


def test_bad_input_gets_an_error_and_the_connection_carries_on(with_server) -> None:
    async def scenario(server: RunningServer) -> None:
        async with server.client() as client:
            # Before hello, raw frames: the client protocol would refuse to make them.
            await client.websocket.send(
                '{"type":"submit","job":"x","request":{"method":"sd15_joint"}}'
            )
            reply = json.loads(await client.websocket.recv())
            assert reply["type"] == "error" and reply["code"] == "not_ready"
            await client.hello()
            cases = [
                ("not json", ErrorCode.BAD_MESSAGE),
                ("[1, 2]", ErrorCode.BAD_MESSAGE),
                ('{"type":"hack"}', ErrorCode.UNKNOWN_TYPE),
                ('{"type":"cancel"}', ErrorCode.MISSING_FIELD),
                ('{"type":"cancel","job":"j","extra":1}', ErrorCode.INVALID_FIELD),
                ('{"type":"cancel","job":"never-submitted"}', ErrorCode.UNKNOWN_JOB),
                ('{"type":"hello","client":"x","protocol":[1,0]}', ErrorCode.BAD_MESSAGE),
                # another major version only ends a handshake; this is a second hello
                ('{"type":"hello","client":"x","protocol":[0,1]}', ErrorCode.BAD_MESSAGE),
                (b"\x00\x00\x00\x02{}", ErrorCode.BAD_IMAGE),
                (b"\xff", ErrorCode.BAD_IMAGE),
            ]
            for frame, code in cases:
                error = await _send_raw_and_read_error(client, frame)
                assert error.error.code is code, (frame, error)
            # A request the method refuses names its job.
            await client.submit("bad", Method.SD15_FG_TO_BG)
            error = await client.next_event()
            assert isinstance(error, ErrorReceived)
            assert (error.error.code, error.error.job) == (ErrorCode.INVALID_REQUEST, "bad")
            assert error.error.message == "inputs: sd15_fg2bg needs a foreground layer"
            # The connection still works.
            await client.submit("ok")
            assert (await client.until_done("ok"))[-1].done.status is JobStatus.COMPLETED

    with_server(scenario)


def test_limits_are_enforced(with_server) -> None:
    from protocol import Limits

    async def scenario(server: RunningServer) -> None:
        async with server.client() as client:
            await client.hello()
            # Past the advertised limits: sent raw, as a hostile client would.
            text = json.dumps(
                {
                    "type": "submit",
                    "job": "big",
                    "request": {"method": "sd15_transparent", "steps": 9},
                    "inputs": [],
                }
            )
            error = await _send_raw_and_read_error(client, text)
            assert error.error.code is ErrorCode.LIMIT_EXCEEDED
            assert error.error.job == "big"
            for index in range(2):
                await client.submit(f"q{index}", steps=8)
            await client.websocket.send(
                json.dumps(
                    {
                        "type": "submit",
                        "job": "q2",
                        "request": {"method": "sd15_transparent", "steps": 2},
                    }
                )
            )
            while True:
                event = await client.next_event()
                if isinstance(event, ErrorReceived):
                    break
            assert (event.error.code, event.error.job) == (ErrorCode.QUEUE_FULL, "q2")
            for index in range(2):
                await client.send(client.protocol.send_cancel(f"q{index}"))

    with_server(scenario, limits=Limits(max_steps=8, max_queued_jobs=2))


def test_unsupported_major_version_is_refused_and_closed(with_server) -> None:
    async def scenario(server: RunningServer) -> None:
        async with connect(server.url, compression=None) as websocket:
            await websocket.send(
                '{"type":"hello","protocol":[2,0],"client":"future","session":null}'
            )
            reply = json.loads(await websocket.recv())
            assert reply["code"] == "unsupported_version"
            with pytest.raises(ConnectionClosed):
                await asyncio.wait_for(websocket.recv(), 10)

    with_server(scenario)


def test_token_is_required_and_checked(with_server) -> None:
    async def scenario(server: RunningServer) -> None:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "secret"}):
            with pytest.raises(InvalidStatus) as refused:
                async with connect(server.url, additional_headers=headers):
                    pass
            assert refused.value.response.status_code == 401
        async with server.client(additional_headers={"Authorization": "Bearer secret"}) as client:
            await client.hello()

    with_server(scenario, token="secret")


def test_browser_origins_are_refused_unless_allowed(with_server) -> None:
    async def scenario(server: RunningServer) -> None:
        with pytest.raises(InvalidStatus) as refused:
            async with connect(server.url, origin="https://evil.example"):
                pass
        assert refused.value.response.status_code == 403
        async with server.client(origin="https://allowed.example") as client:
            await client.hello()

    with_server(scenario, allowed_origins=("https://allowed.example",))


def test_non_loopback_bind_needs_a_token() -> None:
    from backend.config import ServerConfig

    with pytest.raises(ValueError, match="give a --token"):
        ServerConfig(host="0.0.0.0", demo=True).check()
    ServerConfig(host="0.0.0.0", token="t", demo=True).check()
    ServerConfig(host="::1", demo=True).check()


def test_oversized_frames_are_refused_without_closing(with_server) -> None:
    from protocol import Limits

    async def scenario(server: RunningServer) -> None:
        async with server.client() as client:
            await client.hello()
            error = await _send_raw_and_read_error(client, "x" * 2048)
            assert error.error.code is ErrorCode.LIMIT_EXCEEDED
            from protocol import pack_chunk

            error = await _send_raw_and_read_error(client, pack_chunk("img", 0, b"\0" * 1500))
            assert error.error.code is ErrorCode.BAD_IMAGE
            await client.submit("ok")
            assert (await client.until_done("ok"))[-1].done.status is JobStatus.COMPLETED

    with_server(scenario, limits=Limits(max_text_bytes=1024, max_chunk_bytes=1024))


def test_a_half_open_connection_is_closed_by_keepalive(with_server) -> None:
    async def scenario(server: RunningServer) -> None:
        # A raw handshake, then silence: this peer never answers pings.
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(
            b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        await writer.drain()
        assert b"101 Switching Protocols" in await reader.readuntil(b"\r\n\r\n")
        # The server pings, gets no pong, and drops the connection: EOF arrives.
        data = await asyncio.wait_for(reader.read(), 15)
        assert data is not None
        writer.close()
        # It still serves others.
        async with server.client() as client:
            await client.hello()

    with_server(scenario, ping_interval_seconds=0.5)


def test_an_upload_that_never_completes_is_dropped_after_the_timeout(with_server) -> None:
    async def scenario(server: RunningServer) -> None:
        async with server.client() as client:
            await client.hello()
            announced = {
                "type": "submit",
                "job": "slow",
                "request": {"method": "sd15_fg2bg"},
                "inputs": [
                    {
                        "role": "foreground",
                        "image": {
                            "id": "slow/fg",
                            "width": 64,
                            "height": 64,
                            "format": "bgra8",
                            "size": 16384,
                        },
                    }
                ],
            }
            await client.websocket.send(json.dumps(announced))
            from protocol import pack_chunk

            await client.websocket.send(pack_chunk("slow/fg", 0, b"\0" * 100))
            error = await client.next_event(timeout=10)
            assert isinstance(error, ErrorReceived)
            assert (error.error.code, error.error.job) == (ErrorCode.BAD_IMAGE, "slow")
            assert "did not arrive within 0.5 s" in error.error.message
            # The rest of the image is now refused, and the connection works.
            error = await _send_raw_and_read_error(client, pack_chunk("slow/fg", 100, b"\0" * 100))
            assert error.error.code is ErrorCode.BAD_IMAGE
            await client.submit("ok")
            assert (await client.until_done("ok"))[-1].done.status is JobStatus.COMPLETED

    with_server(scenario, upload_timeout_seconds=0.5)


def test_sessions_of_clients_that_stay_away_expire(with_server) -> None:
    async def scenario(server: RunningServer) -> None:
        async with server.client() as client:
            session = (await client.hello()).welcome.session
        assert session in server.server.queue.sessions
        await asyncio.sleep(1.5)  # retention 0.2 s; housekeeping runs every second
        assert session not in server.server.queue.sessions
        async with server.client() as client:
            assert (await client.hello(session)).welcome.session != session

    with_server(scenario, retention_seconds=0.2)


SDXL_JOBS = {
    Method.SDXL_TRANSPARENT_ATTN: {},
    Method.SDXL_FG_TO_BG: {FG: layer()},
    Method.SDXL_BG_TO_FG: {BG: layer(opaque=True)},
    Method.SDXL_BG_BLEND_TO_FG: {BG: layer(opaque=True), LayerRole.BLENDED: layer(opaque=True)},
}


def test_an_sdxl_server_offers_every_sdxl_method_and_runs_them(with_sdxl_server) -> None:
    async def scenario(server: RunningServer) -> None:
        async with server.client() as client:
            welcome = (await client.hello()).welcome
            assert welcome.model.family.value == "sdxl"
            assert welcome.capabilities.families == (welcome.model.family,)
            sdxl_methods = [m for m in Method if METHOD_SPECS[m].family.value == "sdxl"]
            assert list(welcome.capabilities.methods) == sdxl_methods
            for index, (method, inputs) in enumerate(SDXL_JOBS.items()):
                job = f"x{index}"
                await client.submit(job, method, inputs, width=64, height=80)
                events = await client.until_done(job)
                assert events[-1].done.status is JobStatus.COMPLETED, events[-1]
                (result,) = [e for e in events if isinstance(e, ResultReceived)]
                assert set(result.images) == set(METHOD_SPECS[method].outputs)
            # An SD1.5 method is refused by the SDXL server, naming the job.
            await client.submit("sd15", Method.SD15_TRANSPARENT)
            error = await client.next_event()
            assert isinstance(error, ErrorReceived)
            assert (error.error.code, error.error.job) == (ErrorCode.INVALID_REQUEST, "sd15")

    with_sdxl_server(scenario)


def test_welcome_offers_the_few_step_loras_and_a_job_runs_with_one(
    with_server, demo_models
) -> None:
    """Protocol 1.2: the offer carries each LoRA's settings; a job naming one runs with
    them, one naming another is refused before it is queued, and the server goes on."""

    async def scenario(server: RunningServer) -> None:
        async with server.client() as client:
            welcome = (await client.hello()).welcome
            offered = {info.name: info for info in welcome.capabilities.loras}
            assert set(offered) == {"hyper_sd15_8steps", "hyper_sd15_8steps_cfg"}
            hyper = offered["hyper_sd15_8steps"]
            assert (hyper.sampler, hyper.steps, hyper.cfg_scale) == (
                Sampler.EULER_SGM_UNIFORM,
                8,
                1.0,
            )
            assert Sampler.LCM_SGM_UNIFORM in welcome.capabilities.samplers
            await client.submit("bad", lora="lcm_sd21")
            refusal = await client.next_event()
            assert isinstance(refusal, ErrorReceived)
            assert (refusal.error.code, refusal.error.job) == (ErrorCode.INVALID_REQUEST, "bad")
            assert refusal.error.message == (
                "lora: 'lcm_sd21' is not a LoRA this backend offers; offered: "
                "hyper_sd15_8steps, hyper_sd15_8steps_cfg"
            )
            await client.submit(
                "fast", lora="hyper_sd15_8steps", sampler=Sampler.EULER_SGM_UNIFORM, cfg_scale=1.0
            )
            events = await client.until_done("fast")
        assert events[-1].done.status is JobStatus.COMPLETED
        assert [e.progress.step for e in events if isinstance(e, ProgressReceived)] == [1, 2]

    with_server(scenario)
    assert demo_models.lora == ("hyper_sd15_8steps", 1.0)  # merged, and kept for the next
    demo_models.use_lora(None)  # the session's models, left as found


def test_a_flux_server_offers_its_method_and_runs_a_job(demo_cache_dir) -> None:
    """Protocol 1.2's FLUX family: the welcome says it, and a job streams as any."""
    flux_set = open_model_set(
        demo=True, demo_family=ModelFamily.FLUX, cache_dir=demo_cache_dir, device="cpu"
    )

    async def scenario(server: RunningServer) -> None:
        async with server.client() as client:
            welcome = (await client.hello()).welcome
            assert welcome.model.family is ModelFamily.FLUX
            assert welcome.capabilities.methods == (Method.FLUX_TRANSPARENT,)
            assert welcome.capabilities.families == (ModelFamily.FLUX,)
            assert welcome.capabilities.loras == ()
            await client.submit("f1", Method.FLUX_TRANSPARENT, width=64, height=64)
            events = await client.until_done("f1")
        assert isinstance(events[-1], JobDone)
        assert events[-1].done.status is JobStatus.COMPLETED
        progress = [e for e in events if isinstance(e, ProgressReceived)]
        assert [p.progress.step for p in progress] == [1, 2]
        assert all(p.preview for p in progress)

    run_with_server(flux_set, scenario)
