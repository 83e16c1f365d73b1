"""Generation sizes, the three resize modes and the original's colour conversions."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from backend.errors import InvalidRequest
from backend.methods.sizing import (
    composite_on_gray,
    fit_rgb,
    fit_rgba,
    generation_size,
    to_uint8,
)
from protocol.methods import ResizeMode

SD15_AREA = 512 * 512
SDXL_AREA = 1024 * 1024

RED = (255, 0, 0, 255)
GREEN = (0, 255, 0, 255)
BLUE = (0, 0, 255, 255)


def _opaque(height: int, width: int, colour: tuple[int, int, int, int]) -> np.ndarray:
    image = np.empty((height, width, 4), dtype=np.uint8)
    image[...] = colour
    return image


def _textured(height: int, width: int, seed: int = 0) -> np.ndarray:
    """An opaque image with structure at several scales (sinusoids and blocks)."""
    rows, columns = np.mgrid[0:height, 0:width].astype(np.float32)
    random = np.random.default_rng(seed)
    image = np.empty((height, width, 4), dtype=np.uint8)
    for channel in range(3):
        period_x, period_y = random.uniform(14, 40, size=2)
        wave = np.sin(2 * np.pi * columns / period_x) * np.cos(2 * np.pi * rows / period_y)
        blocks = ((rows // 23 + columns // 31 + channel) % 2) * 60
        image[..., channel] = np.clip(100 + 70 * wave + blocks, 0, 255)
    image[..., 3] = 255
    return image


def _reference_crop_and_resize(image: np.ndarray, mode: ResizeMode, height: int, width: int):
    """The original's crop_and_resize_image, written again with OpenCV (INTER_AREA / LANCZOS4)."""

    def resize(array: np.ndarray, new_width: int, new_height: int) -> np.ndarray:
        if array.shape[:2] == (new_height, new_width):
            return array
        shrinking = new_width * new_height < array.shape[0] * array.shape[1]
        interpolation = cv2.INTER_AREA if shrinking else cv2.INTER_LANCZOS4
        return cv2.resize(array, (new_width, new_height), interpolation=interpolation)

    if mode == ResizeMode.JUST_RESIZE:
        return resize(image, width, height)
    old_height, old_width = image.shape[:2]
    ratios = (height / old_height, width / old_width)
    if mode == ResizeMode.RESIZE_AND_FILL:
        scale = min(ratios)
        border = np.concatenate([image[0], image[-1], image[:, 0], image[:, -1]])
        result = np.tile(np.median(border, axis=0).astype(np.uint8), (height, width, 1))
        scaled = resize(image, round(old_width * scale), round(old_height * scale))
        top = (height - scaled.shape[0]) // 2
        left = (width - scaled.shape[1]) // 2
        result[top : top + scaled.shape[0], left : left + scaled.shape[1]] = scaled
        return result
    scale = max(ratios)
    scaled = resize(image, round(old_width * scale), round(old_height * scale))
    top = (scaled.shape[0] - height) // 2
    left = (scaled.shape[1] - width) // 2
    return scaled[top : top + height, left : left + width]


# generation_size


@pytest.mark.parametrize("size", [(512, 512), (64, 1024), (768, 512), (1216, 832)])
def test_generation_size_keeps_exact_multiples(size):
    assert generation_size(*size) == size


@pytest.mark.parametrize(
    ("size", "expected"),
    [
        ((100, 95), (128, 64)),  # 1.56 and 1.48 multiples round to 2 and 1
        ((96, 160), (128, 192)),  # halves round up
        ((95, 159), (64, 128)),
        ((1000, 700), (1024, 704)),
    ],
)
def test_generation_size_rounds_to_the_nearest_multiple(size, expected):
    assert generation_size(*size) == expected


@pytest.mark.parametrize("size", [(1, 1), (31, 20), (1, 95)])
def test_generation_size_gives_tiny_sides_one_multiple(size):
    assert generation_size(*size) == (64, 64)


