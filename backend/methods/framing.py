"""Where the request's pixels lie in the generation, and back: one exact geometric map.

A request asks for results at `width` × `height`; the model runs at a generation size
whose sides are multiples of 64, often of a slightly different aspect (1000 × 600 runs at
1024 × 576). `Framing` maps the request's rectangle into the generation by one uniform
scale and a centring offset,

    generation = scale · request + offset,   scale = min(w / W, h / H),

so the whole request lies inside the generation and the generation's extra margin (under
64 px at generation scale along one axis, or the small aspect error of a native size) is
generated around it. Inputs go into the generation with that map (`to_generation`; the
margin continues the input's edge pixels) and every result comes back with its inverse
(`to_request`), sub-pixel exact: a feature at request pixel (x, y) of an input is at
(x, y) of every result, at any aspect. Fitting the result back with a resize mode instead
would crop the other axis than the input's fit did, and zoom.

Resampling is per axis with the same filters as `sizing` (box when shrinking, Lanczos
when growing), on premultiplied colour, through Pillow's fractional source box, so no
offset is rounded to a pixel. When the two sizes are equal, both maps are the identity.

How an input layer of *another* size than the request is fitted to it is the request's
`resize_mode` (`fit_rgba`), as the original fits its uploaded layers to its size.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from protocol.methods import ResizeMode

from .sizing import fit_rgba, generation_size, resample_rgba


@dataclass(frozen=True)
class Framing:
    """The map between a request's pixels and its generation's.

    Attributes:
        request_size: (width, height) the results come back at.
        generation_size: (width, height) the model runs at, multiples of 64.
    """

    request_size: tuple[int, int]
    generation_size: tuple[int, int]

    @property
    def scale(self) -> float:
        """Generation pixels per request pixel (the same on both axes)."""
        (width, height), (gen_width, gen_height) = self.request_size, self.generation_size
        return min(gen_width / width, gen_height / height)

    @property
    def offset(self) -> tuple[float, float]:
        """(x, y) of the request's top-left corner in the generation, in its pixels."""
        (width, height), (gen_width, gen_height) = self.request_size, self.generation_size
        scale = self.scale
        return (gen_width - width * scale) / 2, (gen_height - height * scale) / 2

    @property
    def is_identity(self) -> bool:
        return self.request_size == self.generation_size

    def to_generation(self, image: np.ndarray) -> np.ndarray:
        """An image at the request size → the generation size, the margin edge-extended.

        Args:
            image: (H, W, 4) uint8 straight RGBA at `request_size`.

        Returns:
            (h, w, 4) uint8 straight RGBA at `generation_size`.

        Raises:
            ValueError: the image is not at the request size.
        """
        self._check(image, self.request_size)
        if self.is_identity:
            return image.copy()
        scale, (left, top) = self.scale, self.offset
        gen_width, gen_height = self.generation_size
        # The generation seen from the request: it reaches left/scale beyond each side.
        margin_x, margin_y = math.ceil(left / scale) + 2, math.ceil(top / scale) + 2
        padded = np.pad(image, ((margin_y, margin_y), (margin_x, margin_x), (0, 0)), mode="edge")
        box = (
            margin_x - left / scale,
            margin_y - top / scale,
            margin_x + (gen_width - left) / scale,
            margin_y + (gen_height - top) / scale,
        )
        return resample_rgba(padded, gen_width, gen_height, box)

    def to_request(self, image: np.ndarray) -> np.ndarray:
        """A result at the generation size → the request size: its request rectangle.

        Args:
            image: (h, w, 4) uint8 straight RGBA at `generation_size`.

        Returns:
            (H, W, 4) uint8 straight RGBA at `request_size`.

        Raises:
            ValueError: the image is not at the generation size.
        """
        self._check(image, self.generation_size)
        if self.is_identity:
            return image.copy()
        scale, (left, top) = self.scale, self.offset
        (width, height), (gen_width, gen_height) = self.request_size, self.generation_size
        box = (
            max(0.0, left),
            max(0.0, top),
            min(float(gen_width), left + width * scale),
            min(float(gen_height), top + height * scale),
        )
        return resample_rgba(image, width, height, box)

    def input_at_generation(self, image: np.ndarray, mode: ResizeMode) -> np.ndarray:
        """An input layer of any size: fitted to the request with `mode`, then mapped in.

        Args:
            image: (H', W', 4) uint8 straight RGBA.
            mode: how a layer of another size than the request's is fitted to it.

        Returns:
            (h, w, 4) uint8 straight RGBA at `generation_size`.
        """
        return self.to_generation(fit_rgba(image, *self.request_size, mode))

    @staticmethod
    def _check(image: np.ndarray, size: tuple[int, int]) -> None:
        width, height = size
        if image.ndim != 3 or image.shape[:2] != (height, width) or image.shape[2] != 4:
            raise ValueError(f"expected a ({height}, {width}, 4) image, got {image.shape}")


def framing_for(width: int, height: int, *, fit_to_native: bool, native_area: int) -> Framing:
    """The framing of a request: its size and the generation size the model runs at.

    Args:
        width / height: the request's size.
        fit_to_native: generate near `native_area` (else at the size rounded to 64).
        native_area: the model's native pixel count (512² SD1.5, 1024² SDXL).
    """
    size = generation_size(width, height, native_area=native_area if fit_to_native else None)
    return Framing(request_size=(width, height), generation_size=size)
