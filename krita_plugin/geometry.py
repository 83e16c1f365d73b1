"""Sizes and rectangles in document pixels (pure: no Krita, no Qt)."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Bounds", "Extent", "work_region"]


@dataclass(frozen=True)
class Extent:
    """A size in pixels; both sides are positive for anything that holds pixels."""

    width: int
    height: int

    @property
    def pixels(self) -> int:
        return self.width * self.height

    @property
    def is_empty(self) -> bool:
        return self.width <= 0 or self.height <= 0


@dataclass(frozen=True)
class Bounds:
    """A rectangle: top-left corner (may be negative) and size.

    Attributes:
        x / y: the top-left pixel.
        width / height: pixels; zero or less means empty.
    """

    x: int
    y: int
    width: int
    height: int

    @staticmethod
    def of(extent: Extent) -> Bounds:
        """The whole of a canvas of this size."""
        return Bounds(0, 0, extent.width, extent.height)

    @property
    def extent(self) -> Extent:
        return Extent(self.width, self.height)

    @property
    def is_empty(self) -> bool:
        return self.width <= 0 or self.height <= 0

    @property
    def right(self) -> int:
        """One past the last column."""
        return self.x + self.width

    @property
    def bottom(self) -> int:
        """One past the last row."""
        return self.y + self.height

    def intersection(self, other: Bounds) -> Bounds:
        """The overlap of two rectangles; empty (size 0) where they do not meet."""
        x, y = max(self.x, other.x), max(self.y, other.y)
        right, bottom = min(self.right, other.right), min(self.bottom, other.bottom)
        if right <= x or bottom <= y:
            return Bounds(x, y, 0, 0)
        return Bounds(x, y, right - x, bottom - y)

    def contains(self, other: Bounds) -> bool:
        """Whether `other` lies wholly inside this rectangle."""
        return (
            self.x <= other.x
            and self.y <= other.y
            and other.right <= self.right
            and other.bottom <= self.bottom
        )

    def relative_to(self, origin: Bounds) -> Bounds:
        """This rectangle in the coordinates of `origin`'s top-left corner."""
        return Bounds(self.x - origin.x, self.y - origin.y, self.width, self.height)


def work_region(canvas: Extent, selection: Bounds | None) -> Bounds:
    """Where a job reads and writes: the selection's bounds on the canvas, else the canvas.

    Returns:
        The region; empty when the selection lies wholly outside the canvas.
    """
    whole = Bounds.of(canvas)
    if selection is None or selection.is_empty:
        return whole
    return selection.intersection(whole)
