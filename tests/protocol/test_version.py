"""protocol.version: the version and the compatibility rule."""

from __future__ import annotations

from pathlib import Path

import pytest

from protocol import PROTOCOL_VERSION, check_compatible, is_newer_minor
from protocol.errors import InvalidField, UnsupportedVersion


def test_the_version_is_1_2() -> None:
    """The package speaks 1.3, as docs/protocol.md's title says."""
    assert PROTOCOL_VERSION == (1, 3)
    title = (Path(__file__).resolve().parents[2] / "docs" / "protocol.md").read_text()
    assert title.startswith("# The krita-layerdiffuse websocket protocol, version 1.3\n")


@pytest.mark.parametrize("peer", [(1, 0), (1, 1), (1, 99)])
def test_a_peer_of_the_same_major_is_compatible(peer: tuple[int, int]) -> None:
    """Any minor version of our major may talk to us."""
    check_compatible(peer)


@pytest.mark.parametrize(("peer", "text"), [((2, 0), "2.0"), ((0, 9), "0.9")])
def test_another_major_is_unsupported(peer: tuple[int, int], text: str) -> None:
    """Another major version raises UnsupportedVersion naming both versions."""
    with pytest.raises(UnsupportedVersion) as caught:
        check_compatible(peer)
    assert str(caught.value) == f"protocol version {text} is not supported, this side speaks 1.3"
    assert caught.value.code.value == "unsupported_version"


@pytest.mark.parametrize(
    ("peer", "shown"),
    [
        ((1,), "a list"),
        ((1, -1), "a list"),
        ((True, 0), "a list"),
        ("1.0", "'1.0'"),
        (None, "null"),
    ],
)
def test_a_malformed_version_is_an_invalid_field(peer: object, shown: str) -> None:
    """Anything but two non-negative integers is refused, before comparing."""
    with pytest.raises(InvalidField) as caught:
        check_compatible(peer)  # type: ignore[arg-type]
    assert str(caught.value) == f"protocol: expected [major, minor], got {shown}"


def test_only_a_newer_minor_of_our_major_is_newer() -> None:
    """Unknown fields are tolerated only from 1.x with x above our minor."""
    assert is_newer_minor((1, 4))
    assert not is_newer_minor((1, 3))
    assert not is_newer_minor((1, 1))
    assert not is_newer_minor((1, 0))
    assert not is_newer_minor((2, 5))
