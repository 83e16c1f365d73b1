"""The transparent encoder has the released architecture and loads strictly."""

from __future__ import annotations

import pytest
import torch

from backend.layerdiffuse import TransparentVAEEncoder, load_transparent_encoder


def test_released_architecture_keys_and_size() -> None:
    with torch.device("meta"):
        encoder = TransparentVAEEncoder()
    state = encoder.state_dict()
    assert list(state) == [
        f"blocks.{i}.{kind}" for i in range(0, 17, 2) for kind in ("weight", "bias")
    ]
    # 1,181,764 parameters × 2 bytes = the released 2.37 MB fp16 files.
    assert sum(t.numel() for t in state.values()) == 1_181_764
    assert state["blocks.0.weight"].shape == (32, 4, 3, 3)
    assert state["blocks.16.weight"].shape == (4, 256, 3, 3)


def test_maps_rgba_to_latent_resolution() -> None:
    encoder = TransparentVAEEncoder(channels=(8, 8, 16, 16))
    assert encoder.downscale == 8
    assert encoder(torch.rand(2, 4, 64, 96)).shape == (2, 4, 8, 12)


def test_load_infers_widths_and_is_strict() -> None:
    torch.manual_seed(0)
    source = TransparentVAEEncoder(channels=(8, 8, 16, 16))
    loaded = load_transparent_encoder(source.state_dict())
    x = torch.rand(1, 4, 32, 32)
    assert torch.equal(loaded(x), source(x))

    extra = dict(source.state_dict(), **{"blocks.18.weight": torch.zeros(1)})
    with pytest.raises(ValueError, match="transparent encoder"):
        load_transparent_encoder(extra)
    missing = dict(source.state_dict())
    del missing["blocks.16.bias"]
    with pytest.raises(ValueError, match="transparent encoder"):
        load_transparent_encoder(missing)
    with pytest.raises(ValueError, match="not a transparent encoder"):
        load_transparent_encoder({"conv_in.weight": torch.zeros(1)})