@pytest.mark.parametrize(
    ("size", "native_area", "expected"),
    [
        ((3000, 2000), SD15_AREA, (576, 384)),
        ((2000, 3000), SD15_AREA, (384, 576)),
        ((1920, 1080), SD15_AREA, (704, 384)),
        ((1024, 1024), SD15_AREA, (512, 512)),
        ((100, 100), SD15_AREA, (512, 512)),
        ((4000, 1000), SD15_AREA, (1024, 256)),
        ((3000, 2000), SDXL_AREA, (1344, 896)),
        ((1920, 1080), SDXL_AREA, (1472, 832)),
        ((512, 512), SDXL_AREA, (1024, 1024)),
    ],
)
def test_generation_size_maps_to_the_native_area(size, native_area, expected):
    assert generation_size(*size, native_area=native_area) == expected


@pytest.mark.parametrize(
    ("native_area", "aspect_tolerance"), [(SD15_AREA, 0.06), (SDXL_AREA, 0.03)]
)
def test_generation_size_at_native_area_keeps_aspect_and_area_in_band(
    native_area, aspect_tolerance
):
    """Over aspects 1:4..4:1: |ln aspect error| under the tolerance, area within ±20 %."""
    for short in range(250, 1001, 3):
        for width, height in ((short, 1000), (1000, short), (short * 3, 3000)):
            out_width, out_height = generation_size(width, height, native_area=native_area)
            assert out_width % 64 == 0 and out_height % 64 == 0
            assert 0.8 <= out_width * out_height / native_area <= 1.2
            aspect_error = abs(math.log(out_width / out_height) - math.log(width / height))
            assert aspect_error < aspect_tolerance, (width, height, out_width, out_height)


def test_generation_size_honours_another_multiple():
    assert generation_size(100, 50, multiple=8) == (104, 48)
    assert generation_size(300, 200, native_area=64 * 64, multiple=8) == (72, 48)


@pytest.mark.parametrize(
    ("arguments", "field", "message"),
    [
        ({"width": 0, "height": 512}, "width", "width 0 is not a positive integer"),
        ({"width": 512, "height": -3}, "height", "height -3 is not a positive integer"),
        ({"width": 51.5, "height": 512}, "width", "width 51.5 is not a positive integer"),
        ({"width": True, "height": 512}, "width", "width True is not a positive integer"),
        ({"width": "512", "height": 512}, "width", "width '512' is not a positive integer"),
        (
            {"width": 512, "height": 512, "multiple": 0},
            "multiple",
            "multiple 0 is not a positive integer",
        ),
        (
            {"width": 512, "height": 512, "native_area": 1000},
            "native_area",
            "native_area 1000 is not a positive multiple of 4096",
        ),
        (
            {"width": 512, "height": 512, "native_area": 0},
            "native_area",
            "native_area 0 is not a positive multiple of 4096",
        ),
    ],
)
def test_generation_size_rejects_invalid_input(arguments, field, message):
    with pytest.raises(InvalidRequest) as caught:
        generation_size(**arguments)
    assert caught.value.field == field
    assert str(caught.value) == f"{field}: {message}"


# fit_rgba: geometry of the three modes


def test_just_resize_keeps_the_corners():
    image = np.empty((40, 60, 4), dtype=np.uint8)
    image[:20, :30] = RED
    image[:20, 30:] = GREEN
    image[20:, :30] = BLUE
    image[20:, 30:] = (255, 255, 0, 128)
    for width, height in ((100, 30), (24, 90), (60, 40)):
        result = fit_rgba(image, width, height, ResizeMode.JUST_RESIZE)
        assert result.shape == (height, width, 4)
        np.testing.assert_allclose(result[0, 0], RED, atol=1)
        np.testing.assert_allclose(result[0, -1], GREEN, atol=1)
        np.testing.assert_allclose(result[-1, 0], BLUE, atol=1)
        np.testing.assert_allclose(result[-1, -1], (255, 255, 0, 128), atol=1)


