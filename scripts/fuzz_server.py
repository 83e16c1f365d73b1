"""A long fuzz run against a live `layerdiffuse serve --demo`, for before a release.

    python scripts/fuzz_server.py [--inputs 100000] [--seconds 900] [--seed 1] [--json FILE]

It starts the demo backend in a subprocess (its own cache folder, one torch thread) and
throws inputs at it over real sockets from a few connections at once, until `--inputs`
have been sent or `--seconds` have passed, whichever comes first:

- mutated protocol messages (fields dropped, retyped, renamed, out of range, unknown),
  their JSON text cut or garbled, random text, deep nesting, frames past the limits;
- binary frames: random bytes, chunk headers with random ids, offsets and lengths;
- fresh connections that send junk before `hello` or a `hello` of another version, and
  raw TCP connections that send junk instead of an HTTP upgrade;
- all along, a crowd of connections that never say hello (half silent TCP, half open
  websockets), each reopened when the server closes it at the hello timeout.

After every batch a probe (`cancel` of a job that does not exist) must come back as
`unknown_job`, so each batch is known to be processed; every reply must be a server
message with a known error code, never `internal_error`; a connection that said hello
must never be closed by the server except for a frame past twice the limits (1009) or
an unsupported version. Jobs a mutation makes valid are cancelled as soon as they are
accepted. At the end a fresh client must complete a demo job, the server's log must
hold no traceback, and its memory and open files are reported beside those at start.
The figures of the last run are in docs/fuzzing.md. Exit status: 0 clean, 1 failures.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import random
import re
import selectors
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from protocol import (  # noqa: E402
    DEFAULT_LIMITS,
    ErrorCode,
    GenerationParameters,
    ImageRef,
    LayerImage,
    LayerRole,
    Method,
    PixelFormat,
    Submit,
    encode_message,
    pack_chunk,
)

LISTENING = re.compile(r"listening on ws://127\.0\.0\.1:(\d+)")
HELLO = '{"type":"hello","protocol":[1,0],"client":"fuzz","session":null}'
SERVER_TYPES = {"welcome", "accepted", "progress", "result", "done", "error"}
ERROR_CODES = {code.value for code in ErrorCode}
BATCH = 40
WORKERS = 3
FRESH_CONNECTION_SHARE = 0.01
INTERESTING_INTEGERS = [
    -(2**63) - 1, -(2**31), -1, 0, 1, 2, 3, 7, 63, 64, 65, 150, 151, 255, 1024, 8192,
    8193, 2**31, 2**53 + 1, 2**63, 2**64, 10**30,
]  # fmt: skip


# Inputs -------------------------------------------------------------------------------------


def json_value(rng: random.Random, depth: int = 0) -> Any:
    """A random JSON value, small, with the edge cases a parser meets."""
    kind = rng.randrange(9 if depth < 3 else 6)
    if kind == 0:
        return None
    if kind == 1:
        return rng.random() < 0.5
    if kind == 2:
        return rng.choice(INTERESTING_INTEGERS)
    if kind == 3:
        return rng.choice([0.5, -0.0, 1e308, -1e-308, 7.0, 3.14159])
    if kind in (4, 5):
        return random_text(rng, rng.choice([0, 1, 8, 40]))
    if kind == 6:
        return [json_value(rng, depth + 1) for _ in range(rng.randrange(4))]
    return {random_text(rng, 6): json_value(rng, depth + 1) for _ in range(rng.randrange(4))}


def random_text(rng: random.Random, length: int) -> str:
    alphabet = 'abcxyz_-/.:09 "\\{}[],\u00e9\u4e2d\U0001f600\u200b\x00\x7f'
    return "".join(rng.choice(alphabet) for _ in range(length))


def templates(rng: random.Random) -> list[dict[str, Any]]:
    """Valid client messages (as JSON objects) to mutate: submits, cancels, a hello."""
    job = f"f{rng.randrange(10**6)}"
    plain = Submit(job, GenerationParameters(method=Method.SD15_TRANSPARENT, steps=1))
    ref = ImageRef.raw(f"{job}/fg", 8, 8, PixelFormat.BGRA8)
    with_input = Submit(
        job + "i",
        GenerationParameters(method=Method.SD15_FG_TO_BG, width=8, height=8, steps=1),
        (LayerImage(LayerRole.FOREGROUND, ref),),
    )
    return [
        json.loads(encode_message(plain)),
        json.loads(encode_message(with_input)),
        {"type": "cancel", "job": job},
        json.loads(HELLO),
    ]


def mutate(rng: random.Random, value: Any, depth: int = 0) -> Any:
    """One structural change somewhere in a JSON object or list."""
    if isinstance(value, dict) and value and depth < 4:
        key = rng.choice(list(value))
        action = rng.randrange(5)
        copy = dict(value)
        if action == 0:
            del copy[key]
        elif action == 1:
            copy[key] = json_value(rng)
        elif action == 2:
            copy[random_text(rng, rng.choice([1, 5, 12]))] = json_value(rng)
        elif action == 3:
            copy[key + rng.choice(["", "_", "x"])] = copy.pop(key)
        else:
            copy[key] = mutate(rng, copy[key], depth + 1)
        return copy
    if isinstance(value, list) and value and depth < 4:
        copy = list(value)
        index = rng.randrange(len(copy))
        if rng.random() < 0.5:
            copy[index] = mutate(rng, copy[index], depth + 1)
        else:
            copy.insert(index, json_value(rng))
        return copy
    return json_value(rng)


def garble(rng: random.Random, text: str) -> str:
    """Cut, repeat or replace characters of a JSON text."""
    if not text:
        return random_text(rng, 5)
    action = rng.randrange(4)
    position = rng.randrange(len(text))
    if action == 0:
        return text[:position]
    if action == 1:
        return text[:position] + random_text(rng, rng.randrange(1, 4)) + text[position + 1 :]
    if action == 2:
        return text[:position] + text[position:] * 2
    return text.replace(rng.choice(['"', ":", ",", "}", "]"]), rng.choice(["", "'", ";", "{"]), 1)


def binary_frame(rng: random.Random, known_ids: list[str]) -> bytes:
    kind = rng.randrange(4)
    if kind == 0:
        return rng.randbytes(rng.randrange(0, 300))
    image_id = rng.choice(known_ids) if known_ids and kind == 1 else random_text(rng, 6) or "x"
    frame = pack_chunk(image_id, rng.choice([0, 1, 100, 256, 2**40]), rng.randbytes(64))
    if kind == 3:  # a header length that lies
        declared = rng.choice([0, 1, 2048, 2049, 2**31]).to_bytes(4, "big")
        frame = declared + frame[4:]
    return frame


def deep(rng: random.Random) -> str:
    depth = rng.choice([100, 10_000, 400_000])
    opening, closing = rng.choice([("[", "]"), ('{"a":', "}")])
    return opening * depth + "1" + closing * (depth if rng.random() < 0.5 else 0)


def next_input(rng: random.Random, known_ids: list[str]) -> tuple[str, str | bytes]:
    """(kind, frame) for a connection that said hello."""
    roll = rng.random()
    if roll < 0.45:
        message = rng.choice(templates(rng))
        for _ in range(rng.randrange(1, 4)):
            message = mutate(rng, message)
        return "mutated message", json.dumps(message)
    if roll < 0.65:
        return "garbled text", garble(rng, json.dumps(rng.choice(templates(rng))))
    if roll < 0.72:
        return "random text", random_text(rng, rng.randrange(0, 200))
    if roll < 0.95:
        return "binary frame", binary_frame(rng, known_ids)
    if roll < 0.999:
        return "deep nesting", deep(rng)
    return "over the limit", "x" * (DEFAULT_LIMITS.max_text_bytes + 1)


# Running ------------------------------------------------------------------------------------


@dataclass
class Figures:
    inputs: collections.Counter[str] = field(default_factory=collections.Counter)
    replies: collections.Counter[str] = field(default_factory=collections.Counter)
    closes: collections.Counter[str] = field(default_factory=collections.Counter)
    failures: list[str] = field(default_factory=list)
    connections: int = 0
    cancelled: int = 0

    @property
    def total(self) -> int:
        return sum(self.inputs.values())

    def fail(self, text: str) -> None:
        if len(self.failures) < 50:
            self.failures.append(text)


class FuzzedConnection:
    """One connection after hello: a sender of batches and a reader checking replies."""

    def __init__(self, websocket: ClientConnection, figures: Figures) -> None:
        self.websocket = websocket
        self.figures = figures
        self.probe_seen = asyncio.Event()
        self.probe = ""
        self.known_ids: list[str] = []

    async def read(self) -> None:
        async for message in self.websocket:
            if isinstance(message, bytes):
                self.figures.replies["binary"] += 1
                continue
            try:
                reply = json.loads(message)
            except ValueError:
                self.figures.fail(f"a reply that is not JSON: {message[:200]!r}")
                continue
            kind = reply.get("type")
            if kind not in SERVER_TYPES:
                self.figures.fail(f"a reply of unknown type: {message[:200]}")
            if kind == "error":
                code = reply.get("code")
                self.figures.replies[f"error {code}"] += 1
                if code not in ERROR_CODES or code == ErrorCode.INTERNAL_ERROR.value:
                    self.figures.fail(f"error reply: {message[:300]}")
                if code == "unknown_job" and reply.get("job") == self.probe:
                    self.probe_seen.set()
            else:
                self.figures.replies[kind] += 1
            if kind == "accepted":
                await self.websocket.send(json.dumps({"type": "cancel", "job": reply["job"]}))
                self.figures.cancelled += 1
            if kind in ("accepted", "progress", "result") or "image" in message:
                self.known_ids.extend(re.findall(r'"id":\s*"([^"]{1,64})"', message))
                del self.known_ids[:-20]

    async def batch(self, rng: random.Random, count: int, number: int) -> None:
        for _ in range(count):
            kind, frame = next_input(rng, self.known_ids)
            self.figures.inputs[kind] += 1
            await self.websocket.send(frame)
        self.probe = f"probe-{number}"
        self.probe_seen.clear()
        await self.websocket.send(json.dumps({"type": "cancel", "job": self.probe}))
        await asyncio.wait_for(self.probe_seen.wait(), 60)


async def fresh_connection(url: str, port: int, rng: random.Random, figures: Figures) -> None:
    """Junk before hello, a hello of another version, or junk instead of HTTP."""
    figures.connections += 1
    roll = rng.random()
    if roll < 0.3:
        figures.inputs["junk instead of HTTP"] += 1
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        junk = rng.choice(
            [
                rng.randbytes(rng.randrange(1, 400)),
                b"GET / HTTP/1.1\r\n" + rng.randbytes(100) + b"\r\n\r\n",
                b"GET /" + b"a" * 10_000 + b" HTTP/1.1\r\n\r\n",
                b"GET / HTTP/1.1\r\nUpgrade: websocket\r\n" + b"X: y\r\n" * 300 + b"\r\n",
            ]
        )
        writer.write(junk)
        try:
            await writer.drain()
            answer = await asyncio.wait_for(reader.read(200), 15)
            if answer and not answer.startswith(b"HTTP/1.1 4"):
                figures.fail(f"junk instead of HTTP was answered {answer[:60]!r}")
        except (ConnectionError, TimeoutError):
            pass
        finally:
            writer.close()
        figures.closes["http refused"] += 1
        return
    async with connect(url, compression=None, ping_interval=None) as websocket:
        if roll < 0.65:
            figures.inputs["junk before hello"] += 1
            await websocket.send(rng.choice([random_text(rng, 30), rng.randbytes(30)]))
            await websocket.send(HELLO)
            replies = [await asyncio.wait_for(websocket.recv(), 15) for _ in range(2)]
            if '"welcome"' not in str(replies[-1]):
                figures.fail(f"no welcome after junk before hello: {replies!r}")
        else:
            figures.inputs["hello of another version"] += 1
            major = rng.choice([0, 2, 99, -1])
            hello = {"type": "hello", "protocol": [major, 0], "client": "fuzz", "session": None}
            await websocket.send(json.dumps(hello))
            reply = json.loads(await asyncio.wait_for(websocket.recv(), 15))
            expected = "unsupported_version" if major >= 0 else "invalid_field"
            if reply.get("code") != expected:
                figures.fail(f"hello of version {major} answered {reply}")
            if expected == "unsupported_version":
                try:
                    await asyncio.wait_for(websocket.recv(), 15)
                    figures.fail("not closed after unsupported_version")
                except ConnectionClosed:
                    figures.closes["unsupported version"] += 1


async def worker(
    url: str, port: int, seed: int, figures: Figures, stop_at: tuple[int, float]
) -> None:
    rng = random.Random(seed)
    limit, deadline = stop_at
    number = 0
    while figures.total < limit and time.monotonic() < deadline:
        figures.connections += 1
        async with connect(url, compression=None, max_size=2**26) as websocket:
            await websocket.send(HELLO)
            assert json.loads(await websocket.recv())["type"] == "welcome"
            connection = FuzzedConnection(websocket, figures)
            reader = asyncio.create_task(connection.read())
            try:
                while figures.total < limit and time.monotonic() < deadline:
                    if rng.random() < FRESH_CONNECTION_SHARE * BATCH:
                        await fresh_connection(url, port, rng, figures)
                    number += 1
                    await connection.batch(rng, BATCH, seed * 10**9 + number)
            except ConnectionClosed as closed:
                rcvd = closed.rcvd.code if closed.rcvd else None
                figures.closes[f"closed {rcvd}"] += 1
                if rcvd != 1009:
                    figures.fail(f"connection closed by the server: {closed!r}")
            except TimeoutError:
                figures.fail("a probe got no reply within 60 s")
                return
            finally:
                reader.cancel()
                await asyncio.gather(reader, return_exceptions=True)


async def crowd_member(
    url: str, port: int, index: int, figures: Figures, stop: asyncio.Event
) -> None:
    """A connection that never says hello, reopened each time the server closes it."""
    while not stop.is_set():
        figures.connections += 1
        if index % 2:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            try:
                ended = await wait_or_stop(reader.read(), stop)
                if ended is not None:
                    figures.closes["crowd: TCP dropped"] += 1
            except ConnectionError:
                figures.closes["crowd: TCP dropped"] += 1
            finally:
                writer.close()
            continue
        async with connect(url, compression=None, ping_interval=None) as websocket:
            try:
                await wait_or_stop(websocket.recv(), stop)
            except ConnectionClosed as closed:
                code = closed.rcvd.code if closed.rcvd else None
                figures.closes[f"crowd: websocket closed {code}"] += 1
                if code != 4001:
                    figures.fail(f"a crowd connection closed with {closed!r}")
            else:
                if not stop.is_set():
                    figures.fail("a crowd connection got a message before hello")


async def wait_or_stop(awaitable: Any, stop: asyncio.Event) -> Any:
    """The awaitable's result, or None once `stop` is set (it is then cancelled)."""
    task = asyncio.ensure_future(awaitable)
    stopping = asyncio.ensure_future(stop.wait())
    await asyncio.wait([task, stopping], return_when=asyncio.FIRST_COMPLETED)
    stopping.cancel()
    if task.done():
        return task.result()
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    return None


