"""Images on the wire: pixel formats, image references, binary frames and their assembly.

An image is announced in a text message by an `ImageRef`, then sent as binary frames::

    [4 bytes: header length N, big-endian][N bytes: UTF-8 JSON header][payload]

with the header `{"image": "<id>", "offset": <byte offset>}`. Lengths are checked
before what they bound is read: the header length before the header is parsed, an
image's announced size against the limits before any of its frames is accepted.

The protocol never converts pixels: raw formats are `width × height × 4` bytes in the
order their name says, PNG is a file the caller encodes and decodes.
"""

from __future__ import annotations

import json
import mmap
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from enum import Enum

from .errors import BadImage, InvalidField, LimitExceeded, describe
from .limits import Limits

__all__ = [
    "MAX_HEADER_BYTES",
    "MAX_IMAGE_ID_CHARS",
    "Buffer",
    "ImageAssembler",
    "ImageRef",
    "PixelFormat",
    "allocate_image_buffer",
    "iter_image_chunks",
    "max_png_size",
    "pack_chunk",
    "split_image",
    "unpack_chunk",
]

Buffer = bytes | bytearray | memoryview
"""Image bytes as a caller holds them (sliced through a memoryview, never copied whole)."""

MAX_IMAGE_ID_CHARS = 256
"""Characters of an image id (a job id is at most 128, so `<job>/preview/<step>` fits)."""

MAX_HEADER_BYTES = 2048
"""Bytes of a binary frame's JSON header: room for a 256-character id even when every
character is escaped as `\\u00XX` (6 bytes), and the offset."""

_LENGTH = struct.Struct(">I")
_MIB = 1 << 20


class PixelFormat(str, Enum):
    """How an image's bytes are laid out."""

    BGRA8 = "bgra8"
    """Width × height × 4 bytes, B G R A, 8-bit straight alpha (Krita's `pixelData`)."""
    RGBA8 = "rgba8"
    """The same in R G B A order."""
    PNG = "png"
    """A PNG file (RGBA), for slow links."""

    @property
    def is_raw(self) -> bool:
        """Whether the size follows from the dimensions (4 bytes per pixel)."""
        return self is not PixelFormat.PNG


def max_png_size(width: int, height: int) -> int:
    """The largest PNG accepted for an image: twice its raw RGBA8 size plus 1 MiB.

    Twice the raw size holds even an uncompressed 16-bit PNG with its filter bytes; the
    extra MiB holds the chunk framing and metadata such as an ICC profile.
    """
    return 2 * width * height * 4 + _MIB


@dataclass(frozen=True)
class ImageRef:
    """An announced image: the id its binary frames carry, its dimensions and byte count.

    Attributes:
        id: unique among the images a connection has in flight, at most 256 characters.
        width / height: pixels.
        format: the byte layout.
        size: bytes in all; width × height × 4 for the raw formats.
    """

    id: str
    width: int
    height: int
    format: PixelFormat
    size: int

    @classmethod
    def raw(cls, id: str, width: int, height: int, format: PixelFormat) -> ImageRef:
        """The reference of a raw image, its size computed from its dimensions.

        Raises:
            InvalidField: `format` is PNG, whose size the dimensions do not give.
        """
        if not PixelFormat(format).is_raw:
            raise InvalidField(f"image '{id}': png has no size of its own, give it")
        return cls(id, width, height, PixelFormat(format), width * height * 4)

    def check(self, limits: Limits) -> None:
        """Check the reference against itself and the limits, before any byte is accepted.

        Args:
            limits: the limits of the connection.

        Raises:
            InvalidField: an empty or over-long id, a dimension below 1, a raw size that
                is not width × height × 4, or a PNG size below 1.
            LimitExceeded: a side over `max_image_side`, an area over `max_image_pixels`,
                or a PNG over `max_png_size`.
        """
        if not isinstance(self.id, str) or not 1 <= len(self.id) <= MAX_IMAGE_ID_CHARS:
            raise InvalidField(f"image id: expected 1..{MAX_IMAGE_ID_CHARS} characters")
        name = f"image '{self.id}'"
        for side, value in (("width", self.width), ("height", self.height)):
            if type(value) is not int or value < 1:
                raise InvalidField(f"{name}: {side} {describe(value)} is not a positive integer")
            if value > limits.max_image_side:
                raise LimitExceeded(
                    f"{name}: {side} {value} exceeds the limit of {limits.max_image_side}"
                )
        pixels = self.width * self.height
        if pixels > limits.max_image_pixels:
            raise LimitExceeded(
                f"{name}: {self.width}x{self.height} is {pixels} pixels, "
                f"over the limit of {limits.max_image_pixels}"
            )
        if type(self.size) is not int:
            raise InvalidField(f"{name}: size {describe(self.size)} is not an integer")
        if PixelFormat(self.format).is_raw:
            if self.size != pixels * 4:
                raise InvalidField(
                    f"{name}: size {self.size} does not match {self.width}x{self.height} "
                    f"{self.format.value} ({pixels * 4} bytes)"
                )
        elif self.size < 1:
            raise InvalidField(f"{name}: size {self.size} is not a positive integer")
        elif self.size > max_png_size(self.width, self.height):
            raise LimitExceeded(
                f"{name}: png of {self.size} bytes exceeds "
                f"{max_png_size(self.width, self.height)} for {self.width}x{self.height}"
            )


