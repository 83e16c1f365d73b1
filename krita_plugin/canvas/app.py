"""The Krita application: base classes for registration, settings, actions.

Re-exports the libkis classes the plugin subclasses (`Extension`, `DockWidget`) so that
no module outside this package imports `krita`.
"""

from __future__ import annotations

from krita import DockWidget, DockWidgetFactory, DockWidgetFactoryBase, Extension, Krita

__all__ = [
    "DockWidget",
    "DockWidgetFactory",
    "DockWidgetFactoryBase",
    "Extension",
    "KritaSettingsStore",
    "krita",
    "krita_version",
    "register_docker",
    "register_extension",
]

_UNSET = "\x00layerdiffuse-unset"


def krita() -> Krita:
    """The Krita application object."""
    return Krita.instance()


def krita_version() -> tuple[int, ...]:
    """Krita's version as numbers, e.g. (5, 1, 5); pre-release suffixes are dropped."""
    numbers = []
    for part in Krita.instance().version().split("."):
        digits = "".join(character for character in part if character.isdigit())
        if not digits:
            break
        numbers.append(int(digits))
    return tuple(numbers)


def register_extension(extension_class: type[Extension], *args: object) -> Extension:
    """Create the extension with the Krita instance as parent and register it."""
    app = Krita.instance()
    extension = extension_class(app, *args)
    app.addExtension(extension)
    return extension


def register_docker(docker_id: str, docker_class: type[DockWidget]) -> None:
    """Register a docker class (Krita creates one per window, docked on the right)."""
    right = DockWidgetFactoryBase.DockPosition.DockRight
    factory = DockWidgetFactory(docker_id, right, docker_class)
    Krita.instance().addDockWidgetFactory(factory)


class KritaSettingsStore:
    """Settings kept in Krita's own settings file (`kritarc`), under one group.

    Args:
        group: the kritarc group.
    """

    def __init__(self, group: str) -> None:
        self.group = group

    def read(self, key: str) -> str | None:
        value = Krita.instance().readSetting(self.group, key, _UNSET)
        return None if value == _UNSET else value

    def write(self, key: str, value: str) -> None:
        Krita.instance().writeSetting(self.group, key, value)
