"""`layerdiffuse generate --lora` and `--lora-weight`: few-step LoRAs by name, any by file."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from backend.cli import EXIT_USAGE, main
from backend.store.demo_loras import few_step_lora_state_dict


def _generate(output: Path, *options: str) -> int:
    argv = ["generate", "--demo", "-p", "a glass", "-W", "64", "-H", "64", "--seed", "3"]
    return main([*argv, "--output", str(output), *options])


def _parameters(output: Path) -> str:
    (path,) = [p for p in output.glob("*.png") if "preview" not in p.name]
    with Image.open(path) as image:
        return image.info["parameters"]


@pytest.mark.usefixtures("demo_xdg_cache")
def test_a_few_step_lora_by_name_brings_its_settings(tmp_path: Path) -> None:
    torch.set_num_threads(1)
    assert _generate(tmp_path / "a", "--lora", "hyper_sd15_8steps") == 0
    text = _parameters(tmp_path / "a")
    assert "Steps: 8, Sampler: Euler SGM Uniform, CFG scale: 1, " in text
    assert 'Lora: "hyper_sd15_8steps: 1"' in text


@pytest.mark.usefixtures("demo_xdg_cache")
def test_flags_typed_beside_it_win(tmp_path: Path) -> None:
    torch.set_num_threads(1)
    options = ("--lora", "hyper_sd15_8steps", "--steps", "2", "--lora-weight", "0.5")
    assert _generate(tmp_path / "a", *options) == 0
    text = _parameters(tmp_path / "a")
    assert "Steps: 2, Sampler: Euler SGM Uniform, CFG scale: 1, " in text
    assert 'Lora: "hyper_sd15_8steps: 0.5"' in text


@pytest.mark.usefixtures("demo_xdg_cache")
def test_a_lora_file_is_merged_by_its_name(tmp_path: Path, demo_models) -> None:
    torch.set_num_threads(1)
    path = tmp_path / "watercolour.safetensors"
    save_file(few_step_lora_state_dict(demo_models.base.unet, seed=11), str(path))
    assert _generate(tmp_path / "a", "--lora", str(path), "--steps", "1") == 0
    assert 'Lora: "watercolour: 1"' in _parameters(tmp_path / "a")


@pytest.mark.usefixtures("demo_xdg_cache")
def test_a_missing_file_or_unknown_name_is_refused_naming_the_flag(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "nothing.safetensors"
    assert _generate(tmp_path / "a", "--lora", str(missing)) == EXIT_USAGE
    assert capsys.readouterr().err.strip() == f"error: --lora: no such file: {missing}"
    assert _generate(tmp_path / "b", "--lora", "hyper_sdxl_8steps") == EXIT_USAGE
    assert capsys.readouterr().err.strip() == (
        "error: --lora: hyper_sdxl_8steps is a sdxl LoRA, and the method runs on sd15 models "
        "(hyper_sd15_8steps, hyper_sd15_8steps_cfg)"
    )
    assert _generate(tmp_path / "c", "--lora", "lcm_sd21") == EXIT_USAGE
    assert capsys.readouterr().err.strip() == (
        "error: --lora: 'lcm_sd21' is neither a few-step LoRA of sd15 "
        "(hyper_sd15_8steps, hyper_sd15_8steps_cfg) nor a .safetensors file"
    )
