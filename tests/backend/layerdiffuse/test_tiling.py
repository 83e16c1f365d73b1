"""Tiles with blended seams: where they lie, how they blend, and how close they come.

Two kinds of model are tiled. A purely convolutional one (the transparent encoder) gives
the untiled result to rounding, because no pixel within a quarter overlap of a tile's
edge counts. One with GroupNorm and attention (the SD VAE, the transparent decoder) sees
each tile's statistics and context instead of the image's; no tiling can undo that, so
the tolerance is the network's own: the tiled result must be no farther from the untiled
one than a single tile decoded alone is from the same region of the untiled result (the
blend can only spread that difference, never add to it), and, for the VAE, no farther
than diffusers' own tiled VAE with the same tiles.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable

import numpy as np
import pytest
import torch

from backend.layerdiffuse import (
    TileGrid,
    Tiling,
    encoder_input,
    tile_spans,
    tile_weights,
    tiled_map,
)
from backend.methods import stages
from backend.model_set import ModelSet

GRID = TileGrid(tile=16, overlap=8, multiple=8)  # 128-pixel tiles sharing 64 pixels
SMALL = Tiling(above_pixels=0, tile=128, overlap=64)  # the same, as the stages use it
SIDE = 256  # pixels: 3 × 3 tiles


@pytest.mark.parametrize("length", [8, 16, 24, 40, 64, 200, 256])
def test_spans_cover_the_axis_aligned_and_overlapping(length: int) -> None:
    spans = tile_spans(length, GRID)
    assert spans[0][0] == 0 and spans[-1][1] == length
    for start, end in spans:
        assert start % 8 == 0 and end - start == min(GRID.tile, length)
    for (_, end), (start, _) in itertools.pairwise(spans):
        assert end - start >= GRID.overlap
    if length <= GRID.tile:
        assert spans == [(0, length)]


def test_spans_are_the_fewest_and_spread_evenly() -> None:
    assert tile_spans(64, TileGrid(32, 8, 8)) == [(0, 32), (16, 48), (32, 64)]
    assert tile_spans(512, TileGrid(128, 16, 8)) == [
        (0, 128),
        (96, 224),
        (192, 320),
        (288, 416),
        (384, 512),
    ]


@pytest.mark.parametrize(
    ("tile", "overlap", "multiple", "message"),
    [(16, 12, 8, "overlap 12 is not a multiple of 8"), (16, 16, 8, "half a tile")],
)
def test_a_grid_that_cannot_tile_is_refused(
    tile: int, overlap: int, multiple: int, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        TileGrid(tile, overlap, multiple)
    with pytest.raises(ValueError, match="not a multiple of 64"):
        Tiling(tile=100)


def test_weights_skip_the_outer_quarter_of_an_overlap_and_add_up_to_one() -> None:
    spans = tile_spans(32, GRID)  # (0, 16), (8, 24), (16, 32): overlaps of 8 units
    weights = tile_weights(spans, 8)  # at 8 pixels a unit: overlaps of 64 pixels
    total = torch.zeros(32 * 8)
    for (start, _), weight in zip(spans, weights, strict=True):
        total[start * 8 : start * 8 + weight.numel()] += weight
    torch.testing.assert_close(total, torch.ones_like(total))
    middle = weights[1]  # both its edges are interior
    assert (middle[:16] == 0).all() and (middle[-16:] == 0).all()  # 64 / 4 pixels each
    assert (middle[48:80] == 1).all() and (weights[0][:64] == 1).all()  # the image's border


def test_an_image_is_put_back_exactly_where_it_was() -> None:
    """Identity tiles at two scales: every pixel of the output is its own input pixel."""
    image = torch.rand(2, 3, 192, 320)
    latent = torch.rand(2, 4, 24, 40)
    same = tiled_map(lambda x: x, [(image, 8)], output_scale=8, grid=GRID)
    torch.testing.assert_close(same, image)
    restored = tiled_map(
        lambda x, z: torch.cat([x[:, :, ::8, ::8], z], 1),
        [(image, 8), (latent, 1)],
        output_scale=1,
        grid=GRID,
    )
    torch.testing.assert_close(restored, torch.cat([image[:, :, ::8, ::8], latent], 1))


def test_one_tile_is_the_whole_call() -> None:
    calls: list[tuple[int, ...]] = []

    def record(x: torch.Tensor) -> torch.Tensor:
        calls.append(tuple(x.shape))
        return x * 2

    image = torch.rand(1, 3, 128, 128)
    assert torch.equal(tiled_map(record, [(image, 8)], output_scale=8, grid=GRID), image * 2)
    assert calls == [(1, 3, 128, 128)]


def test_the_transparent_encoder_tiled_is_the_untiled_one(demo_models: ModelSet) -> None:
    """Convolutions only, reaching 31 pixels: with 128-pixel overlaps no pixel within 32
    pixels of a tile's interior edge counts, so tiling changes nothing but rounding."""
    torch.set_num_threads(1)
    encoder, _ = demo_models.transparent_encoder()
    x = encoder_input(_layer(512))
    default = Tiling(tile=256, overlap=128).grid()  # the default's overlap, smaller tiles
    with torch.no_grad():
        whole = encoder(x)
        tiled = tiled_map(encoder, [(x, 8)], output_scale=1, grid=default)
        narrow = tiled_map(encoder, [(x, 8)], output_scale=1, grid=GRID)
    assert (tiled - whole).abs().max() < 1e-6  # outputs up to 0.09; rounding is ~1e-8
    # With 64-pixel overlaps the margin (16 px) is below the reach: not exact (8e-5 here).
    assert (narrow - whole).abs().max() > 1e-5


