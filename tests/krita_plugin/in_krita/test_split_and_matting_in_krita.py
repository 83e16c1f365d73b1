"""Split into Layers and the matting fallback in the real Krita (GUI under Xvfb).

Two Krita runs, each playing one scenario of the test driver (`driver/`) with the built
plugin: `qwen` against `serve --demo qwen_layered` (about 40 s: a split into three
layers in one new group, one undo removing it whole, a layer of it split again) and
`illustrious` against `serve --demo sdxl-illustrious` (about 30 s: the warning in the
docker, a matted transparent layer named so). Each test asserts one part of the record.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ..conftest import DemoServer
from .test_end_to_end import JOB_LINE, _context, _group, build_script, run_krita

pytestmark = pytest.mark.krita


@pytest.fixture(scope="module")
def split_plugin_zip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_script().build(tmp_path_factory.mktemp("plugin") / "krita-layerdiffuse.zip")


@pytest.fixture(scope="module")
def krita_qwen_run(
    tmp_path_factory: pytest.TempPathFactory, split_plugin_zip: Path, demo_qwen_server: DemoServer
) -> Iterator[dict[str, Any]]:
    """Krita with the driver's Qwen-Image-Layered scenario; three steps a split."""
    folder = tmp_path_factory.mktemp("krita-e2e-qwen")
    yield run_krita(folder, split_plugin_zip, demo_qwen_server, "qwen", {"split_steps": "3"})


@pytest.fixture(scope="module")
def krita_illustrious_run(
    tmp_path_factory: pytest.TempPathFactory,
    split_plugin_zip: Path,
    demo_illustrious_server: DemoServer,
) -> Iterator[dict[str, Any]]:
    """Krita with the driver's matting-fallback scenario against the Illustrious demo."""
    folder = tmp_path_factory.mktemp("krita-e2e-illustrious")
    yield run_krita(folder, split_plugin_zip, demo_illustrious_server, "illustrious")


QWEN_GROUPS = {
    "docker": "the docker appears and connects to the Qwen-Image-Layered backend, naming it",
    "actions": "the actions exist, in Tools ▸ Scripts, with the .action file's texts",
    "layout": "at the default window size nothing is cut off, the layer count included",
    "follow": "Generate follows the backend: Split, with the layer count beside it, saved",
    "settings": "the Settings section shows only what a split reads",
    "refused": "the transparent layer action is off on Qwen-Image-Layered, saying why",
    "split": "Split into Layers: one new group directly above the source, N transparent layers",
    "undo": "one undo removes the group and its layers, the source byte-identical; redo",
    "nested": "a layer of the result split again in a selection nests a group above it",
}
ILLUSTRIOUS_GROUPS = {
    "docker": "the docker appears and connects to the SDXL (Illustrious) backend",
    "actions": "the actions exist, in Tools ▸ Scripts, with the .action file's texts",
    "layout": "at the default window size nothing is cut off, the warning included",
    "warning": "the warning shows in the docker and by the connection, and floats once",
    "matted": "a transparent layer is generated on gray and matted, named so, above",
    "unmatted": "with the switch off the layer is LayerDiffuse's, named as usual",
}


def _assert_groups(run: dict[str, Any], groups: dict[str, str]) -> None:
    record = run["record"]
    assert record.get("finished") is True, _context(run)
    assert record.get("error") is None, _context(run)
    assert run["status"] == 0, _context(run)
    checks = record["checks"]
    assert [name for name in checks if _group(name) not in groups] == []
    for group, what in groups.items():
        mine = {name: check for name, check in checks.items() if _group(name) == group}
        assert mine, f"no {group} checks were recorded\n{_context(run)}"
        failed = {name: check["detail"] for name, check in mine.items() if not check["ok"]}
        assert not failed, f"{what}: {failed}\n{_context(run)}"


def test_split_into_layers_in_krita(krita_qwen_run: dict[str, Any]) -> None:
    _assert_groups(krita_qwen_run, QWEN_GROUPS)


def test_split_sent_the_layer_and_nothing_else(krita_qwen_run: dict[str, Any]) -> None:
    """Two splits: the whole canvas, then the selection's bounds; each sent the one
    layer (a rectangular selection needs no mask: its bounds are the work area)."""
    jobs = JOB_LINE.findall(krita_qwen_run["plugin_log_full"])
    assert [(method, size, int(inputs)) for _, method, size, inputs in jobs] == [
        ("split_layers", "160x120", 1),
        ("split_layers", "64x48", 1),
    ], krita_qwen_run["plugin_log_full"]


def test_the_matting_fallback_in_krita(krita_illustrious_run: dict[str, Any]) -> None:
    _assert_groups(krita_illustrious_run, ILLUSTRIOUS_GROUPS)


def test_the_fallback_ran_sdxl_matted_and_warned_once(
    krita_illustrious_run: dict[str, Any],
) -> None:
    log = krita_illustrious_run["plugin_log_full"]
    jobs = JOB_LINE.findall(log)
    assert [(method, size) for _, method, size, _ in jobs] == [
        ("sdxl_matted", "160x120"),
        ("sdxl_transparent_attn", "160x120"),
    ], log
    assert log.count("warned on the canvas: LayerDiffuse is known to fail") == 1, log
