"""The request ↔ generation map: exact at any aspect, for the map itself and every method.

The method sweep runs each method on the demo set with the VAE decode replaced by a loop
back: the decoded "generation" of every row is the last input the method mapped into the
generation (a condition, a control image or an img2img source). So a result is that input
mapped in and back out through the method's own code, and a marker drawn on the input must
come back exactly where it was drawn.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
import torch

from backend.methods import sd15_frames, sdxl_recipe, stages
from backend.methods.framing import Framing, framing_for
from backend.methods.registry import run_method
from backend.methods.request import GenerationRequest
from backend.model_set import ModelSet
from protocol import METHOD_SPECS, LayerRole, Method, ModelFamily, ResizeMode

# Aspects from 1:2 to 2:1 whose sides are not multiples of 64: each generation has
# another aspect or scale than its request (90 x 180 runs at 64 x 192, 90 x 135 at 64 x 128).
ASPECT_SWEEP = [(90, 180), (90, 135), (90, 90), (135, 90), (180, 90)]
MARKER = (255, 0, 0, 255)
FIELD = (120, 120, 120, 255)
FG, BG, BLEND = LayerRole.FOREGROUND, LayerRole.BACKGROUND, LayerRole.BLENDED


def marked(width: int, height: int) -> np.ndarray:
    """An opaque gray layer with a red square off-centre (towards the top right)."""
    image = np.empty((height, width, 4), dtype=np.uint8)
    image[...] = FIELD
    side = max(8, min(width, height) // 8)
    left, top = int(width * 0.65), int(height * 0.2)
    image[top : top + side, left : left + side] = MARKER
    return image


def marker_centre(image: np.ndarray) -> tuple[float, float]:
    """(x, y) of the red marker's centre of mass, weighted by how red each pixel is."""
    redness = np.clip(image[..., 0].astype(float) - image[..., 1].astype(float), 0, None)
    assert redness.sum() > 0, "no marker"
    rows, columns = np.mgrid[0 : image.shape[0], 0 : image.shape[1]]
    return (columns * redness).sum() / redness.sum(), (rows * redness).sum() / redness.sum()


# -- the map ------------------------------------------------------------------------


def test_equal_sizes_map_to_themselves_bit_for_bit() -> None:
    framing = Framing(request_size=(128, 64), generation_size=(128, 64))
    image = marked(128, 64)
    assert framing.is_identity and framing.scale == 1.0 and framing.offset == (0.0, 0.0)
    assert np.array_equal(framing.to_generation(image), image)
    assert np.array_equal(framing.to_request(image), image)


def test_the_request_lies_centred_inside_the_generation_at_one_scale() -> None:
    framing = framing_for(1000, 600, fit_to_native=False, native_area=512 * 512)
    assert framing.generation_size == (1024, 576)
    # 576 / 600 < 1024 / 1000: the height fits, the width leaves a margin of 32 px a side
    assert framing.scale == pytest.approx(0.96)
    assert framing.offset == pytest.approx((32.0, 0.0))


@pytest.mark.parametrize("native_area", [None, 512 * 512, 1024 * 1024])
@pytest.mark.parametrize(
    "size", [(100, 200), (150, 260), (333, 333), (260, 150), (200, 100), (1000, 600)]
)
def test_a_marker_goes_in_and_comes_back_where_it_was(
    size: tuple[int, int], native_area: int | None
) -> None:
    width, height = size
    framing = framing_for(
        width, height, fit_to_native=native_area is not None, native_area=native_area or 4096
    )
    image = marked(width, height)
    generated = framing.to_generation(image)
    assert generated.shape == (*framing.generation_size[::-1], 4)
    # inside the generation, the marker sits at scale · position + offset ...
    x, y = marker_centre(image)
    gen_x, gen_y = marker_centre(generated)
    scale, (left, top) = framing.scale, framing.offset
    # (centres of pixels: x + 0.5 maps to scale · (x + 0.5) + offset)
    assert gen_x + 0.5 == pytest.approx(scale * (x + 0.5) + left, abs=0.5)
    assert gen_y + 0.5 == pytest.approx(scale * (y + 0.5) + top, abs=0.5)
    # ... and comes back to where it was drawn, its size kept
    back = framing.to_request(generated)
    assert back.shape == image.shape
    assert marker_centre(back) == pytest.approx((x, y), abs=0.5)
    assert (back[..., 0] > 200).sum() == pytest.approx((image[..., 0] > 200).sum(), rel=0.15)
    # every returned pixel was generated: an opaque input comes back opaque, edge to edge
    assert (back[..., 3] == 255).all()


def test_the_margin_continues_the_inputs_edges() -> None:
    framing = framing_for(100, 200, fit_to_native=False, native_area=4096)
    left, _ = framing.offset
    assert framing.generation_size == (128, 192) and left > 10
    image = np.zeros((200, 100, 4), dtype=np.uint8)
    image[:, :50] = (0, 0, 255, 255)
    image[:, 50:] = (0, 255, 0, 255)
    generated = framing.to_generation(image)
    assert (generated[:, :8] == (0, 0, 255, 255)).all()
    assert (generated[:, -8:] == (0, 255, 0, 255)).all()


