"""Qwen-Image-Layered by hub id: the snapshot in the Hugging Face cache, each shard checked.

The cache is laid out as huggingface_hub writes it (`refs/main`, `snapshots/<rev>/` links
into `blobs/`, weight files under their sha256, small files under a git hash), built
from the demo set, and opened offline through the real `snapshot_download`.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import pytest
import torch

import backend.store.download as download
from backend.errors import ModelHashMismatch
from backend.split import QWEN_LAYERED_REPO
from backend.store.layered_sets import check_hub_snapshot, open_layered_set

REVISION = "0123456789abcdef0123456789abcdef01234567"


def cache_repo(folder: Path, hub_cache: Path) -> Path:
    """`folder` as the hub cache holds a download of `QWEN_LAYERED_REPO`; its snapshot."""
    repo = hub_cache / f"models--{QWEN_LAYERED_REPO.replace('/', '--')}"
    snapshot = repo / "snapshots" / REVISION
    (repo / "blobs").mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(REVISION)
    for source in sorted(path for path in folder.rglob("*") if path.is_file()):
        content = source.read_bytes()
        if source.suffix == ".safetensors":  # LFS: the etag is the content's sha256
            etag = hashlib.sha256(content).hexdigest()
        else:  # a git file: the etag is its git blob hash (40 hex)
            etag = hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()
        blob = repo / "blobs" / etag
        blob.write_bytes(content)
        link = snapshot / source.relative_to(folder)
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    return snapshot


def shards(snapshot: Path) -> list[Path]:
    return sorted(snapshot.rglob("*.safetensors"))


def test_each_shard_is_hashed_once_against_its_blob_name(
    layered_demo_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    snapshot = cache_repo(layered_demo_dir, tmp_path / "hub")
    hashed: list[Path] = []
    real_sha256_of = download.sha256_of
    monkeypatch.setattr(
        download, "sha256_of", lambda path: hashed.append(path) or real_sha256_of(path)
    )
    checked = check_hub_snapshot(snapshot, state_dir=tmp_path / "state")
    assert checked == len(shards(snapshot)) >= 3  # transformer, VAE, text encoder
    assert sorted(hashed) == sorted(path.resolve() for path in shards(snapshot))
    assert check_hub_snapshot(snapshot, state_dir=tmp_path / "state") == checked
    assert len(hashed) == checked  # the record spared hashing them again


def test_a_damaged_shard_is_refused_naming_it(layered_demo_dir: Path, tmp_path: Path) -> None:
    snapshot = cache_repo(layered_demo_dir, tmp_path / "hub")
    shard = shards(snapshot)[0]
    blob = shard.resolve()
    content = bytearray(blob.read_bytes())
    content[-1] ^= 0xFF
    blob.write_bytes(bytes(content))
    with pytest.raises(
        ModelHashMismatch, match=rf"sha256 of {shard} .* the hub named it {blob.name}"
    ):
        check_hub_snapshot(snapshot, state_dir=tmp_path / "state")


def test_a_copy_without_links_is_left_to_the_loader(layered_demo_dir: Path, tmp_path: Path) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(layered_demo_dir, copy)
    assert check_hub_snapshot(copy, state_dir=tmp_path / "state") == 0


def test_the_hub_id_opens_offline_from_the_cache_and_a_damaged_shard_stops_it(
    layered_demo_dir: Path, empty_caches: Path
) -> None:
    snapshot = cache_repo(layered_demo_dir, empty_caches)
    models = open_layered_set(
        QWEN_LAYERED_REPO, device=torch.device("cpu"), dtype=torch.float32, offline=True
    )
    assert models.base.name == "Qwen-Image-Layered" and not models.is_demo
    blob = shards(snapshot)[-1].resolve()
    blob.write_bytes(blob.read_bytes()[:-8])  # cut short
    with pytest.raises(ModelHashMismatch, match="the download is damaged"):
        open_layered_set(
            QWEN_LAYERED_REPO, device=torch.device("cpu"), dtype=torch.float32, offline=True
        )
