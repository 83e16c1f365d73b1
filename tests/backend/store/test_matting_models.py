"""The fallback's matting model through the store: hash-checked, read strictly into BiRefNet.

The real file (444 MB) cannot be fetched here, so a tiny BiRefNet's weights stand in for
it under the catalogue's name, with their own sha256, in a models folder: the same store
path, hash check and strict load the real file takes.
"""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from backend.errors import ModelHashMismatch, UnsupportedModel
from backend.split.birefnet import TINY_CONFIG, BiRefNet
from backend.store.catalogue import CATALOGUE, MATTING_FILES
from backend.store.download import ModelStore
from backend.store.matting_models import MATTING_CONFIG, MATTING_FILE, matting_loader


def tiny_weights(seed: int = 0) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    return {name: t.contiguous() for name, t in BiRefNet(TINY_CONFIG).state_dict().items()}


def store_with(path: Path, sha256: str) -> ModelStore:
    entry = dataclasses.replace(MATTING_FILES[MATTING_FILE], sha256=sha256)
    return ModelStore(
        models_dir=path.parent,
        offline=True,
        catalogue={**CATALOGUE, MATTING_FILE: entry},
        state_dir=path.parent / "state",
    )


def test_the_catalogue_pins_the_released_file() -> None:
    entry = CATALOGUE[MATTING_FILE]
    assert (entry.repo_id, entry.filename) == (
        "ZhengPeng7/BiRefNet_HR-matting",
        "model.safetensors",
    )
    assert entry.size_bytes == 444_473_596 and len(entry.sha256 or "") == 64
    assert MATTING_CONFIG.input_size == 1024


def test_a_file_under_its_own_name_is_found_checked_and_loaded_strictly(tmp_path: Path) -> None:
    weights = tiny_weights()
    path = tmp_path / f"{MATTING_FILE}.safetensors"  # the stem: "model.safetensors" is generic
    save_file(weights, str(path))
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    model = matting_loader(store_with(path, digest), demo=False, config=TINY_CONFIG)()
    assert isinstance(model, BiRefNet) and model.input_size == TINY_CONFIG.input_size
    loaded = model.state_dict()
    assert all(torch.equal(loaded[name], tensor) for name, tensor in weights.items())


def test_a_damaged_or_foreign_file_is_refused_with_its_name(tmp_path: Path) -> None:
    path = tmp_path / f"{MATTING_FILE}.safetensors"
    save_file(tiny_weights(), str(path))
    with pytest.raises(ModelHashMismatch):
        matting_loader(store_with(path, "0" * 64), demo=False, config=TINY_CONFIG)()
    foreign = {"encoder.weight": torch.zeros(2, 2)}
    save_file(foreign, str(path))
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    with pytest.raises(UnsupportedModel, match=r"^birefnet_hr_matting: the weights do not fit"):
        matting_loader(store_with(path, digest), demo=False, config=TINY_CONFIG)()


def test_the_demo_network_is_birefnet_seeded_the_same_every_time(tmp_path: Path) -> None:
    store = ModelStore(models_dir=tmp_path, offline=True, state_dir=tmp_path)
    first, second = (matting_loader(store, demo=True)() for _ in range(2))
    assert isinstance(first, BiRefNet) and first.input_size == TINY_CONFIG.input_size
    assert all(
        torch.equal(a, b)
        for a, b in zip(first.state_dict().values(), second.state_dict().values(), strict=True)
    )