def pack_chunk(image_id: str, offset: int, payload: bytes | bytearray | memoryview) -> bytes:
    """One binary frame: the header length, the JSON header, the payload.

    Args:
        image_id: the id of the announced image.
        offset: where the payload starts in the image, in bytes.
        payload: the bytes; copied once, into the frame.

    Returns:
        The frame.

    Raises:
        ValueError: an offset below 0 or a header over `MAX_HEADER_BYTES`.
    """
    if type(offset) is not int or offset < 0:
        raise ValueError(f"offset must be a non-negative integer, got {offset!r}")
    header = json.dumps(
        {"image": image_id, "offset": offset}, separators=(",", ":"), ensure_ascii=False
    ).encode("utf-8")
    if len(header) > MAX_HEADER_BYTES:
        raise ValueError(f"binary frame header of {len(header)} bytes exceeds {MAX_HEADER_BYTES}")
    return b"".join((_LENGTH.pack(len(header)), header, payload))


def unpack_chunk(
    frame: bytes | bytearray | memoryview, *, allow_unknown_fields: bool = False
) -> tuple[str, int, memoryview]:
    """Read one binary frame, the header length checked before the header is parsed.

    Args:
        frame: the received frame.
        allow_unknown_fields: ignore header fields other than `image` and `offset` (a
            peer of a newer minor version).

    Returns:
        The image id, the offset, and the payload as a view into `frame` (no copy).

    Raises:
        BadImage: a frame too short for its header, a header too long, not UTF-8, not
            JSON, not an object, or without a valid `image` and `offset`.
    """
    view = memoryview(frame).cast("B")
    if len(view) < _LENGTH.size:
        raise BadImage(f"binary frame of {len(view)} bytes is shorter than its length prefix")
    (length,) = _LENGTH.unpack_from(view)
    if length > MAX_HEADER_BYTES:
        raise BadImage(f"binary frame header of {length} bytes exceeds {MAX_HEADER_BYTES}")
    end = _LENGTH.size + length
    if end > len(view):
        raise BadImage(
            f"binary frame header of {length} bytes overruns the frame of {len(view)} bytes"
        )
    try:
        header = json.loads(bytes(view[_LENGTH.size : end]).decode("utf-8"))
    except UnicodeDecodeError:
        raise BadImage("binary frame header is not UTF-8") from None
    except (ValueError, RecursionError) as exc:
        reason = str(exc)
        raise BadImage(
            f"binary frame header is not valid JSON: {reason[:1].lower()}{reason[1:]}"
        ) from None
    if not isinstance(header, dict):
        raise BadImage(f"binary frame header: expected an object, got {describe(header)}")
    for key in ("image", "offset"):
        if key not in header:
            raise BadImage(f"binary frame header: missing field '{key}'")
    image_id, offset = header["image"], header["offset"]
    if not _is_image_id(image_id):
        raise BadImage(
            f"binary frame header: image: expected an image id, got {describe(image_id)}"
        )
    if type(offset) is not int or offset < 0:
        raise BadImage(
            f"binary frame header: offset: expected a non-negative integer, got {describe(offset)}"
        )
    if not allow_unknown_fields:
        for key in header:
            if key not in ("image", "offset"):
                raise BadImage(f"binary frame header: unknown field {describe(key)}")
    return image_id, offset, view[end:]


