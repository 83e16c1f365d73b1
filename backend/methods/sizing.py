"""Generation sizes and the original extension's three resize modes.

`generation_size` picks the size the model generates at: a multiple of 64 on each
side (the transparent VAE decoder needs it), optionally scaled to the model's
native area. `fit_rgba` and `fit_rgb` fit an input layer to that size the way the
original's `crop_and_resize_image` does (Just Resize, Crop and Resize, Resize and
Fill), with two deliberate differences:

- Resampling uses Pillow's BOX filter along an axis that shrinks and LANCZOS
  (3 lobes) along one that grows. The original picks OpenCV's INTER_AREA when the
  area shrinks and LANCZOS4 otherwise, for both axes. BOX averages the covered
  source pixels like INTER_AREA, and the two Lanczos kernels differ only in
  ringing; choosing per axis keeps a stretched axis smooth where Pillow's BOX
  would repeat pixels, and a squeezed one free of aliasing.
- RGBA is resampled as premultiplied colour in float32, so the colour of
  transparent pixels cannot bleed into visible edges (OpenCV resamples straight
  colour). Pixels that resampling leaves fully transparent get colour 0.

`composite_on_gray` and `to_uint8` are the original's `rgba2rgbfp32` and
`to255unit8`.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
from PIL import Image

from backend.errors import InvalidRequest
from protocol.methods import ResizeMode

AREA_TOLERANCE = 0.2
"""A generation size at a native area keeps its area within this fraction of it."""

_Resize = Callable[[np.ndarray, int, int], np.ndarray]
_Box = tuple[float, float, float, float]


def generation_size(
    width: int, height: int, *, native_area: int | None = None, multiple: int = 64
) -> tuple[int, int]:
    """The size the model generates at for a requested (layer) size.

    Without a native area, each side is rounded to the nearest multiple of
    `multiple` (halves round up), and is at least `multiple`.

    With a native area, the size keeps the requested aspect ratio as well as a grid
    of `multiple` allows while its area stays within `AREA_TOLERANCE` (20 %) of the
    native area: among all sizes whose sides are multiples of `multiple` and whose
    area lies in [0.8, 1.2] x `native_area`, it is the one with the smallest aspect
    error |ln(w/h) - ln(width/height)|; ties go to the area closest to the native
    one. Small and large layers alike are mapped to the native area. For aspects
    from 1:4 to 4:1 the aspect error stays under 0.06 at 512 x 512 and under 0.03
    at 1024 x 1024. For SD1.5 (512 x 512): 3000 x 2000 gives 576 x 384, 1920 x 1080
    gives 704 x 384. For SDXL (1024 x 1024): 3000 x 2000 gives 1344 x 896.

    Args:
        width: requested width in pixels, a positive int.
        height: requested height in pixels, a positive int.
        native_area: the model's native pixel count (512 * 512 for SD1.5,
            1024 * 1024 for SDXL), a positive multiple of `multiple` squared; None to
            keep the requested size.
        multiple: the grid both sides are multiples of.

    Returns:
        (width, height) of the generation, each a positive multiple of `multiple`.

    Raises:
        InvalidRequest: a size or `multiple` is not a positive int, or
            `native_area` is not a positive multiple of `multiple` squared.
    """
    for field, value in (("width", width), ("height", height), ("multiple", multiple)):
        if not _is_positive_int(value):
            raise InvalidRequest(field, f"{field} {value!r} is not a positive integer")
    if native_area is None:
        return _round_to_multiple(width, multiple), _round_to_multiple(height, multiple)
    if not _is_positive_int(native_area) or native_area % (multiple * multiple):
        raise InvalidRequest(
            "native_area",
            f"native_area {native_area!r} is not a positive multiple of {multiple * multiple}",
        )

    cells = native_area // (multiple * multiple)
    lowest = math.ceil(cells * (1.0 - AREA_TOLERANCE) - 1e-9)
    highest = math.floor(cells * (1.0 + AREA_TOLERANCE) + 1e-9)
    log_aspect = math.log(width / height)
    # (aspect error, area error, columns, rows); never empty: cells x 1 lies in the band
    candidates = (
        (
            round(abs(math.log(columns / rows) - log_aspect), 12),
            abs(math.log(columns * rows / cells)),
            columns,
            rows,
        )
        for rows in range(1, highest + 1)
        for columns in range(max(1, math.ceil(lowest / rows)), highest // rows + 1)
    )
    _, _, columns, rows = min(candidates)
    return columns * multiple, rows * multiple


def fit_rgba(image: np.ndarray, width: int, height: int, mode: ResizeMode) -> np.ndarray:
    """Fit a straight-alpha RGBA image to a size with one of the three resize modes.

    - JUST_RESIZE stretches the image to the size.
    - CROP_AND_RESIZE scales by the larger of the two side ratios, then cuts the
      overflow equally from both ends of the long side (the extra pixel of an odd
      overflow from the end).
    - RESIZE_AND_FILL scales by the smaller ratio, places the image at the centre
      (offsets rounded down) and fills the rest with the per-channel median of the
      image's border pixels, truncated to uint8 (for a layer with a transparent
      border, a transparent fill).

    Scaled sizes are rounded with np.round, as the original does, and kept at
    least 1 pixel (the original would fail there). A shrinking axis is resampled
    with a box filter, a growing one with Lanczos, both on premultiplied colour.

    Args:
        image: (H, W, 4) uint8 straight-alpha RGBA.
        width: target width, a positive int.
        height: target height, a positive int.
        mode: the resize mode.

    Returns:
        (height, width, 4) uint8 straight-alpha RGBA.

    Raises:
        ValueError: the image is not (H, W, 4) uint8, a size is not a positive int,
            or the mode is not a ResizeMode.
    """
    _check_image(image, 4, width, height)
    return _fit(image, width, height, mode, _resize_rgba)


def fit_rgb(image: np.ndarray, width: int, height: int, mode: ResizeMode) -> np.ndarray:
    """Fit an RGB image to a size with one of the three resize modes (see `fit_rgba`).

    Args:
        image: (H, W, 3) uint8 RGB.
        width: target width, a positive int.
        height: target height, a positive int.
        mode: the resize mode.

    Returns:
        (height, width, 3) uint8 RGB.

    Raises:
        ValueError: the image is not (H, W, 3) uint8, a size is not a positive int,
            or the mode is not a ResizeMode.
    """
    _check_image(image, 3, width, height)
    return _fit(image, width, height, mode, _resize_rgb)


def composite_on_gray(image: np.ndarray) -> np.ndarray:
    """Composite straight-alpha RGBA on 50 % gray (the original's `rgba2rgbfp32`).

    Args:
        image: (H, W, 4) uint8 straight-alpha RGBA.

    Returns:
        (H, W, 3) float32 RGB in [0, 1]: 0.5 + (rgb - 0.5) * alpha.

    Raises:
        ValueError: the image is not (H, W, 4) uint8.
    """
    _check_image(image, 4)
    rgb = image[..., :3].astype(np.float32) / 255.0
    alpha = image[..., 3:4].astype(np.float32) / 255.0
    return 0.5 + (rgb - 0.5) * alpha


def to_uint8(values: np.ndarray) -> np.ndarray:
    """Convert [0, 1] floats to uint8 as the original's `to255unit8` does.

    Multiplies by 255, clips to [0, 255] and truncates (no rounding), so 0.999
    becomes 254.

    Args:
        values: float array of any shape, nominally in [0, 1].

    Returns:
        uint8 array of the same shape.

    Raises:
        ValueError: the array is not of a floating dtype.
    """
    if not np.issubdtype(values.dtype, np.floating):
        raise ValueError(f"expected a float array, got {values.dtype}")
    return (values * 255.0).clip(0, 255).astype(np.uint8)


def _is_positive_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _round_to_multiple(value: int, multiple: int) -> int:
    return max(1, (value + multiple // 2) // multiple) * multiple


def _check_image(image: np.ndarray, channels: int, *size: int) -> None:
    if image.ndim != 3 or image.shape[2] != channels or image.dtype != np.uint8:
        raise ValueError(
            f"expected an (H, W, {channels}) uint8 image, got {image.shape} {image.dtype}"
        )
    if min(image.shape[:2]) < 1:
        raise ValueError(f"image of shape {image.shape} is empty")
    for value in size:
        if not _is_positive_int(value):
            raise ValueError(f"size {value!r} is not a positive integer")


def _fit(
    image: np.ndarray, width: int, height: int, mode: ResizeMode, resize: _Resize
) -> np.ndarray:
    old_height, old_width = image.shape[:2]
    if mode == ResizeMode.JUST_RESIZE:
        return resize(image, width, height)

    ratio_height, ratio_width = height / old_height, width / old_width
    if mode == ResizeMode.RESIZE_AND_FILL:
        scale = min(ratio_height, ratio_width)
        scaled = resize(image, _scaled(old_width, scale), _scaled(old_height, scale))
        borders = np.concatenate([image[0], image[-1], image[:, 0], image[:, -1]], axis=0)
        fill = np.median(borders, axis=0).astype(np.uint8)
        result = np.empty((height, width, image.shape[2]), dtype=np.uint8)
        result[...] = fill
        new_height, new_width = scaled.shape[:2]
        top, left = (height - new_height) // 2, (width - new_width) // 2
        result[top : top + new_height, left : left + new_width] = scaled
        return result
    if mode == ResizeMode.CROP_AND_RESIZE:
        scale = max(ratio_height, ratio_width)
        scaled = resize(image, _scaled(old_width, scale), _scaled(old_height, scale))
        new_height, new_width = scaled.shape[:2]
        top, left = (new_height - height) // 2, (new_width - width) // 2
        return np.ascontiguousarray(scaled[top : top + height, left : left + width])
    raise ValueError(f"unknown resize mode {mode!r}")


def _scaled(side: int, scale: float) -> int:
    return max(1, int(np.round(side * scale)))


def _resize_plane(
    plane: np.ndarray, width: int, height: int, box: _Box | None = None
) -> np.ndarray:
    """Resample one (H, W) float32 plane with Pillow's float ("F") mode, axis by axis.

    A shrinking axis uses the box filter, a growing one Lanczos, an unchanged one
    nothing. With `box` (left, top, right, bottom in source pixels, fractional), that
    part of the plane is what fills the result.
    """
    image = Image.fromarray(plane)
    left, top, right, bottom = box or (0.0, 0.0, float(image.width), float(image.height))
    if box is not None or width != image.width:
        extent = right - left
        image = image.resize(
            (width, image.height), _filter_for(extent, width), box=(left, 0, right, image.height)
        )
    if box is not None or height != image.height:
        extent = bottom - top
        image = image.resize(
            (width, height), _filter_for(extent, height), box=(0, top, width, bottom)
        )
    return np.asarray(image, dtype=np.float32)


def _filter_for(old_side: float, side: int) -> Image.Resampling:
    return Image.Resampling.BOX if side < old_side else Image.Resampling.LANCZOS


def _resize_rgb(image: np.ndarray, width: int, height: int) -> np.ndarray:
    old_height, old_width = image.shape[:2]
    if (old_width, old_height) == (width, height):
        return image.copy()
    result = np.empty((height, width, image.shape[2]), dtype=np.uint8)
    for channel in range(image.shape[2]):
        plane = _resize_plane(image[..., channel].astype(np.float32), width, height)
        result[..., channel] = np.rint(np.clip(plane, 0.0, 255.0))
    return result


def _resize_rgba(image: np.ndarray, width: int, height: int) -> np.ndarray:
    old_height, old_width = image.shape[:2]
    if (old_width, old_height) == (width, height):
        return image.copy()
    return resample_rgba(image, width, height)


def resample_rgba(
    image: np.ndarray, width: int, height: int, box: _Box | None = None
) -> np.ndarray:
    """Resample straight RGBA (or a fractional part of it) to a size, on premultiplied colour.

    Each axis is resampled with the box filter when it shrinks and Lanczos when it grows;
    pixels that resampling leaves fully transparent get colour 0.

    Args:
        image: (H, W, 4) uint8 straight-alpha RGBA.
        width / height: the result's size.
        box: (left, top, right, bottom) of the source part to resample, in source pixels
            (fractional), inside the image; None for the whole image.

    Returns:
        (height, width, 4) uint8 straight-alpha RGBA.
    """
    alpha = image[..., 3].astype(np.float32) / 255.0
    resized_alpha = _resize_plane(alpha, width, height, box)
    alpha_byte = np.rint(np.clip(resized_alpha, 0.0, 1.0) * 255.0)
    visible = alpha_byte > 0
    divisor = np.where(visible, alpha_byte / 255.0, 1.0)
    result = np.empty((height, width, 4), dtype=np.uint8)
    result[..., 3] = alpha_byte
    for channel in range(3):
        premultiplied = image[..., channel].astype(np.float32) / 255.0 * alpha
        plane = _resize_plane(premultiplied, width, height, box)
        colour = np.clip(plane / divisor, 0.0, 1.0) * 255.0
        result[..., channel] = np.where(visible, np.rint(colour), 0)
    return result