def test_crop_and_resize_cuts_the_long_side_equally():
    """300x100 to 64x64 scales by 0.64 and keeps source columns 100..200."""
    image = _opaque(100, 300, RED)
    image[:, 100:200] = GREEN
    result = fit_rgba(image, 64, 64, ResizeMode.CROP_AND_RESIZE)
    assert result.shape == (64, 64, 4)
    np.testing.assert_allclose(result.reshape(-1, 4), np.tile(GREEN, (64 * 64, 1)), atol=1)

    tall = _opaque(300, 100, RED)
    tall[100:200] = BLUE
    result = fit_rgba(tall, 64, 64, ResizeMode.CROP_AND_RESIZE)
    np.testing.assert_allclose(result.reshape(-1, 4), np.tile(BLUE, (64 * 64, 1)), atol=1)


def test_crop_and_resize_cuts_an_odd_overflow_more_from_the_end():
    image = np.zeros((100, 103, 4), dtype=np.uint8)
    image[..., 0] = np.arange(103, dtype=np.uint8)[None, :]
    image[..., 3] = 255
    result = fit_rgba(image, 100, 100, ResizeMode.CROP_AND_RESIZE)
    np.testing.assert_array_equal(result, image[:, 1:101])


def test_resize_and_fill_pads_symmetrically_with_the_border_median():
    """60x30 to 64x64 scales by 64/60 to 64x32 and pads 16 rows above and below."""
    image = _opaque(30, 60, (10, 20, 30, 255))
    image[10:20, 20:40] = RED
    result = fit_rgba(image, 64, 64, ResizeMode.RESIZE_AND_FILL)
    assert result.shape == (64, 64, 4)
    np.testing.assert_array_equal(result[:16], np.full((16, 64, 4), (10, 20, 30, 255)))
    np.testing.assert_array_equal(result[48:], np.full((16, 64, 4), (10, 20, 30, 255)))
    np.testing.assert_allclose(result[16:48, 0], np.full((32, 4), (10, 20, 30, 255)), atol=1)
    np.testing.assert_allclose(result[32, 32], RED, atol=1)


def test_resize_and_fill_puts_the_odd_pixel_at_the_end():
    image = _opaque(10, 20, RED)
    image[0] = image[-1] = image[:, 0] = image[:, -1] = GREEN
    result = fit_rgba(image, 20, 13, ResizeMode.RESIZE_AND_FILL)
    assert result.shape == (13, 20, 4)
    np.testing.assert_array_equal(result[1:11], image)
    np.testing.assert_array_equal(result[[0, 11, 12]], np.full((3, 20, 4), GREEN))


def test_resize_and_fill_with_a_transparent_border_fills_transparent():
    image = np.zeros((50, 100, 4), dtype=np.uint8)
    image[10:40, 20:80] = BLUE
    result = fit_rgba(image, 64, 64, ResizeMode.RESIZE_AND_FILL)
    assert (result[:16, :, 3] == 0).all() and (result[48:, :, 3] == 0).all()
    assert result[32, 32, 3] == 255


def test_resize_and_fill_truncates_the_border_median():
    """Border values 10 and 11 in equal numbers have median 10.5, which becomes 10."""
    image = np.full((2, 2, 4), 255, dtype=np.uint8)
    image[..., 0] = [[10, 11], [11, 10]]
    result = fit_rgba(image, 2, 4, ResizeMode.RESIZE_AND_FILL)
    np.testing.assert_array_equal(result[[0, 3], :, 0], np.full((2, 2), 10))
    np.testing.assert_array_equal(result[1:3], image)


