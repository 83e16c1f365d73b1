"""The matting fallback: the family detector on crafted metadata, matte and un-mix on gray."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from backend.split.matting import (
    NEUTRAL_GRAY,
    MattingNet,
    detect_failing_family,
    matte,
    matte_on_gray,
    unmix_foreground,
)

SDXL = {"modelspec.architecture": "stable-diffusion-xl-v1-base"}


@pytest.mark.parametrize(
    ("metadata", "family"),
    [
        ({**SDXL, "modelspec.title": "Illustrious-XL v1.0"}, "illustrious"),
        ({**SDXL, "modelspec.title": "NoobAI-XL (NAI-XL) V-Pred 1.0"}, "noobai"),
        ({"ss_sd_model_name": "noobaiXLNAIXL_epsilonPred11Version.safetensors"}, "noobai"),
        ({"ss_sd_model_name": "illustriousXL_v01.safetensors"}, "illustrious"),
        ({"modelspec.merged_from": "waiNSFWIllustrious_v140, someAnime"}, "illustrious"),
        (
            {
                "sd_merge_recipe": json.dumps({"type": "webui", "method": "Weighted sum"}),
                "sd_merge_models": json.dumps(
                    {
                        "ab12": {"name": "juggernautXL_v9", "legacy_hash": "x"},
                        "cd34": {"name": "noobaiXL_vpred10", "legacy_hash": "y"},
                    }
                ),
            },
            "noobai",
        ),
        ({**SDXL, "modelspec.prediction_type": "v"}, "sdxl-vpred"),
        ({**SDXL, "modelspec.title": "Juggernaut XL v9"}, None),
        ({"sd_merge_models": "not json"}, None),
        ({}, None),
    ],
)
def test_the_family_is_read_from_metadata(metadata: dict[str, str], family: str | None) -> None:
    assert detect_failing_family(metadata) == family


def test_the_family_is_read_from_state_dict_markers_and_the_file_name() -> None:
    unet = ["model.diffusion_model.input_blocks.0.0.weight", "conditioner.embedders.0.x"]
    assert detect_failing_family(unet) is None
    assert detect_failing_family([*unet, "v_pred", "ztsnr"]) == "sdxl-vpred"
    assert detect_failing_family(unet, filename="waiNSFWIllustrious_v140.safetensors") == (
        "illustrious"
    )
    assert detect_failing_family([*unet, "v_pred"], filename="noobai_vpred.safetensors") == "noobai"
    assert detect_failing_family({}, filename="illustration_style_xl.safetensors") is None


def _net(seed: int = 0, input_size: int = 32) -> MattingNet:
    torch.manual_seed(seed)
    return MattingNet(widths=(4, 8, 16), input_size=input_size).eval()


def test_the_stand_in_has_its_documented_layout() -> None:
    shapes = {name: tuple(t.shape) for name, t in _net().state_dict().items()}
    assert shapes["encoder.0.0.weight"] == (4, 3, 3, 3)
    assert shapes["encoder.2.0.weight"] == (16, 8, 3, 3)
    assert shapes["decoder.0.0.weight"] == (8, 24, 3, 3)  # up from 16, concat 8
    assert shapes["decoder.1.0.weight"] == (4, 12, 3, 3)
    assert shapes["head.weight"] == (1, 4, 1, 1)
    logits = _net()(torch.zeros(1, 3, 32, 32))
    assert logits.shape == (1, 1, 32, 32)


def test_matte_gives_alpha_at_the_pictures_size_deterministically() -> None:
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (50, 70, 3), dtype=np.uint8)
    alpha = matte(rgb, _net())
    assert alpha.shape == (50, 70) and alpha.dtype == np.uint8
    assert np.ptp(alpha) > 0
    assert np.array_equal(alpha, matte(rgb, _net()))
    assert not np.array_equal(alpha, matte(rgb, _net(seed=1)))
    with pytest.raises(ValueError, match=r"rgb must be \(H, W, 3\) uint8"):
        matte(np.zeros((4, 4, 4), np.uint8), _net())


def test_matte_feeds_the_model_imagenet_normalised_pixels_at_its_input_size() -> None:
    seen: list[torch.Tensor] = []

    class Probe(MattingNet):
        def forward(self, pixels: torch.Tensor) -> torch.Tensor:
            seen.append(pixels)
            return torch.full((1, 1, self.input_size, self.input_size), 3.0)

    alpha = matte(np.full((10, 20, 3), 255, np.uint8), Probe(input_size=16))
    assert seen[0].shape == (1, 3, 16, 16)
    torch.testing.assert_close(
        seen[0][0, :, 0, 0], torch.tensor([2.2489, 2.4286, 2.64]), atol=1e-3, rtol=0
    )
    assert (alpha == round(255 / (1 + np.exp(-3.0)))).all()


def test_unmixing_from_gray_recovers_the_foreground_colour() -> None:
    rng = np.random.default_rng(1)
    colour = rng.integers(0, 256, (16, 16, 3)).astype(np.float32) / 255
    alpha = rng.integers(0, 256, (16, 16)).astype(np.uint8)
    a = alpha.astype(np.float32)[..., None] / 255
    on_gray = ((a * colour + (1 - a) * NEUTRAL_GRAY) * 255).round().astype(np.uint8)
    rgba = unmix_foreground(on_gray, alpha)
    assert rgba.shape == (16, 16, 4) and np.array_equal(rgba[..., 3], alpha)
    visible = alpha > 64  # rounding error grows as 1/alpha
    error = np.abs(rgba[..., :3].astype(int) - (colour * 255).round().astype(int))
    assert error[visible].max() <= 2
    clear = alpha == 0
    assert np.array_equal(rgba[clear][:, :3], on_gray[clear])


def test_matte_on_gray_returns_straight_rgba() -> None:
    rgb = np.full((12, 12, 3), 128, np.uint8)
    rgb[3:9, 3:9] = (250, 20, 20)
    rgba = matte_on_gray(rgb, _net())
    assert rgba.shape == (12, 12, 4) and rgba.dtype == np.uint8
    assert np.array_equal(rgba[..., 3], matte(rgb, _net()))
