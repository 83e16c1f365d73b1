"""The plugin zip: the layout Krita's importer wants, the pinned websockets, its licence.

Installing it with Krita's own importer, and running it in Krita, is in
`in_krita/test_end_to_end.py`; here the zip is opened and its bundled copy is run with
this Python against the demo backend.
"""

from __future__ import annotations

import ast
import configparser
import importlib.util
import subprocess
import sys
import textwrap
import xml.etree.ElementTree as ElementTree
import zipfile
from pathlib import Path
from types import ModuleType

import pytest

from krita_plugin.recipes import KRITA_ACTIONS

from .conftest import DemoServer

ROOT = Path(__file__).resolve().parents[2]


def build_script() -> ModuleType:
    path = ROOT / "scripts" / "build_plugin.py"
    spec = importlib.util.spec_from_file_location("build_plugin", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_script().build(tmp_path_factory.mktemp("zip") / "plugin.zip")


@pytest.fixture(scope="module")
def names(archive: Path) -> list[str]:
    with zipfile.ZipFile(archive) as opened:
        return opened.namelist()


def read(archive: Path, name: str) -> bytes:
    with zipfile.ZipFile(archive) as opened:
        return opened.read(name)


def test_the_top_level_is_the_desktop_file_the_action_file_and_the_package(
    names: list[str],
) -> None:
    top = sorted({name.split("/")[0] + ("/" if "/" in name else "") for name in names})
    assert top == ["layerdiffuse.action", "layerdiffuse.desktop", "layerdiffuse/"]


def test_every_folder_has_an_entry_as_krita_importer_needs(names: list[str]) -> None:
    files = [name for name in names if not name.endswith("/")]
    folders = {name for name in names if name.endswith("/")}
    for name in files:
        parts = name.split("/")[:-1]
        for depth in range(1, len(parts) + 1):
            assert "/".join(parts[:depth]) + "/" in folders, name


def test_the_package_holds_the_plugin_protocol_and_websockets(names: list[str]) -> None:
    for name in (
        "layerdiffuse/__init__.py",
        "layerdiffuse/extension.py",
        "layerdiffuse/canvas/document.py",
        "layerdiffuse/ui/docker.py",
        "layerdiffuse/manual.html",
        "layerdiffuse/LICENSE",
        "layerdiffuse/protocol/__init__.py",
        "layerdiffuse/protocol/state_machine.py",
        "layerdiffuse/websockets/__init__.py",
        "layerdiffuse/websockets/asyncio/client.py",
        "layerdiffuse/websockets/LICENSE",
    ):
        assert name in names, name
    assert not [n for n in names if n.endswith((".pyc", ".c", ".so")) or "__pycache__" in n]
    assert not [n for n in names if "/resources/" in n]  # the .action file is not duplicated


def test_the_bundled_protocol_is_the_repositorys(archive: Path) -> None:
    for path in (ROOT / "protocol").glob("*.py"):
        assert read(archive, f"layerdiffuse/protocol/{path.name}") == path.read_bytes()


def test_websockets_is_the_pinned_release_with_its_licence(archive: Path) -> None:
    version = read(archive, "layerdiffuse/websockets/version.py").decode()
    assert 'tag = version = commit = "16.1.1"' in version
    licence = read(archive, "layerdiffuse/websockets/LICENSE").decode()
    assert "Aymeric Augustin" in licence
    assert "Redistribution and use in source and binary forms" in licence
    assert read(archive, "layerdiffuse/LICENSE") == (ROOT / "LICENSE").read_bytes()


def test_everything_parses_as_python_3_10(archive: Path, names: list[str]) -> None:
    for name in names:
        if name.endswith(".py"):
            ast.parse(read(archive, name), filename=name, feature_version=(3, 10))


def test_the_desktop_file_names_the_package() -> None:
    desktop = configparser.ConfigParser()
    desktop.read(ROOT / "krita_plugin" / "resources" / "layerdiffuse.desktop")
    entry = desktop["Desktop Entry"]
    assert entry["X-KDE-Library"] == "layerdiffuse"
    assert entry["ServiceTypes"] == "Krita/PythonPlugin"
    assert entry["X-Python-2-Compatible"] == "false"


def test_the_action_file_describes_every_action() -> None:
    tree = ElementTree.parse(ROOT / "krita_plugin" / "resources" / "layerdiffuse.action")
    actions = tree.getroot().findall("./Actions/Action")
    found = {action.get("name"): action.findtext("text") for action in actions}
    assert found == {action_id: text for action_id, text, _ in KRITA_ACTIONS}
    assert all(action.findtext("shortcut") == "" for action in actions)  # painters assign them


def test_the_build_is_reproducible(archive: Path, tmp_path: Path) -> None:
    again = build_script().build(tmp_path / "again.zip")
    assert again.read_bytes() == archive.read_bytes()


def test_the_bundled_copy_runs_a_job_with_its_own_websockets(
    archive: Path, tmp_path: Path, demo_server: DemoServer
) -> None:
    """The installed layout imports protocol and websockets from inside the package."""
    with zipfile.ZipFile(archive) as opened:
        opened.extractall(tmp_path)
    script = textwrap.dedent(
        f"""
        import asyncio, sys
        sys.path.insert(0, {str(tmp_path)!r})
        from layerdiffuse import vendor
        from layerdiffuse.client import BackendClient, new_job_id
        from layerdiffuse.websockets.version import version

        p = vendor.protocol
        assert vendor.bundled("protocol") and vendor.bundled("websockets")
        print(vendor.websocket_client.__name__, p.__name__, version)

        async def main():
            client = BackendClient({demo_server.url!r}, retry_delays=(0.1,))
            task = asyncio.ensure_future(client.run())
            await client.wait_connected(60)
            request = p.GenerationParameters(p.Method.SD15_TRANSPARENT, width=24, height=16,
                                             steps=2)
            results = await client.run_job(p.Submit(new_job_id(), request), {{}})
            print(len(results[0].layers[p.LayerRole.FOREGROUND]))
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass

        asyncio.run(main())
        """
    )
    done = subprocess.run(
        [sys.executable, "-I", "-c", script], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [
        "layerdiffuse.websockets.asyncio.client",
        "layerdiffuse.protocol",
        "16.1.1",
        str(24 * 16 * 4),
    ]
