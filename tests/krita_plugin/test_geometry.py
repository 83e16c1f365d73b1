"""Extents, bounds and the work region."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from krita_plugin.geometry import Bounds, Extent, work_region

coordinates = st.integers(-50, 150)
sizes = st.integers(0, 120)
bounds = st.builds(Bounds, coordinates, coordinates, sizes, sizes)


def test_extent_pixels_and_emptiness() -> None:
    assert Extent(3, 4).pixels == 12
    assert not Extent(3, 4).is_empty
    assert Extent(0, 4).is_empty


def test_bounds_of_an_extent_is_the_whole_canvas() -> None:
    assert Bounds.of(Extent(64, 48)) == Bounds(0, 0, 64, 48)
    assert Bounds(5, 6, 7, 8).extent == Extent(7, 8)
    assert (Bounds(5, 6, 7, 8).right, Bounds(5, 6, 7, 8).bottom) == (12, 14)


def test_intersection_of_overlapping_and_separate_rectangles() -> None:
    assert Bounds(0, 0, 10, 10).intersection(Bounds(5, 5, 10, 10)) == Bounds(5, 5, 5, 5)
    assert Bounds(0, 0, 10, 10).intersection(Bounds(20, 0, 5, 5)).is_empty
    assert Bounds(0, 0, 10, 10).intersection(Bounds(10, 0, 5, 5)).is_empty  # touching edges


@given(bounds, bounds)
def test_intersection_lies_in_both(a: Bounds, b: Bounds) -> None:
    overlap = a.intersection(b)
    if not overlap.is_empty:
        assert a.contains(overlap)
        assert b.contains(overlap)
    assert overlap == b.intersection(a) or (overlap.is_empty and b.intersection(a).is_empty)


def test_relative_to_moves_the_origin() -> None:
    assert Bounds(12, 9, 4, 4).relative_to(Bounds(10, 5, 20, 20)) == Bounds(2, 4, 4, 4)


def test_the_work_region_is_the_canvas_without_a_selection() -> None:
    assert work_region(Extent(64, 48), None) == Bounds(0, 0, 64, 48)
    assert work_region(Extent(64, 48), Bounds(3, 3, 0, 0)) == Bounds(0, 0, 64, 48)


def test_the_work_region_is_the_selection_clipped_to_the_canvas() -> None:
    assert work_region(Extent(64, 48), Bounds(10, 6, 20, 12)) == Bounds(10, 6, 20, 12)
    assert work_region(Extent(64, 48), Bounds(50, 40, 40, 40)) == Bounds(50, 40, 14, 8)
    assert work_region(Extent(64, 48), Bounds(-5, -5, 10, 10)) == Bounds(0, 0, 5, 5)


def test_a_selection_off_the_canvas_gives_an_empty_region() -> None:
    assert work_region(Extent(64, 48), Bounds(100, 100, 10, 10)).is_empty
