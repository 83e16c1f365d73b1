"""PNG parameters text in A1111's form, with the original extension's keys."""

from __future__ import annotations

import json

import numpy as np
import pytest

from backend.methods.infotext import VERSION, format_parameters
from backend.methods.request import GenerationRequest
from protocol import LayerRole, Method, NoiseSource, ResizeMode, Sampler

FG, BG, BLEND = LayerRole.FOREGROUND, LayerRole.BACKGROUND, LayerRole.BLENDED
MASK = LayerRole.MASK

# The seed README's SD1.5 sanity check ("### SD1.5"), as the original extension wrote it.
README_PARAMETERS = (
    "Steps: 20, Sampler: DPM++ 2M Karras, CFG scale: 7, Seed: 12345, Size: 512x512, "
    "Model hash: 15012c538f, Model: realisticVisionV51_v51VAE, layerdiffusion_enabled: True, "
    "layerdiffusion_method: (SD1.5) Only Generate Transparent Image (Attention Injection), "
    "layerdiffusion_weight: 1, layerdiffusion_ending_step: 1, layerdiffusion_fg_image: False, "
    "layerdiffusion_bg_image: False, layerdiffusion_blend_image: False, "
    "layerdiffusion_resize_mode: Crop and Resize, layerdiffusion_fg_additional_prompt: , "
    "layerdiffusion_bg_additional_prompt: , layerdiffusion_blend_additional_prompt: , "
    "Version: f0.0.17v1.8.0rc-latest-276-g29be1da7"
)


def _sanity_check_request(**options: object) -> GenerationRequest:
    fields: dict[str, object] = {
        "method": Method.SD15_TRANSPARENT,
        "prompt": "an apple, 4k, high quality",
        "negative_prompt": "bad, ugly",
        "steps": 20,
        "sampler": Sampler.DPMPP_2M_KARRAS,
        "cfg_scale": 7.0,
        "seed": 12345,
        "width": 512,
        "height": 512,
    }
    fields.update(options)
    return GenerationRequest(**fields)  # type: ignore[arg-type]


def _settings(text: str) -> str:
    return text.split("\n")[2]


def test_the_sd15_sanity_check_with_gpu_noise_writes_the_readmes_parameters() -> None:
    """The README's seeds were drawn on the GPU, A1111's default, which it does not write."""
    text = format_parameters(
        _sanity_check_request(noise_source=NoiseSource.GPU),
        12345,
        "realisticVisionV51_v51VAE",
        (512, 512),
    )
    prompt, negative, settings = text.split("\n")
    assert prompt == "an apple, 4k, high quality"
    assert negative == "Negative prompt: bad, ugly"
    expected = README_PARAMETERS.replace("Model hash: 15012c538f, ", "")
    expected = expected[: expected.index("Version: ")] + f"Version: {VERSION}"
    assert settings == expected


def test_cpu_noise_is_written_as_a1111_writes_it() -> None:
    settings = _settings(format_parameters(_sanity_check_request(), 1, "m", (512, 512)))
    assert "Model: m, RNG: CPU, layerdiffusion_enabled" in settings


def test_the_one_click_workflows_write_step_2s_settings() -> None:
    request = GenerationRequest(
        method=Method.SDXL_FG_TO_BG,
        prompt="a dog sitting in room, high quality",
        negative_prompt="bad, ugly",
        second_prompt="room, high quality",
        inputs={FG: np.zeros((8, 8, 4), np.uint8)},
    )
    settings = _settings(format_parameters(request, 1, "m", (1024, 1024)))
    assert (
        'layerdiffusion_second_prompt: "room, high quality", '
        'layerdiffusion_second_negative_prompt: "bad, ugly", '
        "layerdiffusion_second_sampler: UniPC, layerdiffusion_second_ending_step: 0.5, "
    ) in settings


def test_the_seed_and_size_are_the_results_own() -> None:
    settings = _settings(
        format_parameters(_sanity_check_request(width=500, height=300), 12347, "m", (512, 320))
    )
    assert "Seed: 12347, Size: 512x320, Model: m, " in settings


