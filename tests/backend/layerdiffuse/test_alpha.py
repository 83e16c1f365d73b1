"""pad_rgb equals the reference's OpenCV pyramid; previews and channel order as the reference."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from backend.layerdiffuse import (
    checkerboard,
    checkerboard_preview,
    decoder_output_to_rgba,
    encoder_input,
    pad_rgb,
)


def reference_pad_rgb(rgba: np.ndarray) -> np.ndarray:
    """layerdiffuse.md §2.2, with the OpenCV calls the reference makes."""
    image = rgba.astype(np.float32) / 255.0
    colour, alpha = image[..., :3] * image[..., 3:], image[..., 3:]
    pyramid = [(colour, alpha)]
    while min(alpha.shape[:2]) > 1:
        height, width = alpha.shape[:2]
        size = (int(width / 1.2), int(height / 1.2))
        colour = cv2.resize(colour, size, interpolation=cv2.INTER_AREA)
        alpha = cv2.resize(alpha, size, interpolation=cv2.INTER_AREA)[:, :, None]
        pyramid.append((colour, alpha))
    top_colour, top_alpha = pyramid[-1]
    fill = top_colour.sum(axis=(0, 1), keepdims=True) / np.clip(
        top_alpha.sum(axis=(0, 1), keepdims=True), 1e-8, 1e32
    )
    for colour, alpha in reversed(pyramid):
        fill = cv2.resize(fill, (colour.shape[1], colour.shape[0]), interpolation=cv2.INTER_LINEAR)
        fill = colour + fill * (1.0 - alpha)
    return fill


def random_layer(height: int, width: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, (height, width, 4), dtype=np.uint8)
    yy, xx = np.mgrid[:height, :width]
    blob = (yy - height / 2) ** 2 + (xx - width / 3) ** 2 < (min(height, width) / 3) ** 2
    image[..., 3] = np.where(blob, image[..., 3], 0)
    return image


@pytest.mark.parametrize(
    "size", [(64, 64), (100, 37), (37, 100), (257, 513), (2, 2), (1, 9), (3, 50), (640, 512)]
)
def test_pad_rgb_equals_the_reference(size: tuple[int, int]) -> None:
    image = random_layer(*size, seed=sum(size))
    result = pad_rgb(image)
    assert result.shape == (*size, 3) and result.dtype == np.float32
    np.testing.assert_allclose(result, reference_pad_rgb(image), atol=2e-6)


def test_pad_rgb_keeps_opaque_colour_and_fills_transparency_smoothly() -> None:
    image = np.zeros((96, 96, 4), dtype=np.uint8)
    image[:, :48] = (200, 40, 10, 255)
    result = pad_rgb(image)
    np.testing.assert_allclose(
        result[:, :48], np.broadcast_to([200 / 255, 40 / 255, 10 / 255], (96, 48, 3)), atol=1e-6
    )
    # The transparent half takes the visible colour, not black.
    assert (result[:, 60:, 0] > 0.5).all()
    assert (np.abs(result[:, 60:] - result[:, 59:60]) < 0.05).all()


def test_pad_rgb_of_a_fully_transparent_image_is_black_as_the_reference() -> None:
    image = np.zeros((16, 16, 4), dtype=np.uint8)
    image[..., :3] = 255
    np.testing.assert_allclose(pad_rgb(image), reference_pad_rgb(image), atol=0)


def test_pad_rgb_rejects_non_rgba() -> None:
    with pytest.raises(ValueError, match="uint8"):
        pad_rgb(np.zeros((4, 4, 3), dtype=np.uint8))
    with pytest.raises(ValueError, match="uint8"):
        pad_rgb(np.zeros((4, 4, 4), dtype=np.float32))


@pytest.mark.parametrize("size", [(128, 192), (100, 150), (64, 64)])
def test_checkerboard_matches_the_reference_cells(size: tuple[int, int]) -> None:
    height, width = size
    cells = (np.indices((height // 64, width // 64)).sum(axis=0) % 2).astype(np.float32)
    expected = cv2.resize(cells, (width, height), interpolation=cv2.INTER_NEAREST)
    expected = 0.5 + (expected - 0.5) * 0.1
    np.testing.assert_allclose(checkerboard(height, width), expected, atol=1e-7)


def test_preview_composites_over_the_checkerboard() -> None:
    image = np.zeros((128, 128, 4), dtype=np.uint8)
    image[:64, :64] = (255, 0, 0, 255)
    preview = checkerboard_preview(image)
    assert preview.shape == (128, 128, 3)
    assert tuple(preview[0, 0]) == (255, 0, 0)
    assert tuple(preview[0, 64]) == (140, 140, 140)  # 0.55 · 255, truncated
    assert tuple(preview[64, 64]) == (114, 114, 114)  # 0.45 · 255


def test_decoder_output_channel_order() -> None:
    output = torch.zeros(1, 4, 2, 2)
    output[:, 0] = 0.5  # alpha
    output[:, 1] = 1.0  # red
    output[:, 3] = 2.0  # blue, clipped
    (rgba,) = decoder_output_to_rgba(output)
    assert rgba.dtype == np.uint8
    assert tuple(rgba[0, 0]) == (255, 0, 255, 127)


def test_encoder_input_is_alpha_then_padded_rgb() -> None:
    image = random_layer(32, 40, seed=3)
    x = encoder_input(image)
    assert x.shape == (1, 4, 32, 40) and x.dtype == torch.float32
    np.testing.assert_allclose(x[0, 0].numpy(), image[..., 3] / 255.0, atol=1e-7)
    np.testing.assert_allclose(x[0, 1:].permute(1, 2, 0).numpy(), pad_rgb(image), atol=0)