def _is_image_id(value: object) -> bool:
    if not isinstance(value, str) or not 1 <= len(value) <= MAX_IMAGE_ID_CHARS:
        return False
    try:
        value.encode("utf-8")  # no lone surrogates: the id is echoed in error messages
    except UnicodeEncodeError:
        return False
    return True


def split_image(
    image_id: str, data: bytes | bytearray | memoryview, max_chunk_bytes: int
) -> list[bytes]:
    """The binary frames of one image, in order, each with at most `max_chunk_bytes`.

    The payloads are sliced from `data` through a memoryview, so each byte is copied
    once, into its frame.

    Args:
        image_id: the id of the announced image.
        data: its bytes.
        max_chunk_bytes: the payload limit of one frame (`Limits.max_chunk_bytes`).

    Returns:
        The frames; offsets 0, max_chunk_bytes, 2 × max_chunk_bytes, ….

    Raises:
        BadImage: `data` is empty (an image has at least one pixel).
        ValueError: `max_chunk_bytes` below 1.
    """
    return list(iter_image_chunks(image_id, data, max_chunk_bytes))


def iter_image_chunks(
    image_id: str, data: bytes | bytearray | memoryview, max_chunk_bytes: int
) -> Iterator[bytes]:
    """`split_image`, a frame at a time (each is made when it is taken); the arguments
    are checked at once."""
    if max_chunk_bytes < 1:
        raise ValueError(f"max_chunk_bytes must be positive, got {max_chunk_bytes}")
    view = memoryview(data).cast("B")
    if len(view) == 0:
        raise BadImage(f"image '{image_id}' is empty")
    return (
        pack_chunk(image_id, offset, view[offset : offset + max_chunk_bytes])
        for offset in range(0, len(view), max_chunk_bytes)
    )


_PREFAULT_FROM_BYTES = 1 << 20
_PREFAULT_FLAGS = getattr(mmap, "MAP_POPULATE", None)  # Linux only


def allocate_image_buffer(size: int, prefault: bool = True) -> memoryview:
    """A zeroed, writable buffer of `size` bytes for an image about to arrive.

    A buffer of 1 MiB or more is an anonymous mapping. With `prefault` (on Linux) its
    pages are populated when it is made: a fresh 64 MiB bytearray takes one page fault
    per 4 KiB at its first write, which cost ten times the copy itself on the machine
    measured (docs/benchmarks.md). Without, its pages are faulted in as each frame is
    written into it, a little at a time: what a client on a UI thread wants, where
    populating or zeroing 64 MiB at once held the thread for 170 ms. Small images, and
    a system that refuses the mapping, get a bytearray. Either way the buffer is freed
    when the last view of it goes.
    """
    if size >= _PREFAULT_FROM_BYTES:
        try:
            if not prefault:
                return memoryview(mmap.mmap(-1, size))  # zero pages, mapped on first write
            if _PREFAULT_FLAGS is not None:
                flags = mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | _PREFAULT_FLAGS
                return memoryview(mmap.mmap(-1, size, flags=flags))
        except OSError:  # a kernel or sandbox that refuses the mapping: the plain way
            pass
    return memoryview(bytearray(size))


class _Pending:
    __slots__ = ("buffer", "received", "ref")

    def __init__(self, ref: ImageRef) -> None:
        self.ref = ref
        self.buffer: memoryview | None = None  # allocated at the first frame
        self.received = 0


