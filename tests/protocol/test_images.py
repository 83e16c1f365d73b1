"""protocol.images: references, binary frames, splitting and reassembly."""

from __future__ import annotations

import json
import mmap
import struct
import tracemalloc

import pytest

from protocol import images
from protocol.errors import BadImage, InvalidField, LimitExceeded
from protocol.images import (
    MAX_HEADER_BYTES,
    ImageAssembler,
    ImageRef,
    PixelFormat,
    allocate_image_buffer,
    max_png_size,
    pack_chunk,
    split_image,
    unpack_chunk,
)
from protocol.limits import DEFAULT_LIMITS, Limits

MIB = 1 << 20
SMALL = Limits(max_chunk_bytes=100, max_image_side=64, max_image_pixels=1000)


def frame_with_header(header: bytes, payload: bytes = b"x") -> bytes:
    return struct.pack(">I", len(header)) + header + payload


# -- references -------------------------------------------------------------------


def test_pixel_formats_travel_as_lowercase() -> None:
    """The three formats of the doc, raw ones flagged."""
    assert [f.value for f in PixelFormat] == ["bgra8", "rgba8", "png"]
    assert [f.is_raw for f in PixelFormat] == [True, True, False]


def test_a_raw_reference_computes_its_size() -> None:
    """width × height × 4 bytes."""
    ref = ImageRef.raw("a", 1200, 900, PixelFormat.BGRA8)
    assert ref == ImageRef("a", 1200, 900, PixelFormat.BGRA8, 4_320_000)
    ref.check(DEFAULT_LIMITS)


def test_a_png_reference_needs_its_size() -> None:
    """A PNG's size does not follow from its dimensions."""
    with pytest.raises(InvalidField, match=r"^image 'a': png has no size of its own, give it$"):
        ImageRef.raw("a", 2, 2, PixelFormat.PNG)


def test_the_png_bound_is_twice_raw_plus_a_mib() -> None:
    """Room for an uncompressed 16-bit PNG and its metadata, no more."""
    assert max_png_size(10, 10) == 800 + MIB
    ImageRef("p", 10, 10, PixelFormat.PNG, 800 + MIB).check(DEFAULT_LIMITS)


@pytest.mark.parametrize(
    ("ref", "error", "message"),
    [
        (
            ImageRef("", 1, 1, PixelFormat.RGBA8, 4),
            InvalidField,
            "image id: expected 1..256 characters",
        ),
        (
            ImageRef("a" * 257, 1, 1, PixelFormat.RGBA8, 4),
            InvalidField,
            "image id: expected 1..256 characters",
        ),
        (
            ImageRef("a", 0, 1, PixelFormat.RGBA8, 0),
            InvalidField,
            "image 'a': width 0 is not a positive integer",
        ),
        (
            ImageRef("a", 1, True, PixelFormat.RGBA8, 4),
            InvalidField,
            "image 'a': height true is not a positive integer",
        ),
        (
            ImageRef("a", 65, 1, PixelFormat.RGBA8, 260),
            LimitExceeded,
            "image 'a': width 65 exceeds the limit of 64",
        ),
        (
            ImageRef("a", 1, 65, PixelFormat.RGBA8, 260),
            LimitExceeded,
            "image 'a': height 65 exceeds the limit of 64",
        ),
        (
            ImageRef("a", 40, 30, PixelFormat.BGRA8, 4800),
            LimitExceeded,
            "image 'a': 40x30 is 1200 pixels, over the limit of 1000",
        ),
        (
            ImageRef("a", 2, 3, PixelFormat.BGRA8, 25),
            InvalidField,
            "image 'a': size 25 does not match 2x3 bgra8 (24 bytes)",
        ),
        (
            ImageRef("a", 2, 3, PixelFormat.RGBA8, 1.5),
            InvalidField,
            "image 'a': size 1.5 is not an integer",
        ),
        (
            ImageRef("a", 2, 3, PixelFormat.PNG, 0),
            InvalidField,
            "image 'a': size 0 is not a positive integer",
        ),
        (
            ImageRef("a", 2, 3, PixelFormat.PNG, 48 + MIB + 1),
            LimitExceeded,
            f"image 'a': png of {48 + MIB + 1} bytes exceeds {48 + MIB} for 2x3",
        ),
    ],
)
def test_a_reference_is_checked_before_any_byte(
    ref: ImageRef, error: type[Exception], message: str
) -> None:
    """Each way a reference can be wrong, with its code and exact message."""
    with pytest.raises(error) as caught:
        ref.check(SMALL)
    assert str(caught.value) == message


