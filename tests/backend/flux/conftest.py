"""Fixtures of the FLUX tests: the real FLUX.1-dev structure on `meta`, the tiny demo set."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from diffusers import AutoencoderKL, FluxTransformer2DModel

from backend.model_set import FluxModelSet
from backend.store.flux_demo import FluxDemoSet, build_flux_demo_set
from backend.store.flux_sets import open_flux_demo_files

# black-forest-labs/FLUX.1-dev transformer/config.json and vae/config.json
FLUX_DEV_TRANSFORMER = {
    "patch_size": 1,
    "in_channels": 64,
    "num_layers": 19,
    "num_single_layers": 38,
    "attention_head_dim": 128,
    "num_attention_heads": 24,
    "joint_attention_dim": 4096,
    "pooled_projection_dim": 768,
    "guidance_embeds": True,
    "axes_dims_rope": (16, 56, 56),
}
FLUX_DEV_VAE = {
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ("DownEncoderBlock2D",) * 4,
    "up_block_types": ("UpDecoderBlock2D",) * 4,
    "block_out_channels": (128, 256, 512, 512),
    "layers_per_block": 2,
    "latent_channels": 16,
    "norm_num_groups": 32,
    "scaling_factor": 0.3611,
    "shift_factor": 0.1159,
    "use_quant_conv": False,
    "use_post_quant_conv": False,
}


@pytest.fixture(scope="session")
def flux_dev_shapes() -> dict[str, tuple[int, ...]]:
    """Parameter name → shape of the real FLUX.1-dev transformer, built on `meta`."""
    with torch.device("meta"):
        transformer = FluxTransformer2DModel(**FLUX_DEV_TRANSFORMER)
    return {name: tuple(p.shape) for name, p in transformer.named_parameters()}


@pytest.fixture(scope="session")
def flux_dev_vae_shapes() -> dict[str, tuple[int, ...]]:
    """State-dict key → shape of the real FLUX.1-dev VAE, built on `meta`."""
    with torch.device("meta"):
        vae = AutoencoderKL(**FLUX_DEV_VAE)
    return {name: tuple(t.shape) for name, t in vae.state_dict().items()}


@pytest.fixture(scope="session")
def flux_demo_set(tmp_path_factory: pytest.TempPathFactory) -> FluxDemoSet:
    return build_flux_demo_set(tmp_path_factory.mktemp("flux-demo") / "set", seed=0)


@pytest.fixture(scope="session")
def flux_demo(flux_demo_set: FluxDemoSet, tmp_path_factory: pytest.TempPathFactory) -> FluxModelSet:
    """The demo set loaded on the CPU in float32, its LoRA merged. Tests leave it as found."""
    torch.set_num_threads(1)
    cache = tmp_path_factory.mktemp("flux-cache")
    return open_flux_demo_files(flux_demo_set, cache, torch.device("cpu"), torch.float32)


@pytest.fixture
def cache(tmp_path: Path) -> Path:
    return tmp_path / "cache"