class ImageAssembler:
    """Collects the frames of announced images into whole images.

    Each image's size is reserved against `max_pending_bytes` when it is announced; its
    buffer (`allocate_image_buffer`) is allocated at its first frame and every frame is
    written into it in place. A complete image is handed over as a writable memoryview
    of that buffer, not copied. Any bad frame drops its image.

    Args:
        limits: checked against every announced reference and every frame.
        max_pending_bytes: bytes all incomplete images may hold together.
        prefault: populate each image's buffer at once (`allocate_image_buffer`).

    Attributes:
        allow_unknown_fields: ignore unknown frame header fields (a newer-minor peer).
    """

    def __init__(self, limits: Limits, max_pending_bytes: int, prefault: bool = True) -> None:
        self.allow_unknown_fields = False
        self._prefault = prefault
        self._limits = limits
        self._max_pending_bytes = max_pending_bytes
        self._pending: dict[str, _Pending] = {}
        self._pending_bytes = 0

    @property
    def pending_ids(self) -> tuple[str, ...]:
        """The ids of announced, incomplete images, in announcement order."""
        return tuple(self._pending)

    @property
    def pending_bytes(self) -> int:
        """Bytes reserved by the incomplete images."""
        return self._pending_bytes

    def expect(self, ref: ImageRef) -> None:
        """Announce an image whose frames will follow.

        Raises:
            InvalidField / LimitExceeded: from `ref.check(limits)`.
            BadImage: an image of that id is already pending.
            LimitExceeded: the pending images would hold over `max_pending_bytes`.
        """
        ref.check(self._limits)
        if ref.id in self._pending:
            raise BadImage(f"image '{ref.id}' is already pending")
        left = self._max_pending_bytes - self._pending_bytes
        if ref.size > left:
            raise LimitExceeded(
                f"image '{ref.id}' of {ref.size} bytes exceeds the {left} bytes "
                "left for pending images"
            )
        self._pending[ref.id] = _Pending(ref)
        self._pending_bytes += ref.size

    def feed(self, frame: bytes | bytearray | memoryview) -> tuple[ImageRef, memoryview] | None:
        """Take one binary frame.

        Returns:
            The image's reference and bytes (a memoryview the caller now owns) when this
            frame completes it, else None.

        Raises:
            BadImage: a malformed frame (see `unpack_chunk`), or one `feed_chunk` refuses.
        """
        image_id, offset, payload = unpack_chunk(
            frame, allow_unknown_fields=self.allow_unknown_fields
        )
        return self.feed_chunk(image_id, offset, payload)

    def feed_chunk(
        self, image_id: str, offset: int, payload: bytes | bytearray | memoryview
    ) -> tuple[ImageRef, memoryview] | None:
        """Take the parts of one unpacked binary frame (see `feed`).

        Raises:
            BadImage: an id not announced, an empty payload or one over
                `max_chunk_bytes`, an offset other than the bytes received so far, or
                bytes beyond the image's size. The image named is dropped.
        """
        pending = self._pending.get(image_id)
        if pending is None:
            raise BadImage(f"image '{image_id}' was not announced")
        length = len(payload)
        try:
            self._check_frame(pending, offset, length)
        except BadImage:
            self.discard(image_id)
            raise
        if pending.buffer is None:
            pending.buffer = allocate_image_buffer(pending.ref.size, self._prefault)
        end = offset + length
        pending.buffer[offset:end] = memoryview(payload).cast("B")
        pending.received = end
        if end < pending.ref.size:
            return None
        del self._pending[image_id]
        self._pending_bytes -= pending.ref.size
        return pending.ref, pending.buffer

    def discard(self, image_id: str) -> None:
        """Forget an incomplete image and release its bytes; unknown ids are ignored."""
        pending = self._pending.pop(image_id, None)
        if pending is not None:
            self._pending_bytes -= pending.ref.size

    def _check_frame(self, pending: _Pending, offset: int, length: int) -> None:
        name = f"image '{pending.ref.id}'"
        if length == 0:
            raise BadImage(f"{name}: empty frame at offset {offset}")
        if length > self._limits.max_chunk_bytes:
            raise BadImage(
                f"{name}: frame of {length} bytes exceeds the limit of "
                f"{self._limits.max_chunk_bytes}"
            )
        if offset != pending.received:
            raise BadImage(f"{name}: frame at offset {offset}, expected {pending.received}")
        if offset + length > pending.ref.size:
            raise BadImage(
                f"{name}: frame ends at byte {offset + length}, beyond its size {pending.ref.size}"
            )
