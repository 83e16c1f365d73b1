"""Dependencies point one way (krita_plugin → protocol ← backend), read from the code with ast.

Each part may import only what the table below allows; a new edge must be added here on
purpose, with the design reason, not slip in.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
STDLIB = set(sys.stdlib_module_names) | {"__future__"}

# module prefix → the first-party modules and third-party packages it may import
ALLOWED: dict[str, set[str]] = {
    "protocol": {"protocol"},
    "backend.errors": {"protocol"},
    "backend.layerdiffuse": {"backend.layerdiffuse", "torch", "diffusers", "safetensors", "numpy"},
    # Split into Layers (Qwen-Image-Layered) and the matting fallback (issue #19).
    # BiRefNet uses torchvision's deformable convolution when it is there (not a dependency).
    "backend.split": {
        "backend.split",
        "torch",
        "diffusers",
        "transformers",
        "safetensors",
        "torchvision",
        "numpy",
        "PIL",
    },
    # LoRAs merged into a base model: weight patches of the same kind as the layer files.
    "backend.loras": {"backend.loras", "backend.layerdiffuse", "torch"},
    "backend.model_set": {
        "backend.errors",
        "backend.layerdiffuse",
        "backend.loras",
        "backend.split",
        "protocol",
        "torch",
        "diffusers",
        "transformers",
    },
    "backend.methods": {
        "backend.methods",
        "backend.layerdiffuse",
        "backend.split",
        "backend.model_set",
        "backend.errors",
        "protocol",
        "torch",
        "diffusers",
        "transformers",
        "numpy",
        "PIL",
    },
    "backend.store": {
        "backend.store",
        "backend.layerdiffuse",
        "backend.split",
        "backend.loras",
        "backend.model_set",
        "backend.errors",
        "protocol",
        "torch",
        "diffusers",
        "transformers",
        "safetensors",
        "huggingface_hub",
        "numpy",
    },
    "backend.config": {"protocol"},
    # The command line's flags are checked before anything heavy is imported.
    "backend.flags": {"protocol"},
    # Result files: names and atomic writes only; what goes in them is the CLI's.
    "backend.outputs": {"backend.errors"},
    "backend.jobs": {
        "backend.jobs",
        "backend.methods",
        "backend.model_set",
        "backend.config",
        "backend.errors",
        "protocol",
        "torch",
        "numpy",
        "PIL",
    },
    # The server never touches torch: it reaches the GPU only through backend.jobs.
    "backend.server": {
        "backend.server",
        "backend.jobs",
        "backend.config",
        "backend.errors",
        "backend.model_set",  # for type annotations only
        "protocol",
        "websockets",
    },
    # A studio's GPUs: the only code that imports Ray. The gateway side reaches the
    # server only through the Executor interface it implements (the CLI joins them).
    "backend.cluster": {
        "backend.cluster",
        "backend.jobs",
        "backend.store",
        "backend.errors",
        "protocol",
        "ray",
    },
    "backend.bench": {
        "backend.bench",
        # the cluster stage: the same jobs through the one-machine server and a cluster
        "backend.cluster",
        "backend.server",
        "backend.config",
        "backend.store",
        "websockets",
        "PIL",
        "backend.methods",
        "backend.model_set",
        "backend.layerdiffuse",
        "backend.loras",
        "protocol",
        "torch",
        "diffusers",
        "transformers",
        "numpy",
    },
    # The plugin runs in Krita's Python: the standard library and Krita's PyQt, never numpy,
    # Pillow or the backend. Only canvas/ imports krita; only qt.py imports PyQt (PyQt5 in
    # Krita 5, PyQt6 in Krita 6: everything else takes its Qt names from there); protocol
    # and websockets come through vendor.py, which finds the copies bundled inside the
    # installed plugin.
    "krita_plugin.canvas": {
        "krita_plugin.canvas",
        "krita_plugin.errors",
        "krita_plugin.geometry",
        "krita_plugin.pixels",
        "krita_plugin.placement",
        "krita_plugin.qt",
        "krita_plugin.timing",
        "krita",
    },
    "krita_plugin.qt": {"PyQt5", "PyQt6"},
    "krita_plugin.vendor": {"protocol", "websockets"},
    "krita_plugin": {"krita_plugin"},
}
TOP_LEVEL = {"backend.cli", "backend.__main__", "backend"}  # may import anything of ours


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(path: Path) -> set[str]:
    """Absolute names of everything a module imports (relative imports resolved)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = (
        module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    )
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                prefix = ".".join(base)
                target = f"{prefix}.{node.module}" if node.module else prefix
                names.add(target)
            elif node.module:
                names.add(node.module)
    return names


def allowed(importer: str, imported: str) -> bool:
    if imported.split(".")[0] in STDLIB:
        return True
    rule = next(
        (
            ALLOWED[prefix]
            for prefix in sorted(ALLOWED, key=len, reverse=True)
            if importer == prefix or importer.startswith(prefix + ".")
        ),
        None,
    )
    if rule is None:
        return importer in TOP_LEVEL
    return any(imported == name or imported.startswith(name + ".") for name in rule)


