"""The canvas package on the real libkis API, under kritarunner (offscreen, ~10 s).

One kritarunner run executes every check of `canvas_checks.py` and records it; each
test here asserts one check (byte order, regions and selections, the scene read,
placement of inserted layers, refusals). Undo needs Krita's window and is checked in
`test_end_to_end.py`.
"""

from __future__ import annotations

import ast
import json
from pathlib import Path
from typing import Any

import pytest

from .krita_profile import Profile, require, run_in_process_group

pytestmark = pytest.mark.krita

ROOT = Path(__file__).resolve().parents[3]
HERE = Path(__file__).parent
CHECKS_MODULE = HERE / "canvas_checks.py"


def _check_names() -> list[str]:
    """The checks `canvas_checks.py` declares (read with ast, without importing krita)."""
    tree = ast.parse(CHECKS_MODULE.read_text())
    return [
        node.name
        for node in tree.body
        if isinstance(node, ast.FunctionDef)
        and any(isinstance(d, ast.Name) and d.id == "check" for d in node.decorator_list)
    ]


@pytest.fixture(scope="module")
def canvas_results(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    kritarunner = require("kritarunner")
    folder = tmp_path_factory.mktemp("kritarunner")
    profile = Profile(folder / "home").create()
    output = folder / "checks.json"
    environment = profile.environment(
        QT_QPA_PLATFORM="offscreen", PYTHONPATH=f"{ROOT}:{HERE}", PYTHONDONTWRITEBYTECODE="1"
    )
    command = ["timeout", "--kill-after=10", "120", kritarunner, "-s", "canvas_checks", "-f",
               "main", str(output)]  # fmt: skip
    log = folder / "kritarunner.log"
    status = run_in_process_group(command, environment, 150, log)
    text = log.read_text(errors="replace")[-3000:]
    assert output.is_file(), f"kritarunner exited {status} without results:\n{text}"
    return {"status": status, "checks": json.loads(output.read_text()), "log": text}


def test_kritarunner_exits_cleanly(canvas_results: dict[str, Any]) -> None:
    assert canvas_results["status"] == 0, canvas_results["log"]


@pytest.mark.parametrize("name", _check_names())
def test_canvas_check(canvas_results: dict[str, Any], name: str) -> None:
    record = canvas_results["checks"].get(name)
    assert record is not None, f"{name} did not run\n{canvas_results['log']}"
    assert record["ok"], record["detail"]
