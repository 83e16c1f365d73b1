"""The matting model of the matted methods (the fallback where LayerDiffuse fails).

A real base model gets BiRefNet's HR matting network (`birefnet_hr_matting`, fetched and
hash-checked by the store like the LayerDiffuse files, read strictly into
`split.birefnet.BiRefNet`); the demo set gets the same architecture at its tiny size
(`split.birefnet.TINY_CONFIG`), with weights seeded from a fixed number, so its alphas are
as random as the demo's pictures but every line of the network runs.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import torch

from backend.errors import UnsupportedModel
from backend.split.birefnet import (
    BIREFNET_HR_MATTING,
    TINY_CONFIG,
    BiRefNet,
    BiRefNetConfig,
    CheckpointMismatchError,
    load_birefnet,
)
from backend.store.download import ModelStore

MATTING_FILE = "birefnet_hr_matting"
DEMO_MATTING_SEED = 19
MATTING_CONFIG = dataclasses.replace(BIREFNET_HR_MATTING, input_size=1024)
"""The HR release run at 1024²: its weights are size-free, a generated layer is about
1024² (SDXL's native area; SD1.5's is smaller), and 2048² would take four times the
activation memory beside the base model for no detail the picture has."""


def matting_loader(
    store: ModelStore, *, demo: bool, config: BiRefNetConfig = MATTING_CONFIG
) -> Callable[[], torch.nn.Module]:
    """What builds the matting model when a matted method first runs (not before: the
    file is 444 MB, and only the fallback needs it).

    Args:
        store: where the real file comes from.
        demo: build the tiny seeded network instead.
        config: the network the file holds (the HR matting release) and its input size.

    The loader raises `ModelNotFound` / `ModelHashMismatch` from the store, and
    `UnsupportedModel` for a file whose tensors do not fit the network.
    """

    def load() -> torch.nn.Module:
        if demo:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(DEMO_MATTING_SEED)
                return BiRefNet(TINY_CONFIG).eval()
        try:
            return load_birefnet(store.load_state_dict(MATTING_FILE), config, dtype=torch.float32)
        except CheckpointMismatchError as error:
            raise UnsupportedModel(f"{MATTING_FILE}: {error}") from error

    return load
