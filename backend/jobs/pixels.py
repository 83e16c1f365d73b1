"""Wire pixels ↔ the methods' arrays: BGRA/RGBA bytes and PNG, straight alpha, uint8."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, UnidentifiedImageError

from protocol import BadImage, ImageRef, PixelFormat

# Krita's RGBA8 pixelData is B, G, R, A per pixel (little-endian ARGB words).
_BGRA_ORDER = [2, 1, 0, 3]
PNG_COMPRESS_LEVEL = 1  # 0.2–0.4 s per 2048² layer instead of 0.7–2.8 s (performance.md §6.3)


def decode_image(ref: ImageRef, data: bytes | bytearray | memoryview) -> np.ndarray:
    """An announced image's bytes as (height, width, 4) uint8 straight RGBA.

    Raises:
        BadImage: PNG bytes that do not decode, or decode to another size.
    """
    if ref.format is PixelFormat.PNG:
        try:
            with Image.open(io.BytesIO(data)) as image:
                rgba = np.asarray(image.convert("RGBA"))
        except (OSError, UnidentifiedImageError, ValueError) as error:
            raise BadImage(f"image {ref.id}: not a readable png: {error}") from error
        if rgba.shape[:2] != (ref.height, ref.width):
            raise BadImage(
                f"image {ref.id}: png is {rgba.shape[1]}x{rgba.shape[0]}, "
                f"announced {ref.width}x{ref.height}"
            )
        return rgba
    pixels = np.frombuffer(data, dtype=np.uint8).reshape(ref.height, ref.width, 4)
    if ref.format is PixelFormat.BGRA8:
        return np.ascontiguousarray(pixels[..., _BGRA_ORDER])
    return pixels.copy()


def encode_image(rgba: np.ndarray, format: PixelFormat) -> bytes:
    """(height, width, 4) uint8 straight RGBA → bytes in the client's format."""
    if format is PixelFormat.PNG:
        buffer = io.BytesIO()
        Image.fromarray(rgba, "RGBA").save(buffer, format="PNG", compress_level=PNG_COMPRESS_LEVEL)
        return buffer.getvalue()
    if format is PixelFormat.BGRA8:
        return np.ascontiguousarray(rgba[..., _BGRA_ORDER]).tobytes()
    return np.ascontiguousarray(rgba).tobytes()