# -- frames -----------------------------------------------------------------------


def test_a_frame_is_length_header_payload() -> None:
    """4-byte big-endian length, compact UTF-8 JSON header, then the payload."""
    frame = pack_chunk("j1/fg", 4096, b"\x01\x02")
    header = b'{"image":"j1/fg","offset":4096}'
    assert frame == struct.pack(">I", len(header)) + header + b"\x01\x02"


def test_unpack_returns_a_view_into_the_frame() -> None:
    """The payload is not copied."""
    frame = pack_chunk("é/1", 7, b"abc")
    image_id, offset, payload = unpack_chunk(frame)
    assert (image_id, offset, bytes(payload)) == ("é/1", 7, b"abc")
    assert payload.obj is frame


def test_pack_refuses_a_negative_offset_or_a_huge_header() -> None:
    """Programming errors, caught where the frame is built."""
    with pytest.raises(ValueError, match="offset must be a non-negative integer, got -1"):
        pack_chunk("a", -1, b"x")
    with pytest.raises(ValueError, match="binary frame header of 3023 bytes exceeds 2048"):
        pack_chunk("a" * 3000, 0, b"x")


@pytest.mark.parametrize(
    ("frame", "message"),
    [
        (b"", "binary frame of 0 bytes is shorter than its length prefix"),
        (b"\x00\x00\x01", "binary frame of 3 bytes is shorter than its length prefix"),
        (
            b"\x7f\xff\xff\xff{",
            f"binary frame header of 2147483647 bytes exceeds {MAX_HEADER_BYTES}",
        ),
        (
            b"\x00\x00\x08\x01" + b"{" * 10,
            f"binary frame header of 2049 bytes exceeds {MAX_HEADER_BYTES}",
        ),
        (b"\x00\x00\x00\x10{}", "binary frame header of 16 bytes overruns the frame of 6 bytes"),
        (frame_with_header(b"\xff\xfe"), "binary frame header is not UTF-8"),
        (
            frame_with_header(b"{"),
            "binary frame header is not valid JSON: "
            "expecting property name enclosed in double quotes: line 1 column 2 (char 1)",
        ),
        (frame_with_header(b"[]"), "binary frame header: expected an object, got a list"),
        (frame_with_header(b'{"offset":0}'), "binary frame header: missing field 'image'"),
        (frame_with_header(b'{"image":"a"}'), "binary frame header: missing field 'offset'"),
        (
            frame_with_header(b'{"image":"","offset":0}'),
            "binary frame header: image: expected an image id, got ''",
        ),
        (
            frame_with_header(b'{"image":5,"offset":0}'),
            "binary frame header: image: expected an image id, got 5",
        ),
        (
            frame_with_header(b'{"image":"\\ud800","offset":0}'),
            "binary frame header: image: expected an image id, got '\\ud800'",
        ),
        (
            frame_with_header(b'{"image":"a","offset":-1}'),
            "binary frame header: offset: expected a non-negative integer, got -1",
        ),
        (
            frame_with_header(b'{"image":"a","offset":true}'),
            "binary frame header: offset: expected a non-negative integer, got true",
        ),
        (
            frame_with_header(b'{"image":"a","offset":1.0}'),
            "binary frame header: offset: expected a non-negative integer, got 1.0",
        ),
        (
            frame_with_header(b'{"image":"a","offset":0,"x":1}'),
            "binary frame header: unknown field 'x'",
        ),
    ],
)
def test_a_malformed_frame_is_a_bad_image(frame: bytes, message: str) -> None:
    """Each malformation, named; the header length is checked before the header is read."""
    with pytest.raises(BadImage) as caught:
        unpack_chunk(frame)
    assert str(caught.value) == message


def test_a_newer_peer_may_add_header_fields() -> None:
    """Unknown header fields are ignored when asked."""
    frame = frame_with_header(b'{"image":"a","offset":0,"crc":1}', b"zz")
    assert unpack_chunk(frame, allow_unknown_fields=True)[:2] == ("a", 0)


# -- splitting --------------------------------------------------------------------