def _layer(side: int) -> np.ndarray:
    """A soft disc of smooth colour: structure at every scale, alpha in between."""
    y, x = np.mgrid[0:side, 0:side] / side
    rgba = np.zeros((side, side, 4), dtype=np.uint8)
    rgba[..., 0], rgba[..., 1], rgba[..., 2] = 255 * x, 255 * y, 255 * (1 - x * y)
    rgba[..., 3] = 255 * np.clip(1.5 - 3 * np.hypot(x - 0.5, y - 0.5), 0, 1)
    return rgba


Function = Callable[..., torch.Tensor]


def _one_tile_alone(function: Function, inputs: list[tuple[torch.Tensor, int]]) -> torch.Tensor:
    """How far each tile run alone is from the same region of the whole run: the network's
    own dependence on what lies beyond a tile. Per channel, (C, pixels of all tiles)."""
    whole = function(*(tensor for tensor, _ in inputs))
    first, scale = inputs[0]
    out = whole.shape[-1] // (first.shape[-1] // scale)
    spans = tile_spans(first.shape[-1] // scale, GRID)
    differences = []
    for top, bottom in spans:
        for left, right in spans:
            crops = [t[..., top * s : bottom * s, left * s : right * s] for t, s in inputs]
            region = whole[..., top * out : bottom * out, left * out : right * out]
            differences.append((function(*crops) - region).abs().movedim(1, 0).flatten(1))
    return torch.cat(differences, dim=1)


def _compare(tiled: torch.Tensor, whole: torch.Tensor, alone: torch.Tensor) -> None:
    """Tiled vs whole no worse than one tile alone: mean and 99th percentile."""
    difference = (tiled - whole).abs().flatten()
    assert difference.max() > 0  # the tiles did run
    assert difference.mean() <= alone.mean()
    assert difference.quantile(0.99) <= alone.flatten().quantile(0.99)


def test_the_vae_decoded_in_tiles_is_as_close_as_one_tile_and_as_diffusers(
    demo_models: ModelSet,
) -> None:
    torch.set_num_threads(1)
    vae = demo_models.base.vae
    latents = torch.randn(1, 4, SIDE // 8, SIDE // 8, generator=torch.Generator().manual_seed(3))

    def decode(z: torch.Tensor) -> torch.Tensor:
        return vae.decode(z).sample

    with torch.no_grad():
        whole = decode(latents)
        tiled = tiled_map(decode, [(latents, 1)], output_scale=8, grid=GRID)
        alone = _one_tile_alone(decode, [(latents, 1)])
        vae.enable_tiling()
        try:
            vae.tile_sample_min_size, vae.tile_latent_min_size, vae.tile_overlap_factor = (
                128,
                16,
                0.5,
            )
            reference = decode(latents)
        finally:
            vae.disable_tiling()
    _compare(tiled, whole, alone)
    ours, theirs = (tiled - whole).abs().flatten(), (reference - whole).abs().flatten()
    assert ours.mean() <= theirs.mean() and ours.quantile(0.99) <= theirs.quantile(0.99)


def test_the_transparent_decoder_in_tiles_is_as_close_as_one_tile(demo_models: ModelSet) -> None:
    torch.set_num_threads(1)
    decoder = demo_models.transparent_decoder()
    latents = torch.randn(1, 4, SIDE // 8, SIDE // 8, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        pixels = stages.vae_decode(demo_models, latents)
    inputs = [(pixels, 8), (latents / 0.18215, 1)]
    with torch.no_grad():
        whole = decoder.estimate_augmented(*(t for t, _ in inputs))
        tiled = tiled_map(decoder.estimate_augmented, inputs, output_scale=8, grid=GRID)
        alone = _one_tile_alone(decoder.estimate_augmented, inputs)
    _compare(tiled, whole, alone)
    _compare(tiled[:, :1], whole[:, :1], alone[:1])  # the alpha channel on its own


def test_the_stages_tile_when_told_and_keep_the_whole_call_otherwise(
    demo_models: ModelSet, monkeypatch: pytest.MonkeyPatch
) -> None:
    torch.set_num_threads(1)
    latents = torch.randn(1, 4, SIDE // 8, SIDE // 8, generator=torch.Generator().manual_seed(5))
    rgba = _layer(SIDE)
    untiled = Tiling(above_pixels=SIDE * SIDE)  # exactly this size still goes whole
    monkeypatch.setattr(demo_models, "tiling", untiled)
    with torch.no_grad():
        whole = (
            stages.vae_decode(demo_models, latents),
            stages.encode_transparent_source(demo_models, rgba),
        )
        monkeypatch.setattr(demo_models, "tiling", SMALL)
        tiled = (
            stages.vae_decode(demo_models, latents),
            stages.encode_transparent_source(demo_models, rgba),
        )
    vae = demo_models.base.vae
    expected = tiled_map(
        lambda z: vae.decode(z).sample,
        [(latents / vae.config.scaling_factor, 1)],
        output_scale=8,
        grid=GRID,
    )
    torch.testing.assert_close(tiled[0], (expected / 2 + 0.5).clamp(0, 1))
    for tiled_part, whole_part in zip(tiled, whole, strict=True):
        assert tiled_part.shape == whole_part.shape and not torch.equal(tiled_part, whole_part)


def test_without_a_threshold_off_cuda_images_above_two_megapixels_tile() -> None:
    cpu = torch.device("cpu")
    assert not Tiling().tiles(1448 * 1448, 2400, cpu)
    assert Tiling().tiles(2048 * 2048, 2400, cpu)
    assert Tiling(above_pixels=0).tiles(64 * 64, 1, cpu)
    assert not Tiling(above_pixels=4096 * 4096).tiles(4096 * 4096, 2400, cpu)
