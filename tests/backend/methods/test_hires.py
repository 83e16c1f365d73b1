"""The second pass: near the native area first, then at the canvas's size from it.

docs/protocol.md, "A second pass at the canvas's size". The demo set runs it on a CPU at
the smallest sizes that need one (576² for SD1.5, whose native area is 512²).
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from backend.layerdiffuse import SD15LayerHandle, TileGrid, Tiling, tile_spans
from backend.methods import hires, registry, stages
from backend.methods.registry import run_method
from backend.methods.request import GenerationRequest, GenerationResult
from backend.model_set import ModelSet
from protocol import Hires, LayerRole, Method, Sampler

FG, BG, BLEND, MASK = (
    LayerRole.FOREGROUND,
    LayerRole.BACKGROUND,
    LayerRole.BLENDED,
    LayerRole.MASK,
)
SIDE = 576  # above 1.2 × 512²: auto makes a second pass


def _request(method: Method = Method.SD15_TRANSPARENT, **fields: object) -> GenerationRequest:
    options: dict[str, object] = {
        "method": method,
        "prompt": "a glass cup",
        "width": SIDE,
        "height": SIDE,
        "steps": 2,
        "cfg_scale": 1.0,
        "sampler": Sampler.EULER,
        "seed": 9,
        "hires_strength": 0.6,
        **fields,
    }
    return GenerationRequest(**options)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("method", "width", "height", "mode", "expected"),
    [
        (Method.SD15_TRANSPARENT, 576, 576, Hires.AUTO, True),
        (Method.SD15_TRANSPARENT, 560, 560, Hires.AUTO, False),  # within 20 % of 512²
        (Method.SD15_TRANSPARENT, 560, 560, Hires.ON, True),
        (Method.SD15_TRANSPARENT, 512, 512, Hires.ON, False),  # nothing to refine
        (Method.SD15_TRANSPARENT, 4096, 4096, Hires.OFF, False),
        (Method.SDXL_BG_TO_FG, 1152, 1152, Hires.AUTO, True),
        (Method.SDXL_BG_TO_FG, 1024, 1152, Hires.AUTO, False),
    ],
)
def test_when_a_request_gets_a_second_pass(
    method: Method, width: int, height: int, mode: Hires, expected: bool
) -> None:
    request = GenerationRequest(method=method, width=width, height=height, hires=mode)
    assert hires.has_second_pass(request) is expected


def _watch_unet(
    models: ModelSet,
) -> tuple[list[tuple[int, ...]], torch.utils.hooks.RemovableHandle]:
    shapes: list[tuple[int, ...]] = []

    def look(module: torch.nn.Module, args: tuple[torch.Tensor, ...]) -> None:
        shapes.append(tuple(args[0].shape[-2:]))

    return shapes, models.base.unet.register_forward_pre_hook(look)


def test_two_passes_refine_the_first_at_full_size_with_alpha(
    demo_models: ModelSet, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Pass 1 at 512², pass 2 at 576² from pass 1's layer through the transparent encoder;
    one progress bar over both."""
    torch.set_num_threads(1)
    firsts: list[GenerationResult] = []
    runner = registry.METHOD_RUNNERS[Method.SD15_TRANSPARENT]

    def recorded(request: GenerationRequest, models: ModelSet, on_step: object) -> GenerationResult:
        result = runner(request, models, on_step)  # type: ignore[arg-type]
        if not request.refine:
            firsts.append(result)
        return result

    monkeypatch.setitem(registry.METHOD_RUNNERS, Method.SD15_TRANSPARENT, recorded)
    encoded: list[np.ndarray] = []
    encode = stages.encode_transparent_source

    def spy(models: ModelSet, rgba: np.ndarray) -> torch.Tensor:
        encoded.append(rgba)
        return encode(models, rgba)

    monkeypatch.setattr(stages, "encode_transparent_source", spy)
    steps: list[tuple[int, int]] = []
    shapes, hook = _watch_unet(demo_models)
    try:
        result = run_method(
            _request(),
            demo_models,
            lambda step, total, latents: steps.append((step, total)),
        )
    finally:
        hook.remove()
    # Pass 1 near the native area (2 Euler steps), then pass 2 at full size (0.6 of 2
    # steps: 2 calls).
    assert shapes == [(64, 64)] * 2 + [(72, 72)] * 2
    assert steps == [(1, 4), (2, 4), (3, 4), (4, 4)]
    (first,) = firsts
    assert first.generation_size == (512, 512) and result.generation_size == (SIDE, SIDE)
    # Pass 2 started from pass 1's foreground, alpha and all (the request's size is the
    # generation's here, so the layer goes in unresampled).
    (source,) = encoded
    assert np.array_equal(source, first.images[0][FG]) and source[..., 3].std() > 0
    refined = result.images[0][FG]
    assert refined.shape == (SIDE, SIDE, 4) and not np.array_equal(refined, source)
    assert result.seeds == first.seeds == [9]


