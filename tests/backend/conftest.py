"""Fixtures shared by the backend tests: the demo model set, built once, and isolated caches."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
from huggingface_hub import constants as hub_constants

from backend.model_set import LayeredModelSet, ModelSet
from backend.store.demo import ensure_demo_set
from backend.store.model_sets import open_model_set
from protocol import ModelFamily


@pytest.fixture(scope="session")
def demo_cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The store's cache folder with the demo set built in it, once per session.

    It lies at `<xdg>/krita-layerdiffuse`, so pointing `XDG_CACHE_HOME` at its parent
    (the `demo_xdg_cache` fixture) makes the CLI find the same set.
    """
    cache_dir = tmp_path_factory.mktemp("xdg-cache") / "krita-layerdiffuse"
    ensure_demo_set(cache_dir)
    return cache_dir


@pytest.fixture(scope="session")
def demo_models(demo_cache_dir: Path) -> ModelSet:
    """The demo `ModelSet` on the CPU in float32, shared by the session's tests.

    Tests must leave it as they found it (attach layer models only with a detach; the
    SD1.5 methods keep theirs attached but switched off, which leaves the UNet as found).
    """
    return open_model_set(demo=True, cache_dir=demo_cache_dir, device="cpu", dtype="float32")


@pytest.fixture(scope="session")
def demo_sdxl_models(demo_cache_dir: Path) -> ModelSet:
    """The SDXL-shaped demo `ModelSet` on the CPU in float32, shared by the session."""
    return open_model_set(
        demo=True,
        demo_family=ModelFamily.SDXL,
        cache_dir=demo_cache_dir,
        device="cpu",
        dtype="float32",
    )


@pytest.fixture(scope="session")
def demo_layered_models(demo_cache_dir: Path) -> LayeredModelSet:
    """The Qwen-Image-Layered demo set on the CPU in float32, shared by the session."""
    return open_model_set(
        demo=True,
        demo_family=ModelFamily.QWEN_LAYERED,
        cache_dir=demo_cache_dir,
        device="cpu",
        dtype="float32",
    )


@pytest.fixture(scope="session")
def demo_illustrious_models(demo_cache_dir: Path) -> ModelSet:
    """The SDXL demo set named as an Illustrious-XL checkpoint: it warns, and its matted
    method runs (`known_failures`)."""
    return open_model_set(
        demo=True,
        demo_family=ModelFamily.SDXL,
        cache_dir=demo_cache_dir,
        device="cpu",
        dtype="float32",
        demo_lookalike="demo-illustriousXL_v01",
    )


@pytest.fixture
def empty_caches(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty machine: the store's cache and the Hugging Face cache inside tmp_path, offline.

    Returns:
        The Hugging Face cache folder (which does not exist yet).
    """
    hub_cache = tmp_path / "hf-cache"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(hub_cache))
    monkeypatch.setattr(hub_constants, "HF_TOKEN_PATH", str(tmp_path / "hf-token"))
    monkeypatch.setattr(hub_constants, "HF_STORED_TOKENS_PATH", str(tmp_path / "hf-tokens"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    return hub_cache


@pytest.fixture
def demo_xdg_cache(
    empty_caches: Path, demo_cache_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> Path:
    """Like `empty_caches`, but `XDG_CACHE_HOME` holds the session's built demo set.

    Returns:
        The store's cache folder (`default_cache_dir()`).
    """
    monkeypatch.setenv("XDG_CACHE_HOME", str(demo_cache_dir.parent))
    return demo_cache_dir


@pytest.fixture
def no_connections(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail any attempt to open a network connection."""

    def refuse(self: socket.socket, address: object) -> None:
        raise AssertionError(f"network access to {address}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
