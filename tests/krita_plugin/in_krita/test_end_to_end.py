"""The built plugin in the real Krita (GUI under Xvfb) against a real demo backend.

One Krita run (about 30 s) serves every test here: the zip from `scripts/build_plugin.py`
is installed into a temporary profile with Krita's own importer, the test-driver plugin
(`driver/`) triggers each action for real and records what it finds (see its
docstring), and each test below asserts one part of that record.

Set `LAYERDIFFUSE_DOCS_SCREENSHOT=docs/images/docker.png` to also keep the screenshot of
the docker for the README.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from ..conftest import DemoServer, start_demo_server
from .krita_profile import Profile, require, run_in_process_group

pytestmark = pytest.mark.krita

ROOT = Path(__file__).resolve().parents[3]
DRIVER = Path(__file__).parent / "driver"
KRITA_TIMEOUT = 300
PROMPT = "a glass bottle, high quality"


def build_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "build_plugin", ROOT / "scripts" / "build_plugin.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def backend(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[DemoServer]:
    """The session's demo backend; on the default port 8870 when taking the docs screenshot."""
    if not os.environ.get("LAYERDIFFUSE_DOCS_SCREENSHOT"):
        yield request.getfixturevalue("demo_server")
        return
    server = start_demo_server(tmp_path_factory.mktemp("docs-backend"), port=8870)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def krita_run(tmp_path_factory: pytest.TempPathFactory, backend: DemoServer) -> dict[str, Any]:
    """Build, install, run Krita with the driver; the driver's record and the paths."""
    krita = require("krita")
    xvfb_run = require("xvfb-run")
    require("xauth")
    folder = tmp_path_factory.mktemp("krita-e2e")
    archive = build_script().build(folder / "krita-layerdiffuse.zip")
    profile = Profile(folder / "home").create()
    installed = profile.install_zip(archive)
    profile.install_folder(
        DRIVER / "layerdiffuse_test_driver", DRIVER / "layerdiffuse_test_driver.desktop"
    )
    profile.write_kritarc(
        {
            "python": {"enable_layerdiffuse": "true", "enable_layerdiffuse_test_driver": "true"},
            "layerdiffuse": {
                "server_url": backend.url,
                "prompt": PROMPT,
                "steps": "4",
                "fit_to_native": "false",
                "random_seed": "false",
                "seed": "7",
            },
        }
    )
    results = folder / "results.json"
    screenshot = folder / "docker.png"
    environment = profile.environment(
        LAYERDIFFUSE_TEST_RESULTS=str(results), LAYERDIFFUSE_SCREENSHOT=str(screenshot)
    )
    command = [
        "timeout", "--kill-after=10", str(KRITA_TIMEOUT),
        xvfb_run, "-a", "-s", "-screen 0 1600x1000x24", krita, "--nosplash",
    ]  # fmt: skip
    status = run_in_process_group(
        command, environment, KRITA_TIMEOUT + 30, folder / "krita.log", started=results.is_file
    )
    record = json.loads(results.read_text()) if results.is_file() else {}
    docs_copy = os.environ.get("LAYERDIFFUSE_DOCS_SCREENSHOT")
    if docs_copy and screenshot.is_file():
        Path(docs_copy).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(screenshot, docs_copy)
    plugin_log = profile.resources / "layerdiffuse" / "layerdiffuse.log"
    return {
        "status": status,
        "record": record,
        "installed": installed,
        "profile": profile,
        "screenshot": screenshot,
        "krita_log": (folder / "krita.log").read_text(errors="replace")[-4000:],
        "plugin_log": plugin_log.read_text()[-4000:] if plugin_log.is_file() else "(no log)",
    }


def _context(run: dict[str, Any]) -> str:
    record = run["record"]
    return (
        f"krita exit {run['status']}; driver error: {record.get('error')}\n"
        f"--- plugin log ---\n{run['plugin_log']}\n--- krita output ---\n{run['krita_log']}"
    )


def test_the_zip_installs_with_kritas_own_importer(krita_run: dict[str, Any]) -> None:
    resources = krita_run["profile"].resources
    assert krita_run["installed"] == ["layerdiffuse"]
    for path in (
        "pykrita/layerdiffuse.desktop",
        "pykrita/layerdiffuse/__init__.py",
        "pykrita/layerdiffuse/protocol/__init__.py",
        "pykrita/layerdiffuse/websockets/__init__.py",
        "pykrita/layerdiffuse/websockets/LICENSE",
        "actions/layerdiffuse.action",
    ):
        assert (resources / path).is_file(), path


def test_krita_ran_the_whole_scenario_and_quit(krita_run: dict[str, Any]) -> None:
    record = krita_run["record"]
    assert record.get("finished") is True, _context(krita_run)
    assert record.get("error") is None, _context(krita_run)
    assert krita_run["status"] == 0, _context(krita_run)


GROUPS = {
    "docker": "the docker appears, connects to the backend and shows the saved prompt",
    "actions": "the four actions exist, in Tools ▸ Scripts, with the .action file's texts",
    "layer": "generate_layer inserts one transparent layer above the active one",
    "undo": "one undo removes the inserted layer, redo restores it",
    "background": "generate_background in a selection inserts one layer below the active one",
    "foreground": "generate_foreground inserts one layer above; hidden layers come back",
    "together": "the docker's together method inserts background then foreground above",
    "bottom": "a background for the bottom-most layer goes below it",
    "cancel": "a cancelled job inserts nothing",
    "gray": "a document that is not 8-bit RGBA gets a clear message and no layer",
    "screenshot": "the docker's screenshot is saved",
}


def test_every_recorded_check_belongs_to_a_group(krita_run: dict[str, Any]) -> None:
    checks = krita_run["record"].get("checks", {})
    assert checks, _context(krita_run)
    assert [name for name in checks if _group(name) not in GROUPS] == []


def test_the_dockers_settings_are_saved_in_kritarc(krita_run: dict[str, Any]) -> None:
    """The driver set the steps to 5 in the docker; Krita wrote them to its settings."""
    kritarc = (krita_run["profile"].config / "kritarc").read_text(encoding="utf-8")
    section = kritarc.split("[layerdiffuse]\n", 1)[1].split("\n[", 1)[0]
    values = dict(line.split("=", 1) for line in section.splitlines() if "=" in line)
    assert values["steps"] == "5"
    assert values["prompt"] == PROMPT


def _group(name: str) -> str:
    return name.split(":")[0].split("_")[0]


@pytest.mark.parametrize("group", sorted(GROUPS))
def test_checks_in_krita(krita_run: dict[str, Any], group: str) -> None:
    """Each group of the driver's checks passed (see GROUPS for what they prove)."""
    checks = krita_run["record"].get("checks", {})
    mine = {name: check for name, check in checks.items() if _group(name) == group}
    assert mine, f"no {group} checks were recorded\n{_context(krita_run)}"
    failed = {name: check["detail"] for name, check in mine.items() if not check["ok"]}
    assert not failed, f"{GROUPS[group]}: {failed}\n{_context(krita_run)}"