def test_the_maps_refuse_an_image_of_the_wrong_size() -> None:
    framing = framing_for(100, 200, fit_to_native=False, native_area=4096)
    with pytest.raises(ValueError, match=r"expected a \(200, 100, 4\) image"):
        framing.to_generation(np.zeros((192, 128, 4), np.uint8))
    with pytest.raises(ValueError, match=r"expected a \(192, 128, 4\) image"):
        framing.to_request(np.zeros((200, 100, 4), np.uint8))


def test_an_input_of_another_size_is_first_fitted_to_the_request_with_the_resize_mode() -> None:
    framing = framing_for(100, 200, fit_to_native=False, native_area=4096)
    full = marked(100, 200)
    half = full.reshape(100, 2, 50, 2, 4).mean(axis=(1, 3)).round().astype(np.uint8)
    mapped = framing.input_at_generation(half, ResizeMode.JUST_RESIZE)  # half the size
    direct = framing.to_generation(full)
    assert marker_centre(mapped) == pytest.approx(marker_centre(direct), abs=0.5)


# -- every method -------------------------------------------------------------------


@pytest.fixture
def loop_back(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[np.ndarray]]:
    """Record each input the method maps into the generation; decode to the last one.

    The VAE encodes of conditions and img2img sources are left out too (zero latents of
    the right shape): only where the pixels go is under test, and it keeps the sweep fast.
    """
    mapped: list[np.ndarray] = []

    def encoded(models: ModelSet, image: np.ndarray) -> torch.Tensor:
        mapped.append(image)
        height, width = image.shape[:2]
        return torch.zeros(1, 4, height // 8, width // 8, dtype=models.dtype)

    def record_control(
        request: GenerationRequest, role: LayerRole, framing: Framing
    ) -> torch.Tensor:
        tensor = control(request, role, framing)
        rgb = (tensor[0].movedim(0, -1).numpy() * 255).round().astype(np.uint8)
        mapped.append(np.concatenate([rgb, np.full((*rgb.shape[:2], 1), 255, np.uint8)], -1))
        return tensor

    def decoded_pixels(models: ModelSet, latents: torch.Tensor) -> torch.Tensor:
        rgb = torch.from_numpy(mapped[-1][..., :3].astype(np.float32) / 255).movedim(-1, 0)
        return rgb[None].expand(latents.shape[0], -1, -1, -1)

    def decoded_rgba(
        models: ModelSet, latents: torch.Tensor, pixels: torch.Tensor
    ) -> list[np.ndarray]:
        return [mapped[-1].copy() for _ in range(latents.shape[0])]

    control = sd15_frames.control_image
    monkeypatch.setattr(stages, "encode_condition", encoded)
    monkeypatch.setattr(stages, "encode_transparent_source", encoded)
    monkeypatch.setattr(sd15_frames, "control_image", record_control)
    for module in (sd15_frames, sdxl_recipe):
        monkeypatch.setattr(module, "vae_decode", decoded_pixels)
        monkeypatch.setattr(module, "transparent_decode", decoded_rgba)
    yield mapped


def _inputs_of(method: Method, width: int, height: int) -> dict[LayerRole, np.ndarray]:
    spec = METHOD_SPECS[method]
    roles = spec.required_inputs or spec.optional_inputs  # no condition: the img2img source
    return {role: marked(width, height) for role in roles}


def _sweep_methods() -> list[Method]:
    """The SD methods that map an input layer into the generation (the stand-ins here are
    SD's stages; FLUX's method maps its result back with the same `Framing`,
    tests/backend/flux/test_flux_method.py; the matted ones take no layer but a mask, and
    a split fits its picture itself, tests/backend/split)."""
    return [
        method
        for method, spec in METHOD_SPECS.items()
        if set(spec.required_inputs + spec.optional_inputs) - {LayerRole.MASK}
        and spec.family in (ModelFamily.SD15, ModelFamily.SDXL)
    ]


@pytest.mark.parametrize("size", ASPECT_SWEEP, ids=lambda size: f"{size[0]}x{size[1]}")
@pytest.mark.parametrize("method", _sweep_methods(), ids=lambda method: method.value)
def test_every_layer_of_every_method_lies_on_its_input(
    method: Method,
    size: tuple[int, int],
    loop_back: list[np.ndarray],
    demo_models: ModelSet,
    demo_sdxl_models: ModelSet,
) -> None:
    width, height = size
    spec = METHOD_SPECS[method]
    models = demo_models if spec.family is ModelFamily.SD15 else demo_sdxl_models
    inputs = _inputs_of(method, width, height)
    request = GenerationRequest(
        method=method, prompt="a marker", inputs=inputs, width=width, height=height, steps=1
    )
    result = run_method(request, models)
    assert loop_back, "the method mapped no input into the generation"
    drawn = marker_centre(marked(width, height))
    for role in spec.outputs:
        layer = result.images[0][role]
        assert layer.shape == (height, width, 4), role
        assert marker_centre(layer) == pytest.approx(drawn, abs=0.5), role
