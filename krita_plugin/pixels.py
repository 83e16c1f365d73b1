"""8-bit four-channel pixels as plain bytes: checks, crops, pads, channel swaps (no numpy).

Krita hands out 8-bit RGBA documents as B, G, R, A bytes per pixel, straight (not
premultiplied) alpha, rows packed without padding; the backend takes and returns that
order (`bgra8`), so nothing here runs on the normal path but the checks. Every function
takes the buffer's own size, so a short buffer is caught here, not inside Krita (whose
`setPixelData` reads past the end of one that is too short).
"""

from __future__ import annotations

import mmap

from .geometry import Bounds, Extent

__all__ = [
    "BYTES_PER_PIXEL",
    "Buffer",
    "alpha_bounds",
    "alpha_strip",
    "check_size",
    "crop",
    "has_visible_pixels",
    "lazy_buffer",
    "pad",
    "strips",
    "swap_red_blue",
    "thumbnail",
    "transparent",
]

BYTES_PER_PIXEL = 4

Buffer = bytes | bytearray | memoryview
"""Pixels as read from Krita or received from the backend, not copied on the way."""


def check_size(data: Buffer, extent: Extent) -> None:
    """Raise ValueError unless `data` holds exactly `extent`'s pixels."""
    expected = extent.pixels * BYTES_PER_PIXEL
    if extent.is_empty or len(data) != expected:
        raise ValueError(
            f"{len(data)} bytes for {extent.width}x{extent.height} pixels, expected {expected}"
        )


def transparent(extent: Extent) -> bytes:
    """Fully transparent pixels of this size."""
    return bytes(extent.pixels * BYTES_PER_PIXEL)


def crop(data: Buffer, extent: Extent, bounds: Bounds) -> bytes:
    """The pixels of `bounds` out of an image of `extent` (bounds inside the image).

    Raises:
        ValueError: a buffer of the wrong size, or bounds not inside the image.
    """
    check_size(data, extent)
    if bounds.is_empty or not Bounds.of(extent).contains(bounds):
        raise ValueError(f"{bounds} is not inside a {extent.width}x{extent.height} image")
    view = memoryview(data)
    stride = extent.width * BYTES_PER_PIXEL
    left = bounds.x * BYTES_PER_PIXEL
    width = bounds.width * BYTES_PER_PIXEL
    return b"".join(
        view[row * stride + left : row * stride + left + width]
        for row in range(bounds.y, bounds.bottom)
    )


def pad(data: Buffer, bounds: Bounds, extent: Extent) -> bytes:
    """Place an image of `bounds.extent` at `bounds` on a transparent image of `extent`.

    The part of `bounds` outside the larger image is dropped.

    Raises:
        ValueError: a buffer that is not `bounds.extent`'s size.
    """
    check_size(data, bounds.extent)
    out = bytearray(extent.pixels * BYTES_PER_PIXEL)
    visible = bounds.intersection(Bounds.of(extent))
    if visible.is_empty:
        return bytes(out)
    source = crop(data, bounds.extent, visible.relative_to(bounds))
    width = visible.width * BYTES_PER_PIXEL
    stride = extent.width * BYTES_PER_PIXEL
    for row in range(visible.height):
        start = (visible.y + row) * stride + visible.x * BYTES_PER_PIXEL
        out[start : start + width] = source[row * width : (row + 1) * width]
    return bytes(out)


def swap_red_blue(data: Buffer) -> bytearray:
    """BGRA ↔ RGBA: the first and third byte of every pixel swapped (a new buffer)."""
    if len(data) % BYTES_PER_PIXEL:
        raise ValueError(f"{len(data)} bytes is not a whole number of pixels")
    out = bytearray(data)
    out[0::4], out[2::4] = out[2::4], out[0::4]
    return out


def has_visible_pixels(data: Buffer) -> bool:
    """Whether any pixel has a non-zero alpha (17 ms for 4096² on the dev VM: a step
    slice of bytes or a bytearray is done in C, of a memoryview element by element)."""
    alpha = (data if isinstance(data, (bytes, bytearray)) else bytes(data))[3::4]
    return alpha.count(0) != len(alpha)


def lazy_buffer(size: int) -> memoryview:
    """A zeroed, writable buffer whose pages are mapped as they are first written: an
    anonymous mapping from 1 MiB on (zeroing a 64 MiB bytearray at once is a stall of
    its own on the UI thread), a bytearray below."""
    if size >= 1 << 20:
        return memoryview(mmap.mmap(-1, size))
    return memoryview(bytearray(size))


def alpha_strip(selection: Buffer, start: int, end: int) -> bytearray:
    """Pixels `start`..`end` of a one-byte-per-pixel selection as BGRA with the selection
    as alpha (colour 0): the protocol's mask image. The step assignment is done in C."""
    strip = bytearray((end - start) * BYTES_PER_PIXEL)
    strip[3::4] = selection[start:end]
    return strip


STRIP_BYTES = 8 << 20
"""Bytes of pixels read from or written to Krita in one go (about 10 ms of its time):
a 4096² layer goes in 8 strips, with the UI thread free between them."""


def strips(extent: Extent, strip_bytes: int = STRIP_BYTES) -> list[tuple[int, int]]:
    """Row ranges (first row, row count) covering `extent` top to bottom, each at most
    `strip_bytes` of pixels (at least one row)."""
    rows = max(1, strip_bytes // max(1, extent.width * BYTES_PER_PIXEL))
    return [(top, min(rows, extent.height - top)) for top in range(0, extent.height, rows)]


def thumbnail(data: Buffer, extent: Extent, side: int) -> tuple[Extent, bytes]:
    """A nearest-pixel thumbnail within side × side, same byte order: a few thousand
    small slices, so a 4096² layer takes about a millisecond and is never copied whole."""
    check_size(data, extent)
    scale = side / max(extent.width, extent.height)
    small = Extent(max(1, round(extent.width * scale)), max(1, round(extent.height * scale)))
    view = memoryview(data)
    stride = extent.width * BYTES_PER_PIXEL
    columns = [
        min(extent.width - 1, int((x + 0.5) * extent.width / small.width)) * BYTES_PER_PIXEL
        for x in range(small.width)
    ]
    rows = []
    for y in range(small.height):
        source = min(extent.height - 1, int((y + 0.5) * extent.height / small.height))
        row = bytes(view[source * stride : (source + 1) * stride])
        rows.append(b"".join(row[x : x + BYTES_PER_PIXEL] for x in columns))
    return small, b"".join(rows)


def alpha_bounds(data: Buffer, extent: Extent) -> Bounds | None:
    """The smallest rectangle holding every pixel with a non-zero alpha, or None."""
    check_size(data, extent)
    view = memoryview(data)
    stride = extent.width * BYTES_PER_PIXEL
    left, right, top, bottom = extent.width, -1, -1, -1
    for row in range(extent.height):
        alpha = bytes(view[row * stride + 3 : (row + 1) * stride : 4])
        leading = len(alpha) - len(alpha.lstrip(b"\0"))
        if leading == len(alpha):
            continue
        trailing = len(alpha) - len(alpha.rstrip(b"\0"))
        left = min(left, leading)
        right = max(right, len(alpha) - trailing)
        top = row if top < 0 else top
        bottom = row + 1
    if top < 0:
        return None
    return Bounds(left, top, right - left, bottom - top)
