"""Fixtures of the Split-into-Layers tests: the tiny Qwen-Image-Layered demo, built once."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from backend.split.demo import build_layered_demo, open_layered_demo
from backend.split.layered import LayeredComponents


@pytest.fixture(scope="session")
def layered_demo_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_layered_demo(tmp_path_factory.mktemp("layered-demo") / "set", seed=0)


@pytest.fixture(scope="session")
def layered_demo(layered_demo_dir: Path) -> LayeredComponents:
    """The demo loaded from its folder on the CPU in float32. Tests leave it as found."""
    torch.set_num_threads(1)
    return open_layered_demo(layered_demo_dir)
