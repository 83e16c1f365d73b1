"""protocol.limits: the defaults of the doc's table, documented and checked."""

from __future__ import annotations

import dataclasses
import inspect
import re
from pathlib import Path

import pytest

from protocol.limits import DEFAULT_LIMITS, Limits

DOC = Path(__file__).resolve().parents[2] / "docs" / "protocol.md"


def test_the_defaults_are_the_doc_table() -> None:
    """Every row of the Limits table is a field with that default, in that order."""
    rows = re.findall(r"^\| `(max_\w+)` \| ([\d,]+) \|", DOC.read_text(), re.MULTILINE)
    assert [(f.name, f.default) for f in dataclasses.fields(Limits)] == [
        (name, int(value.replace(",", ""))) for name, value in rows
    ]
    assert Limits() == DEFAULT_LIMITS


def test_every_field_has_a_docstring() -> None:
    """Each field is followed by a docstring giving its unit."""
    source = inspect.getsource(Limits)
    for field in dataclasses.fields(Limits):
        assert re.search(rf"{field.name}: int = [\d_]+\n\s+\"\"\"\S", source), field.name


def test_limits_are_frozen() -> None:
    """A connection's limits cannot change under it."""
    with pytest.raises(dataclasses.FrozenInstanceError):
        DEFAULT_LIMITS.max_steps = 1000  # type: ignore[misc]


@pytest.mark.parametrize("value", [0, -1, 1.5, True, "8"])
def test_a_limit_must_be_a_positive_integer(value: object) -> None:
    """Building limits with a nonsense value is a programming error."""
    with pytest.raises(ValueError, match=r"^max_inputs must be a positive integer, got "):
        Limits(max_inputs=value)  # type: ignore[arg-type]
