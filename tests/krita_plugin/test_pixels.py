"""BGRA bytes: size checks, crops, pads, swaps and alpha bounds against numpy."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from krita_plugin.geometry import Bounds, Extent
from krita_plugin.pixels import (
    alpha_bounds,
    alpha_strip,
    check_size,
    crop,
    has_visible_pixels,
    lazy_buffer,
    pad,
    strips,
    swap_red_blue,
    thumbnail,
    transparent,
)


def image(width: int, height: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 4), dtype=np.uint8)


def test_check_size_names_the_sizes() -> None:
    check_size(bytes(4 * 6), Extent(2, 3))
    with pytest.raises(ValueError, match="20 bytes for 2x3 pixels, expected 24"):
        check_size(bytes(20), Extent(2, 3))
    with pytest.raises(ValueError):
        check_size(b"", Extent(0, 3))


def test_transparent_is_all_zero() -> None:
    assert transparent(Extent(3, 2)) == bytes(24)


@given(
    st.integers(1, 12),
    st.integers(1, 12),
    st.data(),
)
def test_crop_matches_numpy(width: int, height: int, data: st.DataObject) -> None:
    x = data.draw(st.integers(0, width - 1))
    y = data.draw(st.integers(0, height - 1))
    w = data.draw(st.integers(1, width - x))
    h = data.draw(st.integers(1, height - y))
    pixels = image(width, height)
    got = crop(pixels.tobytes(), Extent(width, height), Bounds(x, y, w, h))
    assert got == pixels[y : y + h, x : x + w].tobytes()


def test_crop_refuses_bounds_outside_the_image() -> None:
    with pytest.raises(ValueError, match="not inside"):
        crop(bytes(4 * 4 * 4), Extent(4, 4), Bounds(2, 2, 4, 1))


@given(
    st.integers(1, 8),
    st.integers(1, 8),
    st.integers(-6, 10),
    st.integers(-6, 10),
)
def test_pad_places_an_image_on_a_transparent_canvas(w: int, h: int, x: int, y: int) -> None:
    pixels = image(w, h, seed=1)
    canvas = np.zeros((9, 10, 4), np.uint8)
    for row in range(h):
        for column in range(w):
            if 0 <= y + row < 9 and 0 <= x + column < 10:
                canvas[y + row, x + column] = pixels[row, column]
    assert pad(pixels.tobytes(), Bounds(x, y, w, h), Extent(10, 9)) == canvas.tobytes()


def test_swap_red_blue_swaps_channels_zero_and_two() -> None:
    assert swap_red_blue(bytes((1, 2, 3, 4, 5, 6, 7, 8))) == bytearray((3, 2, 1, 4, 7, 6, 5, 8))
    pixels = image(5, 3, seed=2)
    assert swap_red_blue(pixels.tobytes()) == pixels[..., [2, 1, 0, 3]].tobytes()
    with pytest.raises(ValueError, match="whole number of pixels"):
        swap_red_blue(bytes(6))


def test_has_visible_pixels_looks_at_alpha_only() -> None:
    assert not has_visible_pixels(bytes((255, 255, 255, 0)) * 10)
    assert has_visible_pixels(bytes((0, 0, 0, 0)) * 9 + bytes((0, 0, 0, 1)))


def test_alpha_bounds_of_empty_and_partial_images() -> None:
    pixels = np.zeros((6, 8, 4), np.uint8)
    assert alpha_bounds(pixels.tobytes(), Extent(8, 6)) is None
    pixels[1:4, 2:7, 3] = 9
    pixels[5, 0, 3] = 1
    pixels[2, 4, :3] = 255  # colour without alpha does not count
    assert alpha_bounds(pixels.tobytes(), Extent(8, 6)) == Bounds(0, 1, 7, 5)


@given(st.integers(1, 10), st.integers(1, 10), st.integers(0, 2**32 - 1))
def test_alpha_bounds_matches_numpy(width: int, height: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    pixels = np.zeros((height, width, 4), np.uint8)
    pixels[..., 3] = rng.integers(0, 2, (height, width)) * rng.integers(1, 256, (height, width))
    rows, columns = np.nonzero(pixels[..., 3])
    expected = (
        None
        if rows.size == 0
        else Bounds(
            int(columns.min()),
            int(rows.min()),
            int(columns.max() - columns.min() + 1),
            int(rows.max() - rows.min() + 1),
        )
    )
    assert alpha_bounds(pixels.tobytes(), Extent(width, height)) == expected


@pytest.mark.parametrize(
    ("width", "height", "strip_bytes"), [(7, 5, 28), (7, 5, 60), (3, 1, 4), (100, 9, 10**9)]
)
def test_strips_cover_every_row_once_within_the_size(
    width: int, height: int, strip_bytes: int
) -> None:
    ranges = strips(Extent(width, height), strip_bytes)
    rows = [row for top, count in ranges for row in range(top, top + count)]
    assert rows == list(range(height))
    assert all(count * width * 4 <= max(strip_bytes, width * 4) for _, count in ranges)


def test_a_thumbnail_samples_the_nearest_pixels() -> None:
    extent = Extent(40, 20)
    array = np.zeros((20, 40, 4), dtype=np.uint8)
    array[:, :20] = (255, 0, 0, 255)  # left half blue (B first), right half clear
    small, data = thumbnail(array.tobytes(), extent, 10)
    assert small == Extent(10, 5)
    result = np.frombuffer(data, dtype=np.uint8).reshape(5, 10, 4)
    assert (result[:, :5] == (255, 0, 0, 255)).all() and (result[:, 5:] == 0).all()
    with pytest.raises(ValueError):
        thumbnail(bytes(12), extent, 10)


@pytest.mark.parametrize("size", [16, (1 << 20) + 4])
def test_a_lazy_buffer_is_zeroed_and_writable(size: int) -> None:
    buffer = lazy_buffer(size)
    assert len(buffer) == size and not buffer.readonly and bytes(buffer[-4:]) == bytes(4)
    buffer[-1] = 5
    assert buffer[-1] == 5


def test_an_alpha_strip_is_bgra_with_the_selection_as_alpha() -> None:
    selection = bytes([0, 128, 255, 7])
    assert alpha_strip(selection, 1, 3) == bytearray([0, 0, 0, 128, 0, 0, 0, 255])
