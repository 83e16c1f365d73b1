"""`layerdiffuse bench --stages transport`: a big layer's round trip over loopback.

A client sends a 4096² RGBA layer to an echo server in another process, in the
protocol's chunked binary frames, and gets it back: raw `bgra8` (what the plugin
sends by default) against PNG (encode, send, decode on each side, as image-over-HTTP
plugins do). Reported as MB/s of layer pixels moved (both directions) and the ratio.
"""

from __future__ import annotations

import asyncio
import io
import multiprocessing
import statistics
import time

import numpy as np
from PIL import Image
from websockets.asyncio.client import connect
from websockets.asyncio.server import ServerConnection, serve

from protocol import DEFAULT_LIMITS, ImageAssembler, ImageRef, PixelFormat, split_image

PNG_LEVEL = 1
FRAME_SLACK = 4096


def sample_layer(side: int) -> np.ndarray:
    """A photo-like RGBA layer: smooth colour, some grain, a soft-edged alpha blob."""
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:side, 0:side].astype(np.float32) / side
    rgb = np.stack([x, y, 0.5 + 0.5 * np.sin(6 * x * y)], axis=-1) * 255
    rgb += rng.normal(0, 6, rgb.shape)
    alpha = np.clip(1.5 - 3 * np.hypot(x - 0.5, y - 0.5), 0, 1)[..., None] * 255
    return np.concatenate([rgb, alpha], axis=-1).clip(0, 255).astype(np.uint8)


def encode_png(rgba: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(rgba, "RGBA").save(buffer, format="PNG", compress_level=PNG_LEVEL)
    return buffer.getvalue()


def decode_png(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(image.convert("RGBA"))


async def _echo(websocket: ServerConnection) -> None:
    """Reassemble each announced image and send it back; PNG is decoded and re-encoded."""
    assembler = ImageAssembler(DEFAULT_LIMITS, max_pending_bytes=1 << 30)
    async for message in websocket:
        if isinstance(message, str):
            assembler.expect(_ref(message))
            continue
        complete = assembler.feed(message)
        if complete is None:
            continue
        ref, data = complete
        if ref.format is PixelFormat.PNG:
            data = encode_png(decode_png(bytes(data)))
            ref = ImageRef(ref.id, ref.width, ref.height, ref.format, len(data))
        await websocket.send(_announce(ref))
        for frame in split_image(ref.id, data, DEFAULT_LIMITS.max_chunk_bytes):
            await websocket.send(frame)


def _announce(ref: ImageRef) -> str:
    # The echo's own one-line announcement; the pixels travel in the protocol's frames.
    return f"{ref.id} {ref.width} {ref.height} {ref.format.value} {ref.size}"


def _ref(text: str) -> ImageRef:
    image_id, width, height, format, size = text.split()
    return ImageRef(image_id, int(width), int(height), PixelFormat(format), int(size))


def _serve_echo(port_pipe: multiprocessing.connection.Connection) -> None:
    async def main() -> None:
        server = await serve(
            _echo,
            "127.0.0.1",
            0,
            compression=None,
            max_size=DEFAULT_LIMITS.max_chunk_bytes + FRAME_SLACK,
        )
        port_pipe.send(server.sockets[0].getsockname()[1])
        await server.serve_forever()

    asyncio.run(main())


async def _round_trip(port: int, rgba: np.ndarray, format: PixelFormat, repeat: int) -> list[float]:
    height, width = rgba.shape[:2]
    bgra = np.ascontiguousarray(rgba[..., [2, 1, 0, 3]])
    times = []
    async with connect(
        f"ws://127.0.0.1:{port}",
        compression=None,
        max_size=DEFAULT_LIMITS.max_chunk_bytes + FRAME_SLACK,
    ) as websocket:
        for index in range(repeat + 1):  # the first round warms up
            started = time.perf_counter()
            if format is PixelFormat.PNG:
                data: bytes | memoryview = encode_png(rgba)
            else:
                data = memoryview(bgra).cast("B")
            ref = ImageRef(f"layer{index}", width, height, format, len(data))
            await websocket.send(_announce(ref))
            for frame in split_image(ref.id, data, DEFAULT_LIMITS.max_chunk_bytes):
                await websocket.send(frame)
            assembler = ImageAssembler(DEFAULT_LIMITS, max_pending_bytes=1 << 30)
            assembler.expect(_ref(await websocket.recv()))
            complete = None
            while complete is None:
                complete = assembler.feed(await websocket.recv())
            if format is PixelFormat.PNG:
                decode_png(bytes(complete[1]))
            if index:
                times.append(time.perf_counter() - started)
    return times


def bench_transport(side: int = 4096, repeat: int = 3) -> list[tuple[str, float, float]]:
    """Round trips of a side² layer; returns (variant, median ms, MB/s) per format."""
    rgba = sample_layer(side)
    context = multiprocessing.get_context("spawn")
    receiver, sender = context.Pipe(duplex=False)
    process = context.Process(target=_serve_echo, args=(sender,), daemon=True)
    process.start()
    try:
        port = receiver.recv()
        results = []
        moved = 2 * rgba.nbytes / 1e6  # MB of layer pixels, there and back
        for label, format in (
            ("raw bgra8", PixelFormat.BGRA8),
            (f"png level {PNG_LEVEL}", PixelFormat.PNG),
        ):
            times = asyncio.run(_round_trip(port, rgba, format, repeat))
            seconds = statistics.median(times)
            results.append((label, seconds * 1000, moved / seconds))
        return results
    finally:
        process.terminate()
        process.join(5)
