"""The shipped configs build the real SD1.5 and SDXL-base components (on the meta device)."""

from __future__ import annotations

import json

import pytest
import torch
from diffusers import AutoencoderKL, EulerDiscreteScheduler, PNDMScheduler, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

from backend.store.configs import COMPONENTS, CONFIG_ROOT, config_path
from protocol.methods import ModelFamily

SD_FAMILIES = (ModelFamily.SD15, ModelFamily.SDXL)  # single-file checkpoints, shipped configs


def _config(family: ModelFamily, component: str) -> dict[str, object]:
    return json.loads(config_path(family, component).read_text(encoding="utf-8"))


def _count(model: torch.nn.Module) -> int:
    return sum(parameter.numel() for parameter in model.parameters())


# Sources: the two UNet counts are the well-known sizes of SD1.5 and SDXL base (also in
# reference/layerdiffuse.md); the text encoder counts are worked out from the configs
# in the comments; the VAE decoder slice (post_quant_conv + decoder) is 49,490,199 in the
# model card of ferrotorch/sd-v1-5-vae-decoder on Hugging Face, which leaves the encoder
# side (encoder + quant_conv) at 34,163,664 of the VAE's 83,653,863.
@pytest.mark.parametrize(
    ("family", "expected"), [(ModelFamily.SD15, 859_520_964), (ModelFamily.SDXL, 2_567_463_684)]
)
def test_unet_parameter_count(family: ModelFamily, expected: int) -> None:
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(_config(family, "unet"))
    assert _count(unet) == expected


@pytest.mark.parametrize("family", SD_FAMILIES)
def test_vae_parameter_count(family: ModelFamily) -> None:
    with torch.device("meta"):
        vae = AutoencoderKL.from_config(_config(family, "vae"))
    assert _count(vae) == 83_653_863
    assert _count(vae.decoder) + _count(vae.post_quant_conv) == 49_490_199


@pytest.mark.parametrize("family", SD_FAMILIES)
def test_clip_vit_l_text_encoder_parameter_count(family: ModelFamily) -> None:
    # embeddings (49408 + 77) x 768 = 38,004,480; 12 layers x 7,087,872 (attention
    # 4 x (768^2 + 768), mlp 2 x 768 x 3072 + 3072 + 768, two layer norms 3,072);
    # final layer norm 1,536: 123,060,480
    with torch.device("meta"):
        model = CLIPTextModel(CLIPTextConfig.from_dict(_config(family, "text_encoder")))
    assert _count(model) == 123_060_480


def test_open_clip_big_g_text_encoder_parameter_count() -> None:
    # embeddings (49408 + 77) x 1280 = 63,340,800; 32 layers x 19,677,440 (attention
    # 4 x (1280^2 + 1280), mlp 2 x 1280 x 5120 + 5120 + 1280, layer norms 5,120); final
    # layer norm 2,560; projection 1280 x 1280 = 1,638,400: 694,659,840
    config = CLIPTextConfig.from_dict(_config(ModelFamily.SDXL, "text_encoder_2"))
    with torch.device("meta"):
        model = CLIPTextModelWithProjection(config)
    assert _count(model) == 694_659_840


def test_the_scheduler_configs_build_their_schedulers() -> None:
    sd15 = PNDMScheduler.from_config(_config(ModelFamily.SD15, "scheduler"))
    sdxl = EulerDiscreteScheduler.from_config(_config(ModelFamily.SDXL, "scheduler"))
    for scheduler in (sd15, sdxl):
        config = scheduler.config
        assert (config.beta_start, config.beta_end, config.beta_schedule) == (
            0.00085,
            0.012,
            "scaled_linear",
        )
        assert (config.prediction_type, config.steps_offset) == ("epsilon", 1)
    assert sdxl.config.timestep_spacing == "leading"


def test_the_vae_scaling_factors_differ_by_family() -> None:
    assert _config(ModelFamily.SD15, "vae")["scaling_factor"] == 0.18215
    assert _config(ModelFamily.SDXL, "vae")["scaling_factor"] == 0.13025


def test_every_component_has_a_config_file() -> None:
    for family, components in COMPONENTS.items():
        for component in components:
            assert config_path(family, component).is_file()
    assert config_path("sdxl", "scheduler") == CONFIG_ROOT / "sdxl/scheduler/scheduler_config.json"


def test_an_unknown_component_is_named() -> None:
    with pytest.raises(ValueError) as caught:
        config_path(ModelFamily.SD15, "text_encoder_2")
    assert str(caught.value) == (
        "sd15 has no 'text_encoder_2' config; known: unet, vae, text_encoder, scheduler"
    )