def test_a_64_mib_image_splits_into_16_frames_and_back() -> None:
    """4 MiB frames at 4 MiB offsets; slicing copies nothing, reassembly writes in place."""
    data = bytes(range(256)) * (64 * MIB // 256)
    ref = ImageRef("big", 4096, 4096, PixelFormat.BGRA8, len(data))
    tracemalloc.start()
    try:
        frames = split_image("big", data, DEFAULT_LIMITS.max_chunk_bytes)
        split_peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.reset_peak()
        assembler = ImageAssembler(DEFAULT_LIMITS, 64 * MIB)
        assembler.expect(ref)
        results = [assembler.feed(frame) for frame in frames]
        assemble_peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert len(frames) == 16
    assert [unpack_chunk(f)[1] for f in frames] == [i * 4 * MIB for i in range(16)]
    assert all(len(unpack_chunk(f)[2]) == 4 * MIB for f in frames)
    # the frames themselves and no slice copies (bytes slicing would add 4 MiB)
    assert split_peak < 64 * MIB + MIB
    # the frames plus at most one buffer (concatenation would need twice the image);
    # on Linux the buffer is a mapping, which tracemalloc does not see
    assert assemble_peak < 2 * 64 * MIB + MIB
    assert results[:-1] == [None] * 15
    done = results[-1]
    assert done is not None and done[0] == ref and done[1] == data
    assert isinstance(done[1], memoryview) and not done[1].readonly
    assert assembler.pending_ids == () and assembler.pending_bytes == 0


def test_image_buffers_fall_back_to_bytearrays(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without MAP_POPULATE (Windows, macOS), or when mmap refuses, a plain bytearray."""
    monkeypatch.setattr(images, "_PREFAULT_FLAGS", None)
    assert isinstance(allocate_image_buffer(4 * MIB).obj, bytearray)
    monkeypatch.undo()

    def refuse(*args: object, **kwargs: object) -> None:
        raise OSError("not here")

    monkeypatch.setattr(images.mmap, "mmap", refuse)
    buffer = allocate_image_buffer(4 * MIB)
    assert isinstance(buffer.obj, bytearray) and len(buffer) == 4 * MIB


@pytest.mark.parametrize("size", [1, 4096, MIB - 1, MIB, 64 * MIB + 3])
def test_image_buffers_are_zeroed_writable_and_sized(size: int) -> None:
    """Small buffers are bytearrays; big ones are pre-faulted mappings where Linux has them."""
    buffer = allocate_image_buffer(size)
    assert isinstance(buffer, memoryview) and not buffer.readonly
    assert len(buffer) == size and buffer.format == "B"
    assert bytes(buffer[:16]) == bytes(min(size, 16)) and buffer[-1] == 0
    buffer[-1] = 7
    assert buffer[-1] == 7
    big_mapping = size >= MIB and hasattr(mmap, "MAP_POPULATE")
    assert isinstance(buffer.obj, mmap.mmap if big_mapping else bytearray)


def test_the_last_frame_holds_the_rest() -> None:
    """10 bytes in 4-byte frames: 4, 4, 2."""
    frames = split_image("a", bytearray(range(10)), 4)
    assert [bytes(unpack_chunk(f)[2]) for f in frames] == [b"\0\1\2\3", b"\4\5\6\7", b"\x08\x09"]


def test_an_empty_image_cannot_be_split() -> None:
    """An image has at least one pixel."""
    with pytest.raises(BadImage, match=r"^image 'a' is empty$"):
        split_image("a", b"", 4)
    with pytest.raises(ValueError, match="max_chunk_bytes must be positive, got 0"):
        split_image("a", b"x", 0)


# -- assembly ---------------------------------------------------------------------


def make_assembler(max_pending_bytes: int = 10_000) -> ImageAssembler:
    assembler = ImageAssembler(SMALL, max_pending_bytes)
    assembler.expect(ImageRef.raw("a", 10, 5, PixelFormat.RGBA8))  # 200 bytes
    assembler.expect(ImageRef.raw("b", 1, 1, PixelFormat.RGBA8))  # 4 bytes
    return assembler


def test_images_assemble_independently() -> None:
    """Frames of two images may interleave; each completes on its own."""
    assembler = make_assembler()
    assert assembler.pending_ids == ("a", "b") and assembler.pending_bytes == 204
    assert assembler.feed(pack_chunk("a", 0, b"1" * 100)) is None
    assert assembler.feed(pack_chunk("b", 0, b"2222")) == (
        ImageRef.raw("b", 1, 1, PixelFormat.RGBA8),
        bytearray(b"2222"),
    )
    done = assembler.feed(pack_chunk("a", 100, b"3" * 100))
    assert done is not None and done[1] == b"1" * 100 + b"3" * 100
    assert assembler.pending_ids == () and assembler.pending_bytes == 0


@pytest.mark.parametrize(
    ("frame", "message"),
    [
        (pack_chunk("zz", 0, b"x"), "image 'zz' was not announced"),
        (pack_chunk("a", 4, b"x"), "image 'a': frame at offset 4, expected 0"),
        (pack_chunk("a", 0, b""), "image 'a': empty frame at offset 0"),
        (pack_chunk("a", 0, b"x" * 101), "image 'a': frame of 101 bytes exceeds the limit of 100"),
        (pack_chunk("b", 0, b"x" * 5), "image 'b': frame ends at byte 5, beyond its size 4"),
    ],
)
def test_a_frame_that_does_not_fit_is_a_bad_image(frame: bytes, message: str) -> None:
    """Unknown id, wrong offset, empty, oversized, beyond the size: the image is dropped."""
    assembler = make_assembler()
    with pytest.raises(BadImage) as caught:
        assembler.feed(frame)
    assert str(caught.value) == message
    image_id = unpack_chunk(frame)[0]
    assert image_id not in assembler.pending_ids
    assert len(assembler.pending_ids) == (2 if image_id == "zz" else 1)


def test_a_malformed_frame_drops_nothing() -> None:
    """Without a readable id no image can be blamed."""
    assembler = make_assembler()
    with pytest.raises(BadImage):
        assembler.feed(b"\0\0\0\1{")
    assert assembler.pending_ids == ("a", "b")


def test_an_image_id_is_announced_once() -> None:
    """A second announcement of a pending id is a bad image."""
    assembler = make_assembler()
    with pytest.raises(BadImage, match=r"^image 'a' is already pending$"):
        assembler.expect(ImageRef.raw("a", 1, 1, PixelFormat.RGBA8))


def test_pending_bytes_are_bounded_at_announcement() -> None:
    """An image that would overflow the bound is refused before any frame; discard frees."""
    assembler = make_assembler(max_pending_bytes=300)
    big = ImageRef.raw("c", 5, 5, PixelFormat.RGBA8)  # 100 bytes, 96 left
    with pytest.raises(LimitExceeded) as caught:
        assembler.expect(big)
    assert (
        str(caught.value) == "image 'c' of 100 bytes exceeds the 96 bytes left for pending images"
    )
    assembler.discard("a")
    assembler.discard("a")  # twice is harmless
    assembler.expect(big)
    assert assembler.pending_ids == ("b", "c") and assembler.pending_bytes == 104


def test_an_announced_image_is_checked_against_the_limits() -> None:
    """expect() runs ImageRef.check."""
    with pytest.raises(LimitExceeded, match=r"^image 'x': width 100 exceeds the limit of 64$"):
        make_assembler().expect(ImageRef.raw("x", 100, 1, PixelFormat.RGBA8))


def test_unknown_header_fields_follow_the_assembler_setting() -> None:
    """A newer-minor peer's header fields are accepted once allowed (a malformed header
    names no image, so "b" is still pending after the refusal)."""
    assembler = make_assembler()
    frame = frame_with_header(json.dumps({"image": "b", "offset": 0, "x": 1}).encode(), b"abcd")
    with pytest.raises(BadImage, match="unknown field 'x'"):
        assembler.feed(frame)
    assembler.allow_unknown_fields = True
    assert assembler.feed(frame) is not None


def test_without_prefault_big_buffers_are_lazy_mappings() -> None:
    """A UI thread's buffer: mapped, zero, and no page touched until written."""
    buffer = allocate_image_buffer(64 * MIB, prefault=False)
    assert isinstance(buffer.obj, mmap.mmap) and not buffer.readonly
    assert len(buffer) == 64 * MIB and buffer[0] == 0 and buffer[-1] == 0
    buffer[12345] = 9
    assert buffer[12345] == 9
    assert isinstance(allocate_image_buffer(4096, prefault=False).obj, bytearray)