async def demo_job(url: str) -> str:
    """A fresh client's demo job, start to done: its status."""
    async with connect(url, compression=None, max_size=2**26) as websocket:
        await websocket.send(HELLO)
        await websocket.recv()
        submit = Submit("final", GenerationParameters(method=Method.SD15_TRANSPARENT, steps=2))
        await websocket.send(encode_message(submit))
        while True:
            message = await asyncio.wait_for(websocket.recv(), 120)
            if isinstance(message, str) and json.loads(message)["type"] == "done":
                return str(json.loads(message)["status"])


# The server process ----------------------------------------------------------------------------


def start_server(folder: Path) -> tuple[subprocess.Popen[str], int, Path]:
    environment = dict(
        os.environ, XDG_CACHE_HOME=str(folder / "cache"), PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1"
    )
    environment.pop("LAYERDIFFUSE_TOKEN", None)
    log = folder / "serve.log"
    with log.open("w") as errors:
        process = subprocess.Popen(
            [sys.executable, "-m", "backend", "serve", "--demo", "--port", "0"],
            cwd=ROOT,
            env=environment,
            stdout=subprocess.PIPE,
            stderr=errors,
            text=True,
        )
    assert process.stdout is not None
    selector = selectors.DefaultSelector()
    selector.register(process.stdout, selectors.EVENT_READ)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and process.poll() is None:
        if selector.select(timeout=0.5):
            match = LISTENING.search(process.stdout.readline())
            if match:
                return process, int(match.group(1)), log
    process.kill()
    raise SystemExit(f"the demo backend did not start: {log.read_text()[-2000:]}")


