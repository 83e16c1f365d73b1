"""Running the real Krita in a throw-away profile: kritarunner, and the GUI under Xvfb.

Krita is required, not optional: CI installs it (`apt-get install krita xvfb xauth`), and
a missing Krita fails these tests with that hint instead of skipping them.
"""

from __future__ import annotations

import builtins
import importlib.util
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import pytest

INSTALL_HINT = "install Krita, Xvfb and xauth: apt-get install -y krita xvfb xauth"
SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
_NOT_FOR_KRITA = {"DISPLAY", "WAYLAND_DISPLAY", "XAUTHORITY", "VIRTUAL_ENV", "VIRTUAL_ENV_PROMPT"}


def require(program: str) -> str:
    """The path of a program Krita's tests need; the test fails without it."""
    path = shutil.which(program)
    if path is None:
        pytest.fail(f"{program} not found: {INSTALL_HINT}", pytrace=False)
    return path


def krita_data_folder() -> Path:
    """Krita's shared data folder (…/share/krita), next to its binary."""
    return Path(require("krita")).resolve().parents[1] / "share" / "krita"


def plugin_importer() -> ModuleType:
    """Krita's own "Import Python Plugin from File" logic (its `plugin_importer.py`)."""
    path = krita_data_folder() / "pykrita" / "plugin_importer" / "plugin_importer.py"
    if not path.is_file():
        pytest.fail(f"Krita's plugin importer is missing ({path}): {INSTALL_HINT}", pytrace=False)
    spec = importlib.util.spec_from_file_location("krita_plugin_importer", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    # Krita's translation function, used in its error messages: Krita 5.3+ imports it from
    # builtins (where Krita puts it), older ones look it up as a module global.
    missing = not hasattr(builtins, "i18n")
    if missing:
        builtins.i18n = str  # type: ignore[attr-defined]
    try:
        spec.loader.exec_module(module)
    finally:
        if missing:
            del builtins.i18n  # type: ignore[attr-defined]
    module.i18n = str
    return module


@dataclass(frozen=True)
class Profile:
    """A temporary home with Krita's config, data and cache folders inside."""

    home: Path

    @property
    def config(self) -> Path:
        return self.home / ".config"

    @property
    def resources(self) -> Path:
        """Krita's resource folder ($XDG_DATA_HOME/krita): pykrita/, actions/."""
        return self.home / ".local" / "share" / "krita"

    def create(self) -> Profile:
        for folder in (self.config, self.resources / "pykrita", self.home / ".cache"):
            folder.mkdir(parents=True, exist_ok=True)
        (self.home / "runtime").mkdir(mode=0o700, exist_ok=True)
        return self

    def environment(self, **extra: str) -> dict[str, str]:
        environment = {
            key: value
            for key, value in os.environ.items()
            if key not in _NOT_FOR_KRITA and not key.startswith("PYTHON")
        }
        environment.update(
            # Krita's embedded Python finds its prefix through `python3` on the PATH: a
            # virtual environment there would hide the system's PyQt5 from it.
            PATH=SYSTEM_PATH,
            HOME=str(self.home),
            XDG_CONFIG_HOME=str(self.config),
            XDG_DATA_HOME=str(self.home / ".local" / "share"),
            XDG_CACHE_HOME=str(self.home / ".cache"),
            XDG_RUNTIME_DIR=str(self.home / "runtime"),
            LC_ALL="C.UTF-8",
        )
        environment.update(extra)
        return environment

    def write_kritarc(self, sections: dict[str, dict[str, str]]) -> None:
        lines = []
        for section, values in sections.items():
            lines.append(f"[{section}]")
            lines.extend(f"{key}={value}" for key, value in values.items())
            lines.append("")
        (self.config / "kritarc").write_text("\n".join(lines), encoding="utf-8")

    def install_zip(self, archive: Path) -> list[str]:
        """Install a plugin zip the way Krita's importer does; returns the plugin names."""
        importer = plugin_importer().PluginImporter(
            str(archive), str(self.resources), lambda plugin: True
        )
        return [plugin["name"] for plugin in importer.import_all()]

    def install_folder(self, package: Path, desktop: Path) -> None:
        """Install a plugin from a source folder and its .desktop file."""
        shutil.copytree(package, self.resources / "pykrita" / package.name)
        shutil.copy(desktop, self.resources / "pykrita" / desktop.name)


def run_in_process_group(
    command: list[str],
    environment: dict[str, str],
    timeout: float,
    log: Path,
    started: Callable[[], bool] | None = None,
    startup_timeout: float = 90.0,
    while_running: Callable[[], None] | None = None,
) -> int:
    """Run a command in its own process group (ours), killing the group on a timeout.

    Args:
        started: polled while the command runs; if it is not true within
            `startup_timeout`, the command is taken as stuck (a plugin that did not load
            never quits Krita) and killed early.
        while_running: called every quarter second while the command runs (the test's
            side of a scenario, e.g. restarting the backend when Krita asks).

    Returns:
        The exit status (124 after a timeout, like `timeout`).
    """
    deadline = time.monotonic() + timeout
    startup_deadline = time.monotonic() + startup_timeout
    with log.open("w") as output:
        process = subprocess.Popen(
            command, env=environment, stdout=output, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
        try:
            while process.poll() is None:
                now = time.monotonic()
                stuck = started is not None and now > startup_deadline and not started()
                if now > deadline or stuck:
                    os.killpg(process.pid, signal.SIGKILL)
                    process.wait(10)
                    return 124
                if while_running is not None:
                    while_running()
                time.sleep(0.25)
            return process.returncode
        except BaseException:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(10)
            raise
