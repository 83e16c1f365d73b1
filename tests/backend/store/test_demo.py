"""The demo model set: built once, deterministically, small, and loadable as the real files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from backend.layerdiffuse import (
    attach_sd15_layer_model,
    load_safetensors,
    load_transparent_decoder,
    load_transparent_encoder,
)
from backend.model_set import ModelSet
from backend.store.catalogue import CATALOGUE, FEW_STEP_LORAS, RELEASED_FILES
from backend.store.demo import DEMO_VERSION, demo_root, ensure_demo_set
from backend.store.download import ModelStore, VerifyStatus, sha256_of
from protocol import ModelFamily

# name → (frames, has a control encoder)
ATTENTION_FILES = {
    "layer_sd15_transparent_attn": (1, False),
    "layer_sd15_joint": (3, False),
    "layer_sd15_fg2bg": (2, True),
    "layer_sd15_bg2fg": (2, True),
}
VAE_FILES = ("layer_sd15_vae_transparent_decoder", "layer_sd15_vae_transparent_encoder")
FEW_STEP_FILES = tuple(
    name for name, entry in FEW_STEP_LORAS.items() if entry.family is ModelFamily.SD15
)
MB = 1_000_000


def _file_hashes(root: Path) -> dict[str, str]:
    return {
        str(path.relative_to(root)): sha256_of(path)
        for path in sorted(root.rglob("*"))
        if path.is_file()
    }


def _mtimes(root: Path) -> dict[Path, int]:
    return {path: path.stat().st_mtime_ns for path in root.rglob("*")}


@pytest.fixture(scope="module")
def second_build(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo set built again, in a folder of its own."""
    cache_dir = tmp_path_factory.mktemp("second-demo-build")
    ensure_demo_set(cache_dir)
    return demo_root(cache_dir)


def test_the_set_lies_in_a_versioned_folder_of_the_cache(demo_cache_dir: Path) -> None:
    demo = ensure_demo_set(demo_cache_dir)
    root = demo_cache_dir / f"demo-v{DEMO_VERSION}"
    assert demo_root(demo_cache_dir) == root
    assert (demo.base_dir, demo.models_dir) == (root / "base", root / "layer_models")
    assert (demo.base_dir / "model_index.json").is_file()


def test_the_default_folder_follows_xdg_cache_home(tmp_path: Path) -> None:
    # the store conftest points XDG_CACHE_HOME into tmp_path
    assert demo_root() == tmp_path / "xdg-cache" / "krita-layerdiffuse" / f"demo-v{DEMO_VERSION}"


def test_a_second_call_reuses_the_built_set(demo_cache_dir: Path) -> None:
    first = ensure_demo_set(demo_cache_dir)
    before = _mtimes(demo_cache_dir)
    again = ensure_demo_set(demo_cache_dir)
    assert again == first
    assert _mtimes(demo_cache_dir) == before


def test_two_builds_are_byte_identical(demo_cache_dir: Path, second_build: Path) -> None:
    first = json.loads((demo_root(demo_cache_dir) / "manifest.json").read_text())
    second = json.loads((second_build / "manifest.json").read_text())
    assert first == second
    assert sorted(first["files"]) == sorted([*ATTENTION_FILES, *VAE_FILES, *FEW_STEP_FILES])
    assert _file_hashes(demo_root(demo_cache_dir)) == _file_hashes(second_build)


def test_the_catalogue_describes_the_demo_files(demo_cache_dir: Path, tmp_path: Path) -> None:
    demo = ensure_demo_set(demo_cache_dir)
    store = ModelStore(
        models_dir=demo.models_dir, offline=True, catalogue=demo.catalogue, state_dir=tmp_path
    )
    assert sorted(demo.catalogue) == sorted([*ATTENTION_FILES, *VAE_FILES, *FEW_STEP_FILES])
    for name, entry in demo.catalogue.items():
        path = demo.models_dir / entry.filename
        assert entry.filename == CATALOGUE[name].filename
        assert (entry.size_bytes, entry.size_exact) == (path.stat().st_size, True)
        assert entry.sha256 != CATALOGUE[name].sha256
        assert entry.description == "demo: " + CATALOGUE[name].description
        result = store.verify(name)
        assert (result.status, result.path, result.actual_sha256) == (
            VerifyStatus.OK,
            path,
            entry.sha256,
        )


@pytest.mark.parametrize(("name", "layout"), ATTENTION_FILES.items())
def test_each_attention_file_attaches_to_the_demo_unet(
    demo_models: ModelSet, name: str, layout: tuple[int, bool]
) -> None:
    unet = demo_models.base.unet
    before = dict(unet.attn_processors)
    handle = attach_sd15_layer_model(unet, demo_models.load_layer_file(name))
    try:
        assert (handle.frames, handle.layout.uses_control) == layout
        assert handle.active
    finally:
        handle.detach()
    assert all(unet.attn_processors[key] is before[key] for key in before)


def test_the_vae_files_load_strictly_as_transparent_decoder_and_encoder(
    demo_cache_dir: Path,
) -> None:
    demo = ensure_demo_set(demo_cache_dir)
    decoder_file, encoder_file = (
        load_safetensors(demo.models_dir / demo.catalogue[name].filename) for name in VAE_FILES
    )
    decoder = load_transparent_decoder(decoder_file)
    encoder = load_transparent_encoder(encoder_file)
    for module, tensors in ((decoder, decoder_file), (encoder, encoder_file)):
        state = module.state_dict()
        assert state.keys() == tensors.keys()
        assert all(torch.equal(state[key], tensors[key]) for key in tensors)


def test_the_layer_files_are_small(demo_cache_dir: Path) -> None:
    demo = ensure_demo_set(demo_cache_dir)
    sizes = {path.name: path.stat().st_size for path in demo.models_dir.iterdir()}
    assert len(sizes) == 6 + len(FEW_STEP_FILES)
    assert max(sizes.values()) < 5 * MB, sizes
    total = sum(
        path.stat().st_size for path in demo_root(demo_cache_dir).rglob("*") if path.is_file()
    )
    assert total < 25 * MB


def test_a_set_without_its_manifest_is_rebuilt(tmp_path: Path) -> None:
    demo = ensure_demo_set(tmp_path)
    root = demo_root(tmp_path)
    expected = json.loads((root / "manifest.json").read_text())
    damaged = demo.models_dir / RELEASED_FILES["layer_sd15_joint"].filename
    damaged.write_bytes(b"half a file")
    (root / "manifest.json").unlink()

    rebuilt = ensure_demo_set(tmp_path)
    assert json.loads((root / "manifest.json").read_text()) == expected
    assert sha256_of(damaged) == rebuilt.catalogue["layer_sd15_joint"].sha256
    assert sorted(path.name for path in tmp_path.iterdir()) == [root.name]
