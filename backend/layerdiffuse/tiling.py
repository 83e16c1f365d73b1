"""Images in overlapping tiles with blended seams, so that large sizes fit in memory.

A model that maps an image to an image (the SD VAE's decoder and encoder, the transparent
decoder and encoder, a UNet's prediction) is run on overlapping tiles, and the tiles'
outputs are blended where they overlap. Positions are counted on a *grid* (latent pixels
for our models); each input and the output have a number of pixels per grid unit (8 for
an image, 1 for a latent).

The blend: along each axis, a tile's weight is 0 for the outer quarter of an overlap with
a neighbour, rises linearly over its middle half and is 1 beyond it (at the image's
border there is no ramp); outputs are summed with these weights and divided by their
sum. In an overlap the two weights add up to 1, and the pixels nearest a tile's edge,
where its convolutions saw zero padding instead of the neighbour's pixels, count for
nothing. So for a purely convolutional model whose receptive field reaches less than a
quarter of the overlap, tiling changes nothing but rounding (the transparent encoder,
31 pixels, with overlaps of 128). A model with GroupNorm or attention (the SD VAE, the
transparent decoder) sees its tile's statistics and context instead of the image's, as in
every tiled VAE (diffusers', ComfyUI's): a tiled result differs from the whole one by
about what decoding one tile alone does, and the blend spreads that over the overlap
instead of leaving a seam (tests/backend/layerdiffuse/test_tiling.py measures both).

`Tiling` decides when an image goes in tiles: above a number of pixels, given or derived
from the device's free memory.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

__all__ = ["TileGrid", "Tiling", "tile_spans", "tile_weights", "tiled_map"]

_CUDA_MEMORY_SHARE = 0.5
"""Of the free CUDA memory, the share an untiled decode may plan to use."""
UNTILED_PIXELS_OFF_CUDA = 2 * 1024 * 1024
"""Without CUDA (CPU, MPS), images of more pixels than this go in tiles by default: on a
CPU the attention of the VAE's middle block over every latent pixel is what grows fastest
(docs/benchmarks.md), and tiles bound it."""


@dataclass(frozen=True)
class TileGrid:
    """Tiles on a grid: their side and overlap in grid units, aligned to a multiple.

    Attributes:
        tile: a tile's side (a multiple of `multiple`).
        overlap: what neighbouring tiles share at least (a multiple of `multiple`, at most
            half a tile).
        multiple: tile starts and sides are multiples of this (8 latent pixels = 64 image
            pixels keep the transparent decoder's downsampling grid).
    """

    tile: int
    overlap: int
    multiple: int = 1

    def __post_init__(self) -> None:
        for name in ("tile", "overlap"):
            value = getattr(self, name)
            if value % self.multiple or value < 0:
                raise ValueError(f"{name} {value} is not a multiple of {self.multiple}")
        if self.tile <= 0 or not 0 < self.overlap <= self.tile // 2:
            raise ValueError(f"overlap {self.overlap} is not in 1..{self.tile // 2} (half a tile)")


def tile_spans(length: int, grid: TileGrid) -> list[tuple[int, int]]:
    """Where the tiles of one axis lie: (start, end) in grid units, in order.

    The fewest tiles of side `grid.tile` that overlap by at least `grid.overlap`, spread
    evenly (starts rounded down to `grid.multiple`); the first starts at 0 and the last
    ends at `length`. An axis no longer than a tile is one span.

    Raises:
        ValueError: `length` is not a positive multiple of `grid.multiple`.
    """
    if length <= 0 or length % grid.multiple:
        raise ValueError(f"length {length} is not a positive multiple of {grid.multiple}")
    if length <= grid.tile:
        return [(0, length)]
    count = math.ceil((length - grid.overlap) / (grid.tile - grid.overlap))
    reach = length - grid.tile
    starts = [
        (index * reach // (count - 1)) // grid.multiple * grid.multiple for index in range(count)
    ]
    starts[-1] = reach
    return [(start, start + grid.tile) for start in starts]


def tile_weights(spans: Sequence[tuple[int, int]], scale: int) -> list[torch.Tensor]:
    """Each span's blending weights along its axis, at `scale` pixels per grid unit.

    Returns:
        One float32 vector per span, of its length × `scale`.
    """
    weights = []
    for index, (start, end) in enumerate(spans):
        size = (end - start) * scale
        position = torch.arange(size, dtype=torch.float32) + 0.5
        weight = torch.ones(size)
        if index > 0:
            overlap = (spans[index - 1][1] - start) * scale
            weight = torch.minimum(weight, _ramp(position, overlap))
        if index < len(spans) - 1:
            overlap = (end - spans[index + 1][0]) * scale
            weight = torch.minimum(weight, _ramp(size - position, overlap))
        weights.append(weight)
    return weights


def _ramp(distance: torch.Tensor, overlap: int) -> torch.Tensor:
    """0 for the first quarter of the overlap from the edge, then linear to 1 at three
    quarters: two tiles' ramps over one overlap add up to 1."""
    return ((distance - overlap / 4) / (overlap / 2)).clamp(0.0, 1.0)


def tiled_map(
    function: Callable[..., torch.Tensor],
    inputs: Sequence[tuple[torch.Tensor, int]],
    *,
    output_scale: int,
    grid: TileGrid,
) -> torch.Tensor:
    """`function(*inputs)` computed tile by tile and blended (see the module's docstring).

    Args:
        function: maps the inputs' crops of one tile to its output, (B, C, h, w) at
            `output_scale` pixels per grid unit; called once when one tile covers all.
        inputs: (tensor (B, C, H · scale, W · scale), scale) pairs; every tensor covers the
            same H × W grid units.
        output_scale: the output's pixels per grid unit.
        grid: the tiles.

    Returns:
        (B, C, H · output_scale, W · output_scale) in the dtype `function` returns.
    """
    first, scale = inputs[0]
    height, width = first.shape[-2] // scale, first.shape[-1] // scale
    rows, columns = tile_spans(height, grid), tile_spans(width, grid)
    if len(rows) == len(columns) == 1:
        return function(*(tensor for tensor, _ in inputs))
    row_weights = tile_weights(rows, output_scale)
    column_weights = tile_weights(columns, output_scale)
    output: torch.Tensor | None = None
    total = torch.zeros(height * output_scale, width * output_scale, device=first.device)
    dtype = first.dtype
    for (top, bottom), row_weight in zip(rows, row_weights, strict=True):
        for (left, right), column_weight in zip(columns, column_weights, strict=True):
            crops = [
                tensor[..., top * s : bottom * s, left * s : right * s] for tensor, s in inputs
            ]
            weight = row_weight[:, None] * column_weight[None, :]
            tile = function(*crops)
            dtype = tile.dtype
            if output is None:
                shape = (*tile.shape[:-2], height * output_scale, width * output_scale)
                output = torch.zeros(shape, device=tile.device, dtype=torch.float32)
            weight = weight.to(tile.device)
            where = (
                ...,
                slice(top * output_scale, bottom * output_scale),
                slice(left * output_scale, right * output_scale),
            )
            output[where] += tile.float() * weight
            total[where[1:]] += weight.to(total.device)
    assert output is not None
    return (output / total.to(output.device)).to(dtype)


@dataclass(frozen=True)
class Tiling:
    """When the VAE and the transparent decoder and encoder work in tiles, and how.

    Attributes:
        above_pixels: an image of more pixels than this is decoded and encoded in tiles;
            None decides from the device: on CUDA, whether the pass's estimated peak
            fits half the free memory; elsewhere, above `UNTILED_PIXELS_OFF_CUDA` (2 MP).
            0 always tiles.
        tile: a tile's side in image pixels, a multiple of 64.
        overlap: the pixels neighbouring tiles share at least, a multiple of 64, at most
            half a tile.
        unet_above: the UNet predicts in tiles (blended, every step) when the generation
            exceeds this many times the model's native area (512² SD1.5, 1024² SDXL):
            beyond it a whole pass stops fitting a 24 GB card and its attention grows with
            the square of the area. 0 always tiles.
        unet_tile: the UNet's tile side in image pixels, a multiple of 64; None: the
            model's native side. Its tiles overlap by a quarter of a tile.
    """

    above_pixels: int | None = None
    tile: int = 1024
    overlap: int = 128
    unet_above: float = 4.0
    unet_tile: int | None = None

    def __post_init__(self) -> None:
        self.grid()  # checks the sizes

    def grid(self) -> TileGrid:
        """The tiles on the latent grid (8 image pixels a unit, aligned to 64 pixels)."""
        for name in ("tile", "overlap"):
            if getattr(self, name) % 64:
                raise ValueError(f"tiling {name} {getattr(self, name)} is not a multiple of 64")
        return TileGrid(self.tile // 8, self.overlap // 8, multiple=8)

    def unet_grid(self, width: int, height: int, native_area: int) -> TileGrid | None:
        """The UNet's tiles for a generation of `width` × `height`, or None to run it whole."""
        if width * height <= self.unet_above * native_area:
            return None
        side = self.unet_tile or math.isqrt(native_area)
        if side % 64:
            raise ValueError(f"tiling unet_tile {side} is not a multiple of 64")
        units = side // 8
        return TileGrid(units, max(8, units // 4 // 8 * 8), multiple=8)

    def tiles(self, pixels: int, bytes_per_pixel: float, device: torch.device) -> bool:
        """Whether an image of `pixels` goes in tiles, for a pass needing about
        `bytes_per_pixel` at its peak on `device`."""
        if self.above_pixels is not None:
            return pixels > self.above_pixels
        if device.type == "cuda":
            free, _total = torch.cuda.mem_get_info(device)
            return pixels * bytes_per_pixel > free * _CUDA_MEMORY_SHARE
        return pixels > UNTILED_PIXELS_OFF_CUDA