def resident_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def open_files(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


async def fuzz(arguments: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="fuzz-server-") as folder:
        process, port, log = start_server(Path(folder))
        url = f"ws://127.0.0.1:{port}"
        try:
            figures = Figures()
            if await demo_job(url) != "completed":  # warm: the first job builds caches
                figures.fail("the warm-up demo job did not complete")
            start_memory, start_files = resident_mib(process.pid), open_files(process.pid)
            peak_memory = start_memory
            started = time.monotonic()
            stop_at = (arguments.inputs, started + arguments.seconds)
            stop_crowd = asyncio.Event()
            crowd = [
                asyncio.create_task(crowd_member(url, port, index, figures, stop_crowd))
                for index in range(arguments.crowd)
            ]
            tasks = [
                asyncio.create_task(worker(url, port, arguments.seed + index, figures, stop_at))
                for index in range(WORKERS)
            ]
            while not all(task.done() for task in tasks):
                await asyncio.wait(tasks, timeout=1.0)
                peak_memory = max(peak_memory, resident_mib(process.pid))
                if process.poll() is not None:
                    figures.fail(f"the server exited with {process.returncode}")
                    break
            for task in tasks:
                if not task.cancelled() and task.exception() is not None:
                    figures.fail(f"a worker failed: {task.exception()!r}")
            elapsed = time.monotonic() - started
            stop_crowd.set()
            for member in await asyncio.gather(*crowd, return_exceptions=True):
                if isinstance(member, BaseException):
                    figures.fail(f"a crowd connection failed: {member!r}")
            await asyncio.sleep(2.0)  # let cancelled jobs and closing connections settle
            end_memory, end_files = resident_mib(process.pid), open_files(process.pid)
            final = await demo_job(url)
            if final != "completed":
                figures.fail(f"the final demo job ended {final}")
        finally:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
            if process.stdout is not None:
                process.stdout.close()
        server_log = log.read_text()
    tracebacks = server_log.count("Traceback")
    if tracebacks:
        first = server_log.index("Traceback")
        figures.fail(f"{tracebacks} traceback(s) in the server's log, the first after:")
        figures.fail(server_log[max(0, first - 300) : first + 1500])
    return {
        "inputs": figures.total,
        "seconds": round(elapsed, 1),
        "inputs_per_second": round(figures.total / elapsed),
        "inputs_by_kind": dict(figures.inputs.most_common()),
        "replies": dict(figures.replies.most_common()),
        "closes": dict(figures.closes.most_common()),
        "connections": figures.connections,
        "crowd": arguments.crowd,
        "jobs_cancelled_on_accept": figures.cancelled,
        "server_memory_mib": {
            "start": round(start_memory),
            "peak": round(peak_memory),
            "end": round(end_memory),
        },
        "server_open_files": {"start": start_files, "end": end_files},
        "tracebacks_in_log": tracebacks,
        "final_demo_job": final,
        "failures": figures.failures,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--inputs", type=int, default=100_000, help="inputs to send in all")
    parser.add_argument("--seconds", type=float, default=900.0, help="stop after this long")
    parser.add_argument("--seed", type=int, default=1, help="seed of the random inputs")
    parser.add_argument(
        "--crowd", type=int, default=40, help="connections that never say hello, held open"
    )
    parser.add_argument("--json", type=Path, help="also write the figures here")
    arguments = parser.parse_args(argv)
    report = asyncio.run(fuzz(arguments))
    text = json.dumps(report, indent=2)
    print(text)
    if arguments.json is not None:
        arguments.json.write_text(text + "\n")
    return 1 if report["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
