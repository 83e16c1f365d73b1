"""The matting fallback (`sd15_matted`, `sdxl_matted`): generate on gray, matte, un-mix.

The colour solve is checked exactly on a picture composed over a known background with a
matting model that returns the true alpha; the methods run end to end on the demo sets
(the SDXL one named as an Illustrious-XL checkpoint, as a painter would meet it).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from backend.errors import ModelNotFound
from backend.methods.infotext import format_parameters
from backend.methods.matted import (
    BACKGROUND_NEGATIVE,
    GRAY_PROMPT,
    background_colour,
    gray_prompts,
    matte_picture,
)
from backend.methods.registry import run_method
from backend.methods.request import GenerationRequest
from backend.model_set import ModelSet
from protocol import LayerRole, Method

FG = LayerRole.FOREGROUND


class KnownAlpha(nn.Module):
    """A 'matting model' that answers a fixed alpha (as logits) at its input size."""

    def __init__(self, alpha: np.ndarray) -> None:
        super().__init__()
        self.input_size = alpha.shape[0]
        self.anchor = nn.Parameter(torch.zeros(1))
        clipped = np.clip(alpha.astype(np.float64) / 255, 1e-6, 1 - 1e-6)
        self.logits = torch.from_numpy(np.log(clipped / (1 - clipped))).float()[None, None]

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return F.interpolate(self.logits, size=pixels.shape[-2:], mode="nearest")


def composed(background: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A red disc with a soft edge over a flat background: (picture, alpha, colour)."""
    side = 64
    y, x = np.mgrid[:side, :side]
    distance = np.hypot(x - 32, y - 32)
    alpha = (np.clip((20 - distance) / 6, 0, 1) * 255).round().astype(np.uint8)
    colour = np.array([220, 30, 40], dtype=np.float64)
    a = alpha[..., None] / 255
    picture = (a * colour + (1 - a) * np.array(background)).round().astype(np.uint8)
    rgba = np.concatenate([picture, np.full((side, side, 1), 255, np.uint8)], axis=2)
    return rgba, alpha, colour


def test_the_colour_is_solved_from_the_background_actually_painted() -> None:
    rgba, alpha, colour = composed((120, 126, 131))  # near-gray, not 0.5
    matted = matte_picture(rgba, KnownAlpha(alpha))
    assert np.array_equal(matted[..., 3], alpha)
    edge = (alpha > 40) & (alpha < 255)
    assert edge.any()
    error = np.abs(matted[edge][:, :3].astype(float) - colour).max()
    assert error <= 8, error  # uint8 rounding of the composite, divided by a small alpha
    solid = alpha == 255
    assert np.abs(matted[solid][:, :3].astype(float) - colour).max() <= 1


def test_the_background_colour_is_measured_or_assumed_gray() -> None:
    rgba, alpha, _ = composed((100, 110, 120))
    assert np.allclose(background_colour(rgba[..., :3], alpha), [100 / 255, 110 / 255, 120 / 255])
    everywhere = np.full_like(alpha, 255)
    assert np.allclose(background_colour(rgba[..., :3], everywhere), 0.5)


def test_the_prompts_ask_for_a_plain_gray_background() -> None:
    request = GenerationRequest(Method.SDXL_MATTED, prompt="a fox", negative_prompt="bad")
    assert gray_prompts(request) == (f"a fox, {GRAY_PROMPT}", f"bad, {BACKGROUND_NEGATIVE}")
    assert gray_prompts(GenerationRequest(Method.SDXL_MATTED)) == (GRAY_PROMPT, BACKGROUND_NEGATIVE)


def test_the_illustrious_demo_warns_and_its_fallback_returns_a_matted_layer(
    demo_illustrious_models: ModelSet,
) -> None:
    models = demo_illustrious_models
    assert models.warning is not None and "Illustrious-XL" in models.warning
    assert "(sdxl_matted)" in models.warning and models.base.name.startswith("demo-illustrious")
    request = GenerationRequest(Method.SDXL_MATTED, prompt="a fox", width=72, height=64, steps=2)
    steps = []
    result = run_method(request, models, lambda step, total, _: steps.append(step))
    [layers] = result.images
    layer = layers[FG]
    assert layer.shape == (64, 72, 4) and steps == [1, 2]
    assert len(np.unique(layer[..., 3])) > 1  # a matte, not an opaque picture
    text = format_parameters(request, result.seeds[0], models.base.name, result.generation_size)
    assert "layerdiffusion_enabled: False" in text
    assert 'layerdiffusion_fallback: "generated on neutral gray without a layer model' in text


def test_sd15_matted_runs_and_a_selection_shapes_it(demo_models: ModelSet) -> None:
    assert demo_models.warning is None
    mask = np.zeros((64, 64, 4), dtype=np.uint8)
    mask[16:48, 16:48, 3] = 255
    request = GenerationRequest(
        Method.SD15_MATTED,
        prompt="a fox",
        steps=2,
        width=64,
        height=64,
        inputs={LayerRole.MASK: mask},
    )
    layer = run_method(request, demo_models).images[0][FG]
    assert (layer[mask[..., 3] == 0, 3] == 0).all()


def test_a_set_without_a_matting_model_says_so(demo_models: ModelSet) -> None:
    loader = demo_models.load_matting
    try:
        demo_models.load_matting, demo_models._matting = None, None
        with pytest.raises(ModelNotFound, match="no matting model"):
            demo_models.matting_model()
    finally:
        demo_models.load_matting = loader
