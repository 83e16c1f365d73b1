"""The 48 GB plan for Qwen-Image-Layered: pieces wait in host memory, one on the card at a time.

On this CPU-only machine the device *is* host memory, so the moves are checked by
recording them, and the split is checked to be the same with and without the plan.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from torch import nn

from backend.split import layered
from backend.split.layered import LayeredComponents, resident, split_into_layers
from backend.store.layered_sets import wants_offload


class Recorded(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.moves: list[str] = []

    def to(self, *args, **kwargs):  # type: ignore[override]
        self.moves.append(str(args[0]))
        return self


def components(offload: bool) -> LayeredComponents:
    return LayeredComponents(
        transformer=None,
        vae=None,
        text_encoder=None,
        tokenizer=None,
        image_processor=None,
        scheduler_config={},
        device=torch.device("cpu"),
        dtype=torch.float32,
        offload=offload,
    )


def test_a_resident_piece_goes_to_the_device_and_back_whatever_happens() -> None:
    module = Recorded()
    with resident(components(offload=False), module):
        pass
    assert module.moves == []
    with pytest.raises(RuntimeError), resident(components(offload=True), module):
        raise RuntimeError("the step failed")
    assert module.moves == ["cpu", "cpu"]  # to the device (here the CPU), then back


def test_the_plan_is_asked_for_or_decided_by_the_card() -> None:
    assert wants_offload(torch.device("cpu"), None) is False
    assert wants_offload(torch.device("cpu"), True) is True
    assert wants_offload(torch.device("cuda"), False) is False


def test_a_split_is_the_same_with_the_plan_and_each_piece_works_in_turn(
    layered_demo: LayeredComponents, monkeypatch: pytest.MonkeyPatch
) -> None:
    rgba = np.random.default_rng(2).integers(0, 256, (32, 40, 4), dtype=np.uint8)
    rgba[..., 3] = 255
    settings = {"prompt": "a cup", "steps": 2, "seed": 3, "resolution": 64}
    plain = split_into_layers(layered_demo, rgba, 2, **settings)
    turns: list[str] = []
    real = layered.resident

    def recording(components: LayeredComponents, module: nn.Module):
        turns.append(type(module).__name__)
        return real(components, module)

    monkeypatch.setattr(layered, "resident", recording)
    offloaded = split_into_layers(
        dataclasses.replace(layered_demo, offload=True), rgba, 2, **settings
    )
    assert all(np.array_equal(a, b) for a, b in zip(plain, offloaded, strict=True))
    assert turns == [
        "Qwen2_5_VLForConditionalGeneration",
        "AutoencoderKLQwenImage",
        "QwenImageTransformer2DModel",
        "AutoencoderKLQwenImage",
    ]
    assert all(p.device.type == "cpu" for p in layered_demo.transformer.parameters())