SOURCES = sorted(
    path for part in ("protocol", "backend", "krita_plugin") for path in (ROOT / part).rglob("*.py")
)


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(ROOT)))
def test_imports_follow_the_dependency_table(path: Path) -> None:
    importer = module_name(path)
    bad = sorted(name for name in imports_of(path) if not allowed(importer, name))
    assert bad == [], f"{importer} imports {bad}"


RAY_IMPORTERS = "backend.cluster"


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(ROOT)))
def test_only_the_cluster_package_imports_ray(path: Path) -> None:
    """Ray is an optional extra: nothing else may import it, the CLI included (it
    reaches Ray through backend.cluster, and only for --cluster)."""
    importer = module_name(path)
    if importer == RAY_IMPORTERS or importer.startswith(RAY_IMPORTERS + "."):
        return
    ray = sorted(name for name in imports_of(path) if name.split(".")[0] == "ray")
    assert ray == [], f"{importer} imports {ray}"


def test_the_one_machine_path_never_imports_ray() -> None:
    """Every module but the cluster package (and the bench stage that drives it) imports
    without Ray; run in a fresh interpreter, so nothing else loaded it first."""
    modules = [
        module_name(path)
        for path in SOURCES
        if module_name(path).startswith("backend")
        and not module_name(path).startswith(RAY_IMPORTERS)
        and module_name(path) != "backend.bench.cluster"
        and module_name(path) != "backend.__main__"
    ]
    script = (
        "import importlib, sys\n"
        f"for name in {modules!r}:\n"
        "    importlib.import_module(name)\n"
        "from backend.cli import main\n"
        "assert main(['serve', '--help']) == 0\n"
        "loaded = sorted(m for m in sys.modules if m.split('.')[0] == 'ray')\n"
        "assert not loaded, loaded\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]


def test_the_checker_catches_a_reversed_edge() -> None:
    assert not allowed("backend.layerdiffuse.alpha", "backend.store.download")
    assert not allowed("backend.methods.stages", "backend.store.demo")
    assert not allowed("protocol.methods", "backend.errors")
    assert not allowed("protocol.methods", "numpy")
    assert allowed("backend.store.demo", "backend.layerdiffuse")
    assert not allowed("krita_plugin.ui.docker", "PyQt5.QtWidgets")
    assert not allowed("krita_plugin.canvas.app", "PyQt6.QtCore")
    assert allowed("krita_plugin.qt", "PyQt6.QtWidgets")
    assert allowed("backend.cluster.executor", "ray.serve.handle")
    assert not allowed("backend.server.serve", "ray")
    assert not allowed("backend.server.serve", "backend.cluster.executor")
    assert not allowed("backend.jobs.queue", "ray.serve")


# PyQt6 knows enum members only in their scoped form (`Qt.AlignmentFlag.AlignCenter`);
# PyQt5 takes both. An unscoped member (`Qt.AlignCenter`, `QImage.Format_RGBA8888`) works
# in Krita 5 and raises AttributeError in Krita 6, so the plugin writes none.
PLUGIN_SOURCES = sorted((ROOT / "krita_plugin").rglob("*.py")) + sorted(
    (ROOT / "tests" / "krita_plugin" / "in_krita").rglob("*.py")
)


def unscoped_enum_members(tree: ast.AST, qt_names: set[str]) -> list[str]:
    """`QtClass.Member` attributes (a capitalised name straight on a Qt class) that are not
    the start of a longer chain (`QtClass.Enum.Member`)."""
    chained = {id(node.value) for node in ast.walk(tree) if isinstance(node, ast.Attribute)}
    return sorted(
        f"{node.value.id}.{node.attr}"
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute)
        and isinstance(node.value, ast.Name)
        and node.value.id in qt_names
        and node.attr[:1].isupper()
        and id(node) not in chained
    )


def qt_names_imported(tree: ast.AST) -> set[str]:
    """The names a module imports from the plugin's qt module (or from PyQt directly)."""
    names: set[str] = set()
    for node in ast.walk(tree):
        module = node.module if isinstance(node, ast.ImportFrom) else None
        if module is not None and (module.split(".")[-1] == "qt" or module.startswith("PyQt")):
            names.update(alias.asname or alias.name for alias in node.names)
    return names


@pytest.mark.parametrize("path", PLUGIN_SOURCES, ids=lambda p: str(p.relative_to(ROOT)))
def test_qt_enums_are_written_scoped(path: Path) -> None:
    tree = ast.parse(path.read_text(), filename=str(path))
    assert unscoped_enum_members(tree, qt_names_imported(tree)) == []


def test_the_enum_check_catches_an_unscoped_member() -> None:
    source = (
        "from ..qt import QImage, Qt\n"
        "a = Qt.AlignCenter\n"
        "b = Qt.AlignmentFlag.AlignCenter\n"
        "c = QImage.Format_RGBA8888\n"
        "d = QImage(1, 1, QImage.Format.Format_RGBA8888).copy()\n"
    )
    tree = ast.parse(source)
    found = unscoped_enum_members(tree, qt_names_imported(tree))
    assert found == ["QImage.Format_RGBA8888", "Qt.AlignCenter"]