@pytest.mark.parametrize("mode", list(ResizeMode))
@pytest.mark.parametrize(
    ("source", "target"),
    [
        ((151, 97), (64, 128)),
        ((97, 151), (256, 192)),
        ((200, 120), (120, 200)),
        ((64, 64), (90, 90)),
        ((300, 200), (64, 64)),
        ((200, 300), (64, 64)),
    ],
)
def test_fit_rgba_matches_opencv_rendition_of_the_original_on_opaque_images(mode, source, target):
    """Same geometry as the original; only the filters differ (BOX/LANCZOS3 vs AREA/LANCZOS4).

    Sizes are (width, height). The largest gap, about 3 levels, is 151x97 to 64x128,
    where OpenCV's INTER_AREA interpolates linearly along the squeezed axis.
    """
    image = _textured(height=source[1], width=source[0])
    width, height = target
    expected = _reference_crop_and_resize(image, mode, height, width).astype(np.float32)
    result = fit_rgba(image, width, height, mode)
    assert result.shape == expected.shape
    difference = np.abs(result.astype(np.float32) - expected).mean()
    assert difference < 3.5
    # the same result shifted by one pixel either way, along either axis, is much further off
    for axis in (0, 1):
        for step in (-1, 1):
            shifted = np.roll(result, step, axis=axis).astype(np.float32)
            assert np.abs(shifted - expected).mean() > 2 * difference + 1


# fit_rgba: premultiplied resampling


def _half_transparent_edge() -> np.ndarray:
    """Opaque red | a half-transparent blue stripe | transparent green (straight colour)."""
    image = _opaque(24, 48, RED)
    image[:, 16:24] = (0, 0, 255, 128)
    image[:, 24:] = (0, 255, 0, 0)
    return image


@pytest.mark.parametrize(("width", "height"), [(17, 9), (160, 80), (29, 40)])
def test_transparent_colour_does_not_bleed_into_edges(width, height):
    image = _half_transparent_edge()
    result = fit_rgba(image, width, height, ResizeMode.JUST_RESIZE)
    visible = result[..., 3] > 0
    assert visible.any() and (~visible).any()
    assert result[..., 1][visible].max() <= 1
    # the test image is sensitive: resampling straight colour, as OpenCV does, bleeds green
    shrinking = width * height < 24 * 48
    straight = cv2.resize(
        image, (width, height), interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LANCZOS4
    )
    assert straight[..., 1][straight[..., 3] > 0].max() > 50


@pytest.mark.parametrize(("width", "height"), [(17, 9), (30, 11), (48, 12)])
def test_shrinking_commutes_with_compositing_on_gray(width, height):
    """Resampling premultiplied colour and alpha is linear, as compositing on gray is."""
    image = _half_transparent_edge()
    image[5:15, 30:40] = (200, 100, 50, 64)
    resized_then_composited = composite_on_gray(
        fit_rgba(image, width, height, ResizeMode.JUST_RESIZE)
    )
    composited = np.rint(composite_on_gray(image) * 255).astype(np.uint8)
    composited_then_resized = fit_rgb(composited, width, height, ResizeMode.JUST_RESIZE) / 255.0
    np.testing.assert_allclose(resized_then_composited, composited_then_resized, atol=2.5 / 255)


def test_pillow_rgba_resize_premultiplies_like_fit_rgba():
    """Pillow's own RGBA resize premultiplies too; the two agree up to its uint8 rounding."""
    image = _half_transparent_edge()
    for width, height in ((17, 9), (160, 80)):
        filter_ = Image.Resampling.BOX if width < 48 else Image.Resampling.LANCZOS
        pillow = np.asarray(Image.fromarray(image).resize((width, height), filter_))
        ours = fit_rgba(image, width, height, ResizeMode.JUST_RESIZE)
        np.testing.assert_allclose(
            composite_on_gray(pillow), composite_on_gray(ours), atol=2.5 / 255
        )


def test_fit_rgb_matches_fit_rgba_colour_on_opaque_images():
    image = _textured(70, 90)
    for mode in ResizeMode:
        for width, height in ((64, 64), (200, 100)):
            rgba = fit_rgba(image, width, height, mode)
            rgb = fit_rgb(np.ascontiguousarray(image[..., :3]), width, height, mode)
            assert rgb.shape == (height, width, 3) and rgb.dtype == np.uint8
            assert (rgba[..., 3] == 255).all()
            np.testing.assert_allclose(rgb, rgba[..., :3], atol=1)