@pytest.mark.parametrize(
    ("model_name", "written"),
    [
        ("plain_name", "Model: plain_name, "),
        ("a, b", 'Model: "a, b", '),
        (
            "demo-sd15 (tiny random weights: pictures are noise)",
            'Model: "demo-sd15 (tiny random weights: pictures are noise)", ',
        ),
        ('say "hi", ok', 'Model: "say \\"hi\\", ok", '),
        ("two\nlines", 'Model: "two\\nlines", '),
    ],
)
def test_values_with_commas_colons_or_newlines_are_json_quoted(
    model_name: str, written: str
) -> None:
    settings = format_parameters(_sanity_check_request(), 1, model_name, (512, 512))
    assert written in settings
    if written.startswith('Model: "'):
        quoted = written.removeprefix("Model: ").removesuffix(", ")
        assert json.loads(quoted) == model_name


def test_layer_prompts_are_written_and_quoted_for_sd15_layer_methods() -> None:
    request = _sanity_check_request(
        method=Method.SD15_JOINT,
        layer_prompts={FG: "a cat, sitting", BG: "a room", BLEND: ""},
    )
    settings = _settings(format_parameters(request, 1, "m", (512, 512)))
    assert (
        'layerdiffusion_fg_additional_prompt: "a cat, sitting", '
        "layerdiffusion_bg_additional_prompt: a room, "
        "layerdiffusion_blend_additional_prompt: , "
    ) in settings
    assert (
        "layerdiffusion_method: (SD1.5) Generate Everything Together (need batch size 3), "
        in settings
    )


def test_sdxl_methods_have_no_layer_prompt_keys() -> None:
    settings = _settings(
        format_parameters(
            _sanity_check_request(method=Method.SDXL_TRANSPARENT_ATTN), 1, "m", (1024, 1024)
        )
    )
    assert "additional_prompt" not in settings
    assert "layerdiffusion_resize_mode: Crop and Resize, Version: " in settings


def test_img2img_adds_the_denoising_strength_and_marks_the_foreground_image() -> None:
    image = np.zeros((8, 8, 4), dtype=np.uint8)
    request = _sanity_check_request(
        inputs={FG: image}, denoise_strength=0.5, resize_mode=ResizeMode.JUST_RESIZE
    )
    settings = _settings(format_parameters(request, 12345, "m", (512, 512)))
    assert "Model: m, Denoising strength: 0.5, RNG: CPU, layerdiffusion_enabled: True, " in settings
    assert "layerdiffusion_fg_image: True, layerdiffusion_bg_image: False, " in settings
    assert "layerdiffusion_resize_mode: Just Resize, " in settings


def test_txt2img_has_no_denoising_strength() -> None:
    settings = _settings(format_parameters(_sanity_check_request(), 1, "m", (512, 512)))
    assert "Denoising strength" not in settings


def test_a_required_condition_layer_is_not_img2img() -> None:
    image = np.zeros((8, 8, 4), dtype=np.uint8)
    request = _sanity_check_request(method=Method.SD15_FG_TO_BG, inputs={FG: image})
    settings = _settings(format_parameters(request, 1, "m", (512, 512)))
    assert "Denoising strength" not in settings
    assert "layerdiffusion_fg_image: True, " in settings


@pytest.mark.parametrize(
    ("cfg_scale", "weight", "ending_step", "written"),
    [
        (7.0, 1.0, 1.0, ("CFG scale: 7, ", "weight: 1, layerdiffusion_ending_step: 1, ")),
        (7.5, 0.5, 0.25, ("CFG scale: 7.5, ", "weight: 0.5, layerdiffusion_ending_step: 0.25, ")),
    ],
)
def test_numbers_are_written_without_trailing_zeros(
    cfg_scale: float, weight: float, ending_step: float, written: tuple[str, str]
) -> None:
    request = _sanity_check_request(cfg_scale=cfg_scale, weight=weight, ending_step=ending_step)
    settings = _settings(format_parameters(request, 1, "m", (512, 512)))
    assert written[0] in settings
    assert f"layerdiffusion_{written[1]}" in settings


def test_a_second_pass_writes_its_resize_and_strength_and_a_mask_is_marked() -> None:
    mask = np.zeros((640, 640, 4), dtype=np.uint8)
    request = _sanity_check_request(width=640, height=640, hires_strength=0.4, inputs={MASK: mask})
    settings = _settings(format_parameters(request, 12345, "m", (640, 640)))
    assert "Size: 640x640, Model: m, Hires resize: 640x640, Hires strength: 0.4, " in settings
    assert "layerdiffusion_blend_image: False, layerdiffusion_mask: True, " in settings
    plain = _settings(format_parameters(_sanity_check_request(), 12345, "m", (512, 512)))
    assert "Hires" not in plain and "mask" not in plain
