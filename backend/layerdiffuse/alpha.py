"""Straight-alpha RGBA helpers: RGB padding for the encoder, decoder output, previews.

`pad_rgb` reproduces the reference's OpenCV pyramid (INTER_AREA down by 1/1.2
per level, INTER_LINEAR back up) with numpy, so the backend needs no OpenCV. The
resampling tables follow OpenCV's definitions exactly; the tests compare with
OpenCV itself.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import numpy as np
import torch

PYRAMID_FACTOR = 1.2
CHECKER_CELL = 64
CHECKER_DARK, CHECKER_LIGHT = 0.45, 0.55


def pad_rgb(rgba: np.ndarray) -> np.ndarray:
    """Extend the colour of visible pixels into transparent ones (the reference's `pad_rgb`).

    Builds a pyramid of (premultiplied colour, alpha), shrinking by 1/1.2 per level
    until a side is 1, starts from the alpha-weighted mean colour, and from coarse to
    fine upsamples the fill and puts the visible colour over it.

    Args:
        rgba: (H, W, 4) uint8 straight-alpha RGBA.

    Returns:
        (H, W, 3) float32 RGB in [0, 1]: the original colour where alpha is 1,
        smoothly extrapolated colour where it is 0.
    """
    if rgba.ndim != 3 or rgba.shape[2] != 4 or rgba.dtype != np.uint8:
        raise ValueError(f"expected an (H, W, 4) uint8 image, got {rgba.shape} {rgba.dtype}")
    image = rgba.astype(np.float32) / 255.0
    alpha = image[..., 3:]
    # One (H, W, 4) array per level, premultiplied colour and alpha resized together.
    levels = [np.concatenate([image[..., :3] * alpha, alpha], axis=-1)]
    while min(levels[-1].shape[:2]) > 1:
        height, width = levels[-1].shape[:2]
        size = (int(height / PYRAMID_FACTOR), int(width / PYRAMID_FACTOR))
        levels.append(_resize(levels[-1], size, _area_table))

    top = levels[-1]
    weight = np.clip(top[..., 3:].sum(axis=(0, 1), keepdims=True), 1e-8, 1e32)
    fill = top[..., :3].sum(axis=(0, 1), keepdims=True) / weight
    for level in reversed(levels):
        fill = _resize(fill, level.shape[:2], _linear_table)
        fill = level[..., :3] + fill * (1.0 - level[..., 3:])
    return fill.astype(np.float32)


@functools.lru_cache(maxsize=256)
def _area_table(source: int, target: int) -> tuple[np.ndarray, np.ndarray]:
    """Source indices and weights per target pixel of OpenCV's INTER_AREA (downscaling)."""
    scale = 1.0 / (target / source)
    rows: list[list[tuple[int, float]]] = []
    for index in range(target):
        start = index * scale
        end = start + scale
        cell = min(scale, source - start)
        first = min(math.ceil(start), source - 1)
        last = min(math.floor(end), source - 1)
        first = min(first, last)
        taps: list[tuple[int, float]] = []
        if first - start > 1e-3:
            taps.append((first - 1, (first - start) / cell))
        taps += [(s, 1.0 / cell) for s in range(first, last)]
        if end - last > 1e-3:
            taps.append((last, min(min(end - last, 1.0), cell) / cell))
        rows.append(taps)
    width = max(len(taps) for taps in rows)
    indices = np.zeros((target, width), dtype=np.int64)
    weights = np.zeros((target, width), dtype=np.float32)
    for index, taps in enumerate(rows):
        for slot, (source_index, w) in enumerate(taps):
            indices[index, slot] = source_index
            weights[index, slot] = w
    return _frozen(indices), _frozen(weights)


@functools.lru_cache(maxsize=256)
def _linear_table(source: int, target: int) -> tuple[np.ndarray, np.ndarray]:
    """Source indices and weights of OpenCV's INTER_LINEAR (half-pixel centres, edge clamp)."""
    scale = source / target
    position = (np.arange(target, dtype=np.float64) + 0.5) * scale - 0.5
    left = np.floor(position).astype(np.int64)
    fraction = (position - left).astype(np.float32)
    fraction[left < 0] = 0.0
    left = np.clip(left, 0, None)
    at_edge = left >= source - 1
    fraction[at_edge] = 0.0
    left[at_edge] = source - 1
    right = np.minimum(left + 1, source - 1)
    indices = np.stack([left, right], axis=1)
    weights = np.stack([1.0 - fraction, fraction], axis=1).astype(np.float32)
    return _frozen(indices), _frozen(weights)


def _frozen(array: np.ndarray) -> np.ndarray:
    array.flags.writeable = False  # the tables are cached and shared
    return array


def _resize(
    image: np.ndarray, size: tuple[int, int], table: Callable[[int, int], tuple]
) -> np.ndarray:
    """Resize (H, W, C) to `size` with a separable table (`_area_table`, `_linear_table`)."""
    height, width = image.shape[:2]
    vertical = _apply_table(image, table(height, size[0]), axis=0)
    return _apply_table(vertical, table(width, size[1]), axis=1)


def _apply_table(image: np.ndarray, table: tuple, axis: int) -> np.ndarray:
    """A weighted sum of a few (at most 3 here) gathered copies along one axis.

    The taps are added in order into the first, so the result is the same float32
    arithmetic as summing the terms left to right, without a temporary per tap.
    """
    index, weight = table
    shape = [1] * image.ndim
    shape[axis] = -1
    out = np.take(image, index[:, 0], axis=axis)
    out *= weight[:, 0].reshape(shape)
    for tap in range(1, index.shape[1]):
        term = np.take(image, index[:, tap], axis=axis)
        term *= weight[:, tap].reshape(shape)
        out += term
    return out


def checkerboard(height: int, width: int) -> np.ndarray:
    """The reference's preview background: (H, W) float32 of 0.45 / 0.55 in 64-px cells.

    Cells are counted as the reference counts them (H // 64 by W // 64 cells
    stretched over the image with nearest-neighbour), so sizes that are not
    multiples of 64 get slightly larger cells, as there.
    """
    rows = max(1, height // CHECKER_CELL)
    columns = max(1, width // CHECKER_CELL)
    row_cell = np.floor(np.arange(height) * (rows / height)).astype(np.int64)
    column_cell = np.floor(np.arange(width) * (columns / width)).astype(np.int64)
    parity = (row_cell[:, None] + column_cell[None, :]) % 2
    return np.where(parity == 1, CHECKER_LIGHT, CHECKER_DARK).astype(np.float32)


def checkerboard_preview(rgba: np.ndarray) -> np.ndarray:
    """Composite a straight-alpha RGBA image over the checkerboard, as the reference's "vis".

    Args:
        rgba: (H, W, 4) uint8.

    Returns:
        (H, W, 3) uint8 RGB.
    """
    image = rgba.astype(np.float32) / 255.0
    alpha = image[..., 3:]
    board = checkerboard(*rgba.shape[:2])[..., None]
    preview = image[..., :3] * alpha + board * (1.0 - alpha)
    return to_uint8(preview)


def to_uint8(image: np.ndarray) -> np.ndarray:
    """[0, 1] floats → uint8 the reference's way (×255, clip, truncate)."""
    return (image * 255.0).clip(0, 255).astype(np.uint8)


def decoder_output_to_rgba(output: torch.Tensor) -> list[np.ndarray]:
    """Turn the decoder's (B, 4, H, W) [alpha, R, G, B] output into RGBA images.

    Args:
        output: (B, 4, H, W) in [0, 1] (clipped here too), channel 0 alpha.

    Returns:
        B arrays (H, W, 4) uint8, straight alpha, as the reference writes its PNGs.
    """
    channels_last = output.clip(0, 1).movedim(1, -1).float().cpu().numpy()
    rgba = np.concatenate([channels_last[..., 1:4], channels_last[..., 0:1]], axis=-1)
    return [to_uint8(image) for image in rgba]


def encoder_input(rgba: np.ndarray) -> torch.Tensor:
    """The transparent encoder's input for one RGBA image.

    Args:
        rgba: (H, W, 4) uint8 straight alpha.

    Returns:
        (1, 4, H, W) float32 in [0, 1]: alpha first, then `pad_rgb` colour.
    """
    padded = torch.from_numpy(pad_rgb(rgba)).movedim(-1, 0)
    alpha = torch.from_numpy(rgba[..., 3:].astype(np.float32) / 255.0).movedim(-1, 0)
    return torch.cat([alpha, padded])[None]