def test_fit_leaves_the_input_untouched_and_copies_at_equal_size():
    image = _textured(32, 32)
    before = image.copy()
    result = fit_rgba(image, 32, 32, ResizeMode.CROP_AND_RESIZE)
    np.testing.assert_array_equal(result, before)
    result[...] = 0
    np.testing.assert_array_equal(image, before)


@settings(max_examples=60, deadline=None)
@given(
    source=st.tuples(st.integers(1, 300), st.integers(1, 300)),
    target=st.tuples(st.integers(1, 300), st.integers(1, 300)),
    mode=st.sampled_from(list(ResizeMode)),
)
def test_fit_always_returns_the_target_shape(source, target, mode):
    height, width = source
    image = np.random.default_rng(height * 301 + width).integers(
        0, 256, size=(height, width, 4), dtype=np.uint8
    )
    result = fit_rgba(image, target[0], target[1], mode)
    assert result.shape == (target[1], target[0], 4)
    assert result.dtype == np.uint8
    rgb = fit_rgb(np.ascontiguousarray(image[..., :3]), target[0], target[1], mode)
    assert rgb.shape == (target[1], target[0], 3)
    assert rgb.dtype == np.uint8


@pytest.mark.parametrize(
    ("image", "size", "message"),
    [
        (
            np.zeros((4, 4, 3), np.uint8),
            (4, 4),
            r"expected an \(H, W, 4\) uint8 image, got \(4, 4, 3\) uint8",
        ),
        (
            np.zeros((4, 4, 4), np.float32),
            (4, 4),
            r"expected an \(H, W, 4\) uint8 image, got \(4, 4, 4\) float32",
        ),
        (np.zeros((0, 4, 4), np.uint8), (4, 4), r"image of shape \(0, 4, 4\) is empty"),
        (np.zeros((4, 4, 4), np.uint8), (0, 4), r"size 0 is not a positive integer"),
    ],
)
def test_fit_rgba_rejects_invalid_input(image, size, message):
    with pytest.raises(ValueError, match=f"^{message}$"):
        fit_rgba(image, size[0], size[1], ResizeMode.JUST_RESIZE)


# composite_on_gray and to_uint8


def test_composite_on_gray_follows_the_original_formula():
    image = np.array(
        [[[255, 0, 128, 255], [255, 0, 0, 51], [12, 200, 99, 0], [255, 255, 255, 128]]],
        dtype=np.uint8,
    )
    result = composite_on_gray(image)
    assert result.shape == (1, 4, 3) and result.dtype == np.float32
    np.testing.assert_allclose(result[0, 0], (1.0, 0.0, 128 / 255), atol=1e-6)
    np.testing.assert_allclose(result[0, 1], (0.6, 0.4, 0.4), atol=1e-6)
    np.testing.assert_allclose(result[0, 2], (0.5, 0.5, 0.5), atol=1e-6)
    np.testing.assert_allclose(result[0, 3], 0.5 + 0.5 * 128 / 255, atol=1e-6)


def test_to_uint8_truncates_and_clips_like_the_original():
    values = np.array([0.0, 0.999, 0.5, 1.0, 1.5, -0.2, 1 / 255], dtype=np.float32)
    np.testing.assert_array_equal(to_uint8(values), [0, 254, 127, 255, 255, 0, 1])
    assert to_uint8(values).dtype == np.uint8
    assert to_uint8(np.zeros((2, 3, 4))).shape == (2, 3, 4)


def test_to_uint8_rejects_integers():
    with pytest.raises(ValueError, match=r"^expected a float array, got int64$"):
        to_uint8(np.zeros(3, dtype=np.int64))


def test_fit_rgba_rejects_an_unknown_mode():
    with pytest.raises(ValueError, match=r"^unknown resize mode 'stretch'$"):
        fit_rgba(np.zeros((4, 4, 4), np.uint8), 8, 8, "stretch")  # type: ignore[arg-type]
