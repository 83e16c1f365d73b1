"""Build the zip Krita's "Tools ▸ Scripts ▸ Import Python Plugin from File…" takes.

    python scripts/build_plugin.py [--output dist/krita-layerdiffuse-<version>.zip]

The zip holds, as Krita's importer expects (it looks for `*.desktop`, then a folder
named after its `X-KDE-Library` with an `__init__.py`, then `<name>.action`):

    layerdiffuse.desktop
    layerdiffuse.action              (the importer copies it to Krita's actions folder)
    layerdiffuse/                    krita_plugin/ (without resources/), manual.html, LICENSE
    layerdiffuse/protocol/           protocol/, the wire contract
    layerdiffuse/websockets/         websockets, pure Python, with its LICENSE (BSD-3-Clause)

The websockets release is pinned (16.1.1, the newest that supports Python 3.10, which
Krita 5.2 embeds) and checked by sha256. Its pure-Python wheel is fetched once with
`pip download` into build/cache/ (C speedups are not needed: websockets falls back to
Python). Entries are sorted and dated 1980-01-01, so the same sources give the same zip.
"""

from __future__ import annotations

import argparse
import hashlib
import re
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PLUGIN_NAME = "layerdiffuse"
WEBSOCKETS_VERSION = "16.1.1"
WEBSOCKETS_WHEEL = f"websockets-{WEBSOCKETS_VERSION}-py3-none-any.whl"
WEBSOCKETS_SHA256 = "6abbd3e82c731c8e531714466acd5d87b5e88ac3243465337ba71d68e23ae7e3"
DEFAULT_CACHE = ROOT / "build" / "cache"
ZIP_DATE = (1980, 1, 1, 0, 0, 0)
SKIPPED_PARTS = {"__pycache__", "resources", "typings"}
SKIPPED_SUFFIXES = {".pyc", ".pyo", ".c", ".so", ".pyd"}


def project_version() -> str:
    """The version in pyproject.toml."""
    text = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    match = re.search(r'^version\s*=\s*"([^"]+)"', text, re.MULTILINE)
    if match is None:
        raise SystemExit("error: no version in pyproject.toml")
    return match.group(1)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def fetch_websockets(cache: Path) -> Path:
    """The pinned websockets wheel, from the cache or downloaded with pip, hash-checked."""
    wheel = cache / WEBSOCKETS_WHEEL
    if not wheel.is_file() or sha256(wheel) != WEBSOCKETS_SHA256:
        cache.mkdir(parents=True, exist_ok=True)
        wheel.unlink(missing_ok=True)
        command = [
            sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
            "--only-binary", ":all:", "--platform", "any", "--python-version", "3.10",
            "--implementation", "py", "--dest", str(cache), f"websockets=={WEBSOCKETS_VERSION}",
        ]  # fmt: skip
        subprocess.run(command, check=True)
    digest = sha256(wheel)
    if digest != WEBSOCKETS_SHA256:
        wheel.unlink()
        raise SystemExit(f"error: {wheel.name} has sha256 {digest}, expected {WEBSOCKETS_SHA256}")
    return wheel


def _package_files(folder: Path) -> list[tuple[str, bytes]]:
    files = []
    for path in sorted(folder.rglob("*")):
        relative = path.relative_to(folder)
        if not path.is_file() or SKIPPED_PARTS.intersection(relative.parts):
            continue
        if path.suffix in SKIPPED_SUFFIXES:
            continue
        files.append((relative.as_posix(), path.read_bytes()))
    return files


def _websockets_files(wheel: Path) -> list[tuple[str, bytes]]:
    files = []
    with zipfile.ZipFile(wheel) as archive:
        for name in archive.namelist():
            if name.startswith("websockets/") and not name.endswith(tuple(SKIPPED_SUFFIXES)):
                files.append((name, archive.read(name)))
            elif name.endswith(".dist-info/licenses/LICENSE"):
                files.append(("websockets/LICENSE", archive.read(name)))
    if not any(name == "websockets/LICENSE" for name, _ in files):
        raise SystemExit(f"error: no licence file in {wheel.name}")
    return files


def plugin_entries(cache: Path = DEFAULT_CACHE) -> dict[str, bytes]:
    """Every file of the zip by its path in the archive."""
    resources = ROOT / "krita_plugin" / "resources"
    entries = {
        f"{PLUGIN_NAME}.desktop": (resources / f"{PLUGIN_NAME}.desktop").read_bytes(),
        f"{PLUGIN_NAME}.action": (resources / f"{PLUGIN_NAME}.action").read_bytes(),
        f"{PLUGIN_NAME}/manual.html": (resources / "manual.html").read_bytes(),
        f"{PLUGIN_NAME}/LICENSE": (ROOT / "LICENSE").read_bytes(),
    }
    for name, data in _package_files(ROOT / "krita_plugin"):
        entries[f"{PLUGIN_NAME}/{name}"] = data
    for name, data in _package_files(ROOT / "protocol"):
        entries[f"{PLUGIN_NAME}/protocol/{name}"] = data
    for name, data in _websockets_files(fetch_websockets(cache)):
        entries[f"{PLUGIN_NAME}/{name}"] = data
    return entries


def write_zip(entries: dict[str, bytes], output: Path) -> None:
    """Write the entries, with an entry for every folder (Krita's importer needs them)."""
    folders = {
        "/".join(name.split("/")[:depth]) + "/"
        for name in entries
        for depth in range(1, name.count("/") + 1)
    }
    output.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(output, "w", zipfile.ZIP_DEFLATED) as archive:
        for name in sorted(folders | set(entries)):
            info = zipfile.ZipInfo(name, ZIP_DATE)
            if name.endswith("/"):
                info.external_attr = 0o40755 << 16
                archive.writestr(info, b"")
            else:
                info.external_attr = 0o644 << 16
                info.compress_type = zipfile.ZIP_DEFLATED
                archive.writestr(info, entries[name])


def build(output: Path | None = None, cache: Path = DEFAULT_CACHE) -> Path:
    """Build the plugin zip; returns its path."""
    if output is None:
        output = ROOT / "dist" / f"krita-layerdiffuse-{project_version()}.zip"
    write_zip(plugin_entries(cache), output)
    return output


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", type=Path, help="the zip to write (default: dist/…)")
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help="download cache")
    args = parser.parse_args(argv)
    output = build(args.output, args.cache)
    print(f"wrote {output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
