"""protocol.errors: the wire codes, the exception tree and its drawing."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import protocol.errors as errors
from protocol.errors import ErrorCode, ProtocolError, describe, error_for

DOC = Path(__file__).resolve().parents[2] / "docs" / "protocol.md"
SUBCLASSES = [
    errors.BadMessage,
    errors.UnknownType,
    errors.MissingField,
    errors.InvalidField,
    errors.UnsupportedVersion,
    errors.NotReady,
    errors.LimitExceeded,
    errors.QueueFull,
    errors.UnknownJob,
    errors.DuplicateJob,
    errors.BadImage,
    errors.InvalidRequest,
    errors.ModelUnavailable,
    errors.InternalError,
]


def test_the_codes_are_exactly_those_of_the_doc() -> None:
    """ErrorCode holds the codes listed under "Error codes" in docs/protocol.md, no more."""
    text = DOC.read_text()
    section = text[text.index("### Error codes") : text.index("## A whole job")]
    paragraph = section.split("\n\n")[1]
    documented = set(re.findall(r"`([a-z_]+)`", paragraph)) - {"hello", "error"}
    assert {code.value for code in ErrorCode} == documented
    assert len(ErrorCode) == 14


def test_each_code_has_exactly_one_exception() -> None:
    """The fourteen subclasses cover the fourteen codes one to one."""
    assert sorted(cls.code.value for cls in SUBCLASSES) == sorted(c.value for c in ErrorCode)
    for cls in SUBCLASSES:
        assert issubclass(cls, ProtocolError)
        assert cls.__name__.lower() == cls.code.value.replace("_", "")


def test_the_tree_is_drawn_in_the_module_docstring() -> None:
    """Each class appears in the drawing beside its wire code."""
    for cls in SUBCLASSES:
        assert re.search(rf"{cls.__name__}\s+{cls.code.value}:", errors.__doc__ or "")


def test_an_error_carries_its_message_and_job() -> None:
    """str() is the message; job is keyword-only and defaults to None."""
    error = errors.QueueFull("queue full: 8 unfinished jobs", job="j1")
    assert str(error) == "queue full: 8 unfinished jobs"
    assert (error.message, error.job, error.code) == (
        "queue full: 8 unfinished jobs",
        "j1",
        ErrorCode.QUEUE_FULL,
    )
    assert errors.BadMessage("x").job is None


@pytest.mark.parametrize("cls", SUBCLASSES)
def test_error_for_builds_the_class_of_a_code(cls: type[ProtocolError]) -> None:
    """A client can raise what it received: code → the matching subclass."""
    error = error_for(cls.code, "message", "j9")
    assert type(error) is cls
    assert (str(error), error.job) == ("message", "j9")
    assert type(error_for(cls.code.value, "m")) is cls  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (None, "null"),
        (True, "true"),
        (False, "false"),
        (7, "7"),
        (10**400, "an integer of 1329 bits"),
        (1.5, "1.5"),
        ("x", "'x'"),
        ("y" * 50, "'" + "y" * 40 + "...'"),
        ([1], "a list"),
        ({}, "an object"),
        (b"", "a bytes"),
    ],
)
def test_describe_is_short_on_any_value(value: object, text: str) -> None:
    """Error messages show received values briefly, even huge ones."""
    assert describe(value) == text
