"""The caps and deadlines over real sockets: no client can lock the others out (issue #15)."""

from __future__ import annotations

import asyncio
import contextlib
import resource
from collections.abc import AsyncIterator

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from backend.config import ServerConfig
from backend.server.admission import Admission, address_key
from protocol import CloseCode, ErrorReceived, Hires, JobAccepted, JobStatus, ResultReceived

from .conftest import ProtocolClient, RunningServer

SERVED_WITHIN = 5.0
"""Seconds a client may take to get its welcome next to the idle crowd: well under the
hello timeout the crowd tests run with (30 s), so no timeout can have made room for it."""

REQUEST_HEAD = (
    b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
)


def need_file_descriptors(count: int) -> None:
    """Raise the soft limit on open files to `count` if it is lower (never skip)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= count:
        return
    if hard != resource.RLIM_INFINITY and hard < count:
        pytest.fail(f"this test needs {count} open files; the hard limit is {hard}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (count, hard))


async def closed_with(websocket: ClientConnection, timeout: float = 10.0) -> tuple[int, str]:
    """Read until the server closes; its close code and reason."""
    with pytest.raises(ConnectionClosed) as closed:
        while True:
            await asyncio.wait_for(websocket.recv(), timeout)
    assert closed.value.rcvd is not None, "closed without a close frame"
    return closed.value.rcvd.code, closed.value.rcvd.reason


async def raw_connection(
    server: RunningServer, head: bytes = b"", source: str = "127.0.0.1"
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A TCP connection that sends `head` (part of an HTTP request, or nothing)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port, local_addr=(source, 0))
    if head:
        writer.write(head)
        await writer.drain()
    return reader, writer


async def dropped(reader: asyncio.StreamReader, timeout: float = 10.0) -> bool:
    """Whether the server closes this raw connection (EOF or reset) within `timeout`."""
    try:
        return await asyncio.wait_for(reader.read(), timeout) == b""
    except ConnectionResetError:
        return True


async def serves_a_job(server: RunningServer, **options: object) -> None:
    """A fresh client gets its welcome within `SERVED_WITHIN` and completes a demo job."""
    async with server.client(**options) as client:
        await asyncio.wait_for(client.hello(), SERVED_WITHIN)
        await client.submit("fresh")
        events = await client.until_done("fresh")
    assert events[-1].done.status is JobStatus.COMPLETED
    assert sum(isinstance(event, ResultReceived) for event in events) == 1


async def connected(server: RunningServer, source: str = "127.0.0.1") -> ClientConnection:
    """A websocket that passed the upgrade and has not said hello."""
    return await connect(server.url, compression=None, ping_interval=None, local_addr=(source, 0))


async def said_hello(server: RunningServer, source: str = "127.0.0.1") -> ProtocolClient:
    client = ProtocolClient(await connected(server, source))
    await client.hello()
    return client


@contextlib.asynccontextmanager
async def held(*resources: object) -> AsyncIterator[None]:
    """Close websockets and raw writers on the way out, whatever state they are in."""
    try:
        yield
    finally:
        for item in resources:
            if isinstance(item, ProtocolClient):
                item = item.websocket
            if isinstance(item, ClientConnection):
                await item.close()
            elif isinstance(item, asyncio.StreamWriter):
                item.close()


# Hello timeout ------------------------------------------------------------------------


def test_a_connection_that_never_says_hello_is_closed_with_hello_timeout(with_server) -> None:
    async def scenario(server: RunningServer) -> None:
        started = asyncio.get_running_loop().time()
        silent = await connected(server)
        talking = await connected(server)  # frames before hello do not extend the deadline
        await talking.send('{"type":"cancel","job":"j"}')
        greeted = await said_hello(server)
        async with held(silent, talking, greeted):
            assert await closed_with(silent) == (CloseCode.HELLO_TIMEOUT, "no hello within 0.5 s")
            assert asyncio.get_running_loop().time() - started >= 0.5
            assert '"not_ready"' in str(await talking.recv())
            assert await closed_with(talking) == (
                CloseCode.HELLO_TIMEOUT,
                "no hello within 0.5 s",
            )
            # The one that said hello in time is still served after the deadline.
            await greeted.websocket.send('{"type":"cancel","job":"nothing"}')
            reply = await greeted.next_event()
            assert isinstance(reply, ErrorReceived) and reply.error.code.value == "unknown_job"
            assert server.server.admission.pending == 0

    with_server(scenario, hello_timeout_seconds=0.5)


def test_slow_and_silent_http_handshakes_are_dropped_at_the_hello_timeout(with_server) -> None:
    async def scenario(server: RunningServer) -> None:
        silent = await raw_connection(server)
        trickling = await raw_connection(server, b"GET / HTTP/1.1\r\n")

        async def trickle() -> None:
            _, writer = trickling
            for byte in REQUEST_HEAD[16:]:
                writer.write(bytes([byte]))
                await writer.drain()
                await asyncio.sleep(0.05)

        feeding = asyncio.create_task(trickle())
        async with held(silent[1], trickling[1]):
            # Meanwhile a real client is served as usual.
            await serves_a_job(server)
            assert await dropped(silent[0])
            with contextlib.suppress(ConnectionError):
                assert await dropped(trickling[0])
            feeding.cancel()
            await asyncio.gather(feeding, return_exceptions=True)
            assert server.server.admission.pending == 0

    with_server(scenario, hello_timeout_seconds=1.0)


def test_too_many_pending_connections_close_the_oldest(with_server) -> None:
    async def scenario(server: RunningServer) -> None:
        raw = await raw_connection(server)
        waiting = [await connected(server) for _ in range(3)]
        async with held(raw[1], *waiting):
            assert server.server.admission.pending == 4
            newest = await connected(server)  # the fifth: the raw one, the oldest, goes
            waiting.append(newest)
            assert await dropped(raw[0])
            assert server.server.admission.pending == 4
            late = await said_hello(server)  # the sixth: the oldest upgraded one goes
            waiting.append(late.websocket)
            assert await closed_with(waiting[0]) == (
                CloseCode.EVICTED,
                "too many connections waiting for hello",
            )
            assert server.server.admission.pending == 3
            assert server.server.admission.established == 1

    with_server(scenario, max_pending_connections=4, hello_timeout_seconds=30.0)


# Caps on established connections --------------------------------------------------------


def test_one_address_cannot_take_every_slot(with_server) -> None:
    async def scenario(server: RunningServer) -> None:
        first = [await said_hello(server, "127.0.0.2") for _ in range(2)]
        async with held(*first):
            with pytest.raises(InvalidStatus) as refused:
                await connected(server, "127.0.0.2")
            assert refused.value.response.status_code == 503
            assert refused.value.response.body == b"too many connections from 127.0.0.2 (2)\n"
            # Other addresses get the slots left.
            await serves_a_job(server, local_addr=("127.0.0.3", 0))
            others = [await said_hello(server, "127.0.0.3"), await said_hello(server, "127.0.0.4")]
            async with held(*others):
                with pytest.raises(InvalidStatus) as refused:
                    await connected(server, "127.0.0.5")
                assert refused.value.response.body == b"too many connections (4)\n"

    with_server(
        scenario, max_connections=4, max_connections_per_address=2, hello_timeout_seconds=30.0
    )


def test_a_hello_into_full_slots_closes_the_longest_idle_connection(with_server) -> None:
    async def scenario(server: RunningServer) -> None:
        oldest = await said_hello(server)
        older = await said_hello(server)
        async with held(oldest, older):
            await asyncio.sleep(0.6)  # both idle past the hello timeout: evictable
            newcomer = await said_hello(server)
            async with held(newcomer):
                assert await closed_with(oldest.websocket) == (
                    CloseCode.EVICTED,
                    "closed to make room for a newer connection",
                )
                another = await said_hello(server)
                async with held(another):
                    assert (await closed_with(older.websocket))[0] == CloseCode.EVICTED
                    # The two left have been idle less than the hello timeout: no room.
                    with pytest.raises(InvalidStatus) as refused:
                        await connected(server)
                    assert refused.value.response.status_code == 503

    with_server(
        scenario, max_connections=2, max_connections_per_address=2, hello_timeout_seconds=0.5
    )


def test_a_hello_that_finds_no_slot_left_is_closed_with_too_many_connections(with_server) -> None:
    async def scenario(server: RunningServer) -> None:
        # Both pass the upgrade while the one slot is free; the first hello takes it.
        first, second = await connected(server), await connected(server)
        async with held(first, second):
            await ProtocolClient(first).hello()
            await second.send('{"type":"hello","protocol":[1,0],"client":"x","session":null}')
            assert await closed_with(second) == (
                CloseCode.TOO_MANY_CONNECTIONS,
                "too many connections from 127.0.0.1 (1)",
            )
            assert server.server.admission.established == 1

    with_server(
        scenario, max_connections=1, max_connections_per_address=1, hello_timeout_seconds=30.0
    )


# Idle limit -------------------------------------------------------------------------------


def test_an_idle_client_is_closed_but_not_while_its_job_runs_waits_or_is_sent(
    with_server,
) -> None:
    async def scenario(server: RunningServer) -> None:
        idle = await said_hello(server)
        running = await said_hello(server)
        queued = await said_hello(server)
        async with held(idle, running, queued):
            await running.submit("long", width=256, height=256, steps=150, batch_size=4)
            assert isinstance(await running.next_event(), JobAccepted)
            await queued.submit("behind")
            assert isinstance(await queued.next_event(), JobAccepted)
            assert await closed_with(idle.websocket) == (CloseCode.IDLE, "idle for 0.5 s")
            await asyncio.sleep(1.5)  # three idle limits of silence with a job
            await running.send(running.protocol.send_cancel("long"))
            events = await running.until_done("long")
            # Still running when cancelled, so "behind" waited in the queue all along.
            assert events[-1].done.status is JobStatus.CANCELLED
            events = await queued.until_done("behind")
            assert events[-1].done.status is JobStatus.COMPLETED
            # Work over: both are closed once idle again.
            assert await closed_with(running.websocket) == (CloseCode.IDLE, "idle for 0.5 s")
            assert await closed_with(queued.websocket) == (CloseCode.IDLE, "idle for 0.5 s")

    with_server(scenario, idle_timeout_seconds=0.5)


def test_a_client_slow_to_read_its_result_is_not_closed_as_idle(with_server) -> None:
    """A 16 MiB layer does not fit the socket buffers: it waits to be sent, so not idle."""

    async def scenario(server: RunningServer) -> None:
        async with server.client(max_queue=1) as client:
            await client.hello()
            session = server.server.queue.sessions[client.welcome.session]
            await client.submit(
                "big", width=2048, height=2048, steps=1, fit_to_native=True, hires=Hires.OFF
            )
            while "big" not in session.jobs:
                await asyncio.sleep(0.02)
            job = session.jobs["big"]
            while not job.state.finished:
                await asyncio.sleep(0.05)  # not reading while it runs
            await asyncio.sleep(1.5)  # nor while its result waits to be sent: 3 idle limits
            events = await client.until_done("big")
            assert events[-1].done.status is JobStatus.COMPLETED
            (result,) = [event for event in events if isinstance(event, ResultReceived)]
            assert len(next(iter(result.images.values()))) == 2048 * 2048 * 4
            assert await closed_with(client.websocket) == (CloseCode.IDLE, "idle for 0.5 s")

    with_server(scenario, idle_timeout_seconds=0.5)


# Crowds -------------------------------------------------------------------------------------


def test_with_200_idle_connections_held_open_a_fresh_client_completes_a_demo_job(
    with_server,
) -> None:
    """The issue's "done when", with the default caps: 180 connections from 127.0.0.1 that
    never say hello (60 silent TCP, 60 half-sent HTTP requests, 60 upgraded websockets)
    and 20 from 127.0.0.2 that said hello and sit idle."""
    need_file_descriptors(1024)

    async def scenario(server: RunningServer) -> None:
        silent = [await raw_connection(server) for _ in range(60)]
        half = [await raw_connection(server, REQUEST_HEAD[:40]) for _ in range(60)]
        upgraded = [await connected(server) for _ in range(60)]
        idle: list[ProtocolClient] = []
        refused = 0
        for _ in range(20):
            try:
                idle.append(await said_hello(server, "127.0.0.2"))
            except InvalidStatus as error:
                assert error.response.status_code == 503
                refused += 1
        writers = [writer for _, writer in silent + half]
        async with held(*writers, *upgraded, *idle):
            admission = server.server.admission
            assert (len(idle), refused) == (8, 12)  # the per-address cap
            assert admission.established == 8
            assert admission.pending <= 64  # the rest were closed, oldest first
            await serves_a_job(server)

    with_server(scenario, hello_timeout_seconds=30.0)


def test_with_a_token_clients_without_it_never_lock_out_a_token_holder(with_server) -> None:
    """On loopback every client is 127.0.0.1: the token, not the address, tells them apart."""
    need_file_descriptors(1024)

    async def scenario(server: RunningServer) -> None:
        crowd = [await raw_connection(server) for _ in range(100)]
        crowd += [await raw_connection(server, REQUEST_HEAD) for _ in range(100)]  # no token
        async with held(*(writer for _, writer in crowd)):
            for _ in range(20):  # and some that finish the request: 401, nothing held
                with pytest.raises(InvalidStatus) as refused:
                    await connected(server)
                assert refused.value.response.status_code == 401
            assert server.server.admission.pending <= 16
            assert server.server.admission.established == 0
            await serves_a_job(server, additional_headers={"Authorization": "Bearer secret"})

    with_server(scenario, token="secret", max_pending_connections=16, hello_timeout_seconds=30.0)


# Configuration -------------------------------------------------------------------------------


def test_addresses_are_counted_per_ip_and_per_ipv6_64() -> None:
    assert address_key("127.0.0.1") == "127.0.0.1"
    assert address_key("::ffff:10.0.0.7") == "10.0.0.7"
    assert address_key("2001:db8:1:2:aaaa::1") == "2001:db8:1:2::/64"
    assert address_key("2001:db8:1:2:bbbb::9") == "2001:db8:1:2::/64"
    assert address_key("fe80::1%eth0") == "fe80::/64"
    assert address_key("not-an-ip") == "not-an-ip"


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"max_connections_per_address": 17}, "max_connections_per_address 17 outside 1..16"),
        ({"max_connections_per_address": 0}, "max_connections_per_address 0 outside 1..16"),
        ({"max_pending_connections": 0}, "max_pending_connections 0 < 1"),
        ({"hello_timeout_seconds": 0.0}, "hello and idle timeouts must be positive"),
        ({"idle_timeout_seconds": -1.0}, "hello and idle timeouts must be positive"),
    ],
)
def test_bad_caps_and_timeouts_are_refused(fields: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=f"^{message}"):
        Admission(ServerConfig(demo=True, **fields))  # type: ignore[arg-type]


def test_the_defaults_keep_the_per_address_cap_below_the_global_one() -> None:
    config = ServerConfig(demo=True)
    assert config.max_connections_per_address < config.max_connections
    assert (config.hello_timeout_seconds, config.idle_timeout_seconds) == (5.0, 300.0)
    assert Admission(config).max_pending == 64
