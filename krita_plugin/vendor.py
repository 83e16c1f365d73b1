"""The one module that knows where `protocol` and `websockets` come from.

Installed in Krita, the plugin is the top-level package `layerdiffuse` with both copied
inside it (`layerdiffuse/protocol`, `layerdiffuse/websockets`, see
`scripts/build_plugin.py`), so they are imported as its subpackages and never clash
with another plugin's copy or a system package. Run from the repository (unit tests),
`krita_plugin` has no such subpackages and the top-level `protocol` and `websockets`
of the environment are used.

Everything else in the plugin imports them from here::

    from .vendor import protocol, websocket_client, websocket_exceptions
"""

from __future__ import annotations

import importlib
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

__all__ = ["bundled", "protocol", "websocket_client", "websocket_exceptions"]

_PACKAGE = __name__.rpartition(".")[0]
_HERE = Path(__file__).resolve().parent


def bundled(name: str) -> bool:
    """Whether the top-level package `name` is bundled inside the plugin."""
    return (_HERE / name / "__init__.py").is_file()


def _load(module: str) -> ModuleType:
    top = module.partition(".")[0]
    if bundled(top):
        return importlib.import_module(f"{_PACKAGE}.{module}")
    return importlib.import_module(module)


if TYPE_CHECKING:
    from websockets import exceptions as websocket_exceptions
    from websockets.asyncio import client as websocket_client

    import protocol
else:
    protocol = _load("protocol")
    websocket_client = _load("websockets.asyncio.client")
    websocket_exceptions = _load("websockets.exceptions")
