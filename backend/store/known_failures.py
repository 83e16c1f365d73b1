"""Checkpoints LayerDiffuse is known to fail on, told before anything is generated.

LayerDiffuse's SDXL files were trained against SDXL base; on heavily retrained anime
checkpoints (Illustrious-XL, NoobAI-XL and their merges; the original's issue #145) they
give a pink tint or a solid background. The weights cannot tell (same architecture, same
keys): `split.detect_failing_family` reads what can, and this module reads it off a
source: a `.safetensors` file's metadata, its v-prediction marker tensors and its name,
a folder's name and its UNet file's metadata, a hub id's name. The answer is a sentence
for the painter, sent as `welcome.model.warning` and printed by the CLI, which names the
family's matted method, the fallback.
"""

from __future__ import annotations

import json
from pathlib import Path

from backend.split import detect_failing_family
from protocol import Method, ModelFamily

FAMILY_LABELS = {
    "noobai": "NoobAI-XL",
    "illustrious": "Illustrious-XL",
    "sdxl-vpred": "v-prediction SDXL",
}
"""`detect_failing_family`'s answers, as the painter knows them."""

MATTED_METHODS = {ModelFamily.SD15: Method.SD15_MATTED, ModelFamily.SDXL: Method.SDXL_MATTED}

_HEADER_LIMIT = 100_000_000
"""Bytes a safetensors header may take before we stop reading it (the format's own cap)."""


def failing_family_warning(source: str | Path, family: ModelFamily) -> str | None:
    """The sentence saying LayerDiffuse will likely fail on `source`, or None.

    Args:
        source: a `.safetensors` checkpoint, a diffusers folder or a hub id.
        family: the base model's family (the sentence names its matted method).
    """
    if family not in MATTED_METHODS:
        return None
    metadata, keys, name = _evidence(source)
    found = detect_failing_family(metadata, filename=name) or detect_failing_family(keys)
    if found is None:
        return None
    method = MATTED_METHODS[family]
    family_name = "SDXL" if family is ModelFamily.SDXL else "SD1.5"
    return (
        f"LayerDiffuse is known to fail on {FAMILY_LABELS.get(found, found)} checkpoints "
        f"like {name}: its layer models were trained on {family_name} base and give a "
        "pink tint or a solid background here. For a transparent layer use "
        f"“Generate on Gray and Matte” ({method.value})."
    )


def _evidence(source: str | Path) -> tuple[dict[str, str], set[str], str]:
    """What a source says of itself: its metadata, its tensor names and its name."""
    path = Path(source)
    if path.is_dir():
        unet = sorted((path / "unet").glob("*.safetensors"))
        return (*_header(unet[0]), path.name) if unet else ({}, set(), path.name)
    if path.is_file() and path.suffix.lower() == ".safetensors":
        return (*_header(path), path.name)
    return {}, set(), str(source).rstrip("/").rsplit("/", 1)[-1]


def _header(path: Path) -> tuple[dict[str, str], set[str]]:
    """A safetensors file's `__metadata__` and tensor names, from its header alone."""
    try:
        with path.open("rb") as handle:
            size = int.from_bytes(handle.read(8), "little")
            if not 0 < size <= _HEADER_LIMIT:
                return {}, set()
            header = json.loads(handle.read(size))
    except (OSError, ValueError):
        return {}, set()
    if not isinstance(header, dict):
        return {}, set()
    metadata = header.pop("__metadata__", None)
    metadata = {str(k): str(v) for k, v in metadata.items()} if isinstance(metadata, dict) else {}
    return metadata, set(header)