def test_each_result_is_refined_from_its_own_layers_with_its_seed(
    demo_models: ModelSet, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Frames and batches: pass 2 runs once per result; rows of a result are its frames,
    so result i's seed is seed + 2i."""
    torch.set_num_threads(1)
    seen: list[tuple[int, int, dict[LayerRole, np.ndarray]]] = []
    results: list[GenerationResult] = []
    runner = registry.METHOD_RUNNERS[Method.SD15_FG_TO_BG]

    def recorded(request: GenerationRequest, models: ModelSet, on_step: object) -> GenerationResult:
        seen.append((request.seed, request.batch_size, request.refine))
        results.append(runner(request, models, on_step))  # type: ignore[arg-type]
        return results[-1]

    monkeypatch.setitem(registry.METHOD_RUNNERS, Method.SD15_FG_TO_BG, recorded)
    foreground = np.full((SIDE, SIDE, 4), 120, dtype=np.uint8)
    request = _request(Method.SD15_FG_TO_BG, inputs={FG: foreground}, batch_size=2, steps=1)
    result = run_method(request, demo_models)
    assert [(seed, size) for seed, size, _ in seen] == [(9, 2), (9, 1), (11, 1)]
    first = results[0].images
    for (_, _, refine), layers in zip(seen[1:], first, strict=True):
        assert refine.keys() == {BG, BLEND}
        assert all(np.array_equal(refine[role], layers[role]) for role in refine)
    assert result.seeds == [9, 11] and len(result.images) == 2
    off = run_method(replace(request, hires=Hires.OFF, batch_size=1), demo_models)
    assert off.generation_size == (SIDE, SIDE) and len(seen) == 4  # one pass, at the size


def test_above_its_threshold_the_unet_predicts_in_tiles_with_its_part_of_the_control(
    demo_models: ModelSet, monkeypatch: pytest.MonkeyPatch
) -> None:
    """sd15_fg2bg's control image is cropped with the sample: each tile's call sees the
    control of its own pixels. Both passes keep the selection."""
    torch.set_num_threads(1)
    monkeypatch.setattr(
        demo_models, "tiling", Tiling(unet_above=0, unet_tile=256, tile=256, overlap=128)
    )
    foreground = np.zeros((SIDE, SIDE, 4), dtype=np.uint8)
    foreground[..., 0] = np.arange(SIDE, dtype=np.uint16)[None, :] * 255 // SIDE
    foreground[..., 1] = np.arange(SIDE, dtype=np.uint16)[:, None] * 255 // SIDE
    foreground[..., 3] = 255
    mask = np.zeros((SIDE, SIDE, 4), dtype=np.uint8)
    mask[:, SIDE // 2 :, 3] = 255
    controls: list[torch.Tensor] = []
    set_control = SD15LayerHandle.set_control

    def spy(self: SD15LayerHandle, image: torch.Tensor) -> None:
        controls.append(image.clone())
        set_control(self, image)

    monkeypatch.setattr(SD15LayerHandle, "set_control", spy)
    shapes, hook = _watch_unet(demo_models)
    try:
        request = _request(Method.SD15_FG_TO_BG, inputs={FG: foreground, MASK: mask}, steps=1)
        layers = run_method(request, demo_models).images[0]
    finally:
        hook.remove()
    assert (layers[BG][..., 3] == mask[..., 3]).all()  # an opaque layer: alpha = selection
    assert np.array_equal(layers[BLEND][:, : SIDE // 2], foreground[:, : SIDE // 2])
    grid = TileGrid(32, 8, multiple=8)  # 256-pixel tiles overlapping by a quarter
    assert demo_models.tiling.unet_grid(SIDE, SIDE, 512 * 512) == grid
    # One UNet call a pass (1 step; 0.6 of 1 step is 1 call), on every tile: pass 1 at
    # 512² (3 × 3 tiles), pass 2 at 576² (3 × 3 tiles).
    first, second = tile_spans(512 // 8, grid), tile_spans(SIDE // 8, grid)
    assert shapes == [(32, 32)] * (len(first) ** 2 + len(second) ** 2)
    # Each pass sets the whole control, then each tile's part of it, in order.
    whole = controls[1 + len(first) ** 2]
    assert whole.shape[-2:] == (SIDE, SIDE)
    windows = [(top, left) for top, _ in second for left, _ in second]
    for (top, left), crop in zip(windows, controls[-len(windows) :], strict=True):
        assert torch.equal(crop, whole[..., top * 8 : top * 8 + 256, left * 8 : left * 8 + 256])
