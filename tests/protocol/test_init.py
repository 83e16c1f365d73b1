"""protocol/__init__.py: the package root re-exports exactly its modules' public names."""

from __future__ import annotations

import importlib

import protocol

MODULES = [
    "close_codes",
    "codec",
    "errors",
    "events",
    "images",
    "limits",
    "messages",
    "parameters",
    "state_machine",
    "version",
]
METHODS = {
    "METHOD_SPECS",
    "Hires",
    "LayerRole",
    "Method",
    "MethodSpec",
    "ModelFamily",
    "NoiseSource",
    "ResizeMode",
    "Sampler",
}


def test_the_root_exports_the_union_of_the_modules_all() -> None:
    """Nothing public is missing from the root, nothing private leaks into it."""
    names = set(METHODS)
    for name in MODULES:
        names |= set(importlib.import_module(f"protocol.{name}").__all__)
    assert set(protocol.__all__) == names
    assert len(protocol.__all__) == len(names)
    assert all(hasattr(protocol, name) for name in protocol.__all__)
