"""Opening Qwen-Image-Layered for Split into Layers: a diffusers folder, a hub id, or the demo.

The release `Qwen/Qwen-Image-Layered` is a diffusers folder (`transformer/`, `vae/`,
`text_encoder/`, `tokenizer/`, `processor/`, `scheduler/`, `model_index.json` naming
`QwenImageLayeredPipeline`). A hub id is fetched with `huggingface_hub.snapshot_download`
(only those folders; offline: only what is cached, else `ModelNotFound` saying so) and then
read from disk as a local folder is, by `split.load_layered_components`.

Memory: about 58 GB of bf16 weights (`backend/split/layered.py` has the plan per card
size). On a card of at least `WHOLE_SET_BYTES` everything stays on it; on a smaller CUDA
card the pieces wait in host memory and each goes to the card only while it works
(`offload`, the 48 GB plan: the transformer alone, 40.9 GB, is the peak, and the host
needs about 60 GB of RAM). On a CUDA card under `FP8_BELOW_BYTES` the transformer is also
stored in fp8 (`fp8`, the 24 GB plan: 20.45 GB, the text encoder alone on the card before
it), which rounds its weights and changes the layers slightly.

The hub files carry no pinned sha256 in the catalogue yet (none could be read without
the hub). A download is checked all the same (`check_hub_snapshot`): the hub cache
stores each large file under its LFS sha256, and every shard is hashed once against
that name before it is loaded. diffusers reads the shards with safetensors: no code runs.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import torch

from backend.errors import ModelHashMismatch, ModelNotFound
from backend.model_set import LayeredBase, LayeredModelSet
from backend.split import QWEN_LAYERED_REPO, load_layered_components
from backend.split.demo import DEMO_RESOLUTIONS, build_layered_demo
from backend.store.download import default_cache_dir, recorded_sha256
from backend.store.hub_errors import describe_hub_error, is_hub_error, resolve_offline

log = logging.getLogger(__name__)

LAYERED_PIPELINE = "QwenImageLayeredPipeline"
LAYERED_DEMO_VERSION = 2
LAYERED_DEMO_NAME = "demo-qwen-image-layered (tiny random weights: layers are noise)"
FOLDERS = ("transformer", "vae", "text_encoder", "tokenizer", "processor", "scheduler")
"""The parts of the release a split reads."""
WHOLE_SET_BYTES = 70 * 1024**3
"""Card memory from which the whole set stays on the card (58 GB of weights, activations)."""
FP8_BELOW_BYTES = 44 * 1024**3
"""Card memory under which the bf16 transformer (38.1 GiB) with its activations does not fit."""


def wants_offload(device: torch.device, offload: bool | None) -> bool:
    """`offload` as asked, or, left to us (None), on for a CUDA card too small for the
    whole set."""
    if offload is not None:
        return offload
    if device.type != "cuda":
        return False
    return torch.cuda.get_device_properties(device).total_memory < WHOLE_SET_BYTES


def wants_fp8(device: torch.device, fp8: bool | None) -> bool:
    """`fp8` as asked, or, left to us (None), on for a CUDA card too small for the bf16
    transformer."""
    if fp8 is not None:
        return fp8
    if device.type != "cuda":
        return False
    return torch.cuda.get_device_properties(device).total_memory < FP8_BELOW_BYTES


def is_layered_source(source: str | Path) -> bool:
    """Whether a base model source is Qwen-Image-Layered: a diffusers folder whose
    `model_index.json` names its pipeline, or a hub id naming it."""
    path = Path(source)
    index = path / "model_index.json"
    if index.is_file():
        try:
            return json.loads(index.read_text()).get("_class_name") == LAYERED_PIPELINE
        except (OSError, ValueError):
            return False
    return not path.exists() and "qwen-image-layered" in str(source).lower()


def open_layered_set(
    source: str | Path,
    *,
    device: torch.device,
    dtype: torch.dtype,
    offline: bool | None,
    offload: bool | None = None,
    fp8: bool | None = None,
) -> LayeredModelSet:
    """Qwen-Image-Layered from a diffusers folder or a hub id.

    Args:
        offload: keep the pieces in host memory between their turns on the device; None
            decides by the card's memory (`wants_offload`).
        fp8: store the transformer in fp8; None decides by the card's memory (`wants_fp8`).

    Raises:
        ModelNotFound: the folder lacks a part, or the hub id cannot be had (offline and
            not cached, unknown, gated, no network).
    """
    folder = Path(source)
    if not folder.is_dir():
        folder = _download(str(source), resolve_offline(offline))
        check_hub_snapshot(folder)
    missing = [name for name in FOLDERS if not (folder / name).is_dir()]
    if missing:
        raise ModelNotFound(
            f"{source} is not a Qwen-Image-Layered folder: it lacks {', '.join(missing)}"
        )
    try:
        offloaded = wants_offload(device, offload)
        components = load_layered_components(
            folder, device=device, dtype=dtype, offload=offloaded, fp8=wants_fp8(device, fp8)
        )
    except (OSError, ValueError) as error:
        raise ModelNotFound(f"cannot load Qwen-Image-Layered from {source}: {error}") from error
    name = str(source).rstrip("/").rsplit("/", 1)[-1]
    where = f"host memory, each piece on {device} in its turn" if components.offload else device
    stored = f"{dtype}, the transformer stored in fp8" if components.fp8 else dtype
    log.info("loaded %s (qwen_layered) in %s as %s", name, where, stored)
    return LayeredModelSet(base=LayeredBase(name=name, components=components))


def open_layered_demo_set(
    cache_dir: Path | None, device: torch.device, dtype: torch.dtype
) -> LayeredModelSet:
    """The tiny random Qwen-Image-Layered set (built on first use), opened as a folder is."""
    root = (cache_dir or default_cache_dir()) / f"demo-qwen-layered-v{LAYERED_DEMO_VERSION}"
    models = open_layered_set(build_layered_demo(root), device=device, dtype=dtype, offline=True)
    models.base.name = LAYERED_DEMO_NAME
    models.is_demo = True
    models.resolutions = DEMO_RESOLUTIONS
    return models


_SHA256_NAME = re.compile(r"[0-9a-f]{64}")


def check_hub_snapshot(snapshot: Path, state_dir: Path | None = None) -> int:
    """Check every large file of a hub snapshot against the sha256 the hub stored it by.

    In the Hugging Face cache a snapshot's files link to `blobs/<etag>`, and a file kept
    in LFS (every weight shard) has its content's sha256 as etag: the oid of the
    repository's LFS pointer. A damaged or cut-short shard is found before it loads.
    Each blob is hashed once (the store's record of verified files); small git files
    (40-hex etags) and copies that are not links are left as they are.

    Returns:
        How many files were checked.

    Raises:
        ModelHashMismatch: a file's content is not the one the hub named.
    """
    checked = 0
    for path in sorted(snapshot.rglob("*")):
        blob = path.resolve()
        if not path.is_symlink() or not blob.is_file() or not _SHA256_NAME.fullmatch(blob.name):
            continue
        actual = recorded_sha256(blob, state_dir)
        if actual != blob.name:
            raise ModelHashMismatch(
                f"sha256 of {path} (stored at {blob}) is {actual}, but the hub named it "
                f"{blob.name}: the download is damaged; delete that blob and load "
                f"{QWEN_LAYERED_REPO} again to fetch it anew"
            )
        checked += 1
    return checked


def _download(repo_id: str, offline: bool) -> Path:
    """The release's folders from the hub cache (fetched unless `offline`)."""
    import huggingface_hub

    patterns = ["model_index.json", *(f"{name}/*" for name in FOLDERS)]
    try:
        return Path(
            huggingface_hub.snapshot_download(
                repo_id, allow_patterns=patterns, local_files_only=offline
            )
        )
    except Exception as error:
        if not is_hub_error(error):
            raise
        where = "offline, and it is not in the hub cache" if offline else "from the hub"
        raise ModelNotFound(
            f"cannot get {repo_id} ({where}): {describe_hub_error(error)}; "
            f"Split into Layers needs {QWEN_LAYERED_REPO} or a folder of it"
        ) from error
