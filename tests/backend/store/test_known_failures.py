"""Checkpoints LayerDiffuse fails on are named before generating (`store.known_failures`).

Each source is made for real: safetensors files with the metadata or marker tensors the
model sites' files carry, a diffusers folder, a hub id. A neutral checkpoint says nothing.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

from backend.store.known_failures import failing_family_warning
from protocol import ModelFamily

SDXL, SD15 = ModelFamily.SDXL, ModelFamily.SD15
TENSOR = {"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(1)}


def checkpoint(path: Path, metadata: dict[str, str] | None = None, **extra: torch.Tensor) -> Path:
    save_file({**TENSOR, **extra}, str(path), metadata=metadata)
    return path


def test_modelspec_and_merge_metadata_name_the_family(tmp_path: Path) -> None:
    titled = checkpoint(tmp_path / "a.safetensors", {"modelspec.title": "Illustrious XL v1.0"})
    warning = failing_family_warning(titled, SDXL)
    assert warning is not None
    assert warning.startswith("LayerDiffuse is known to fail on Illustrious-XL checkpoints")
    assert "like a.safetensors" in warning and "(sdxl_matted)" in warning
    models = json.dumps({"ab12": {"name": "noobaiXLNAIXL_epsilonPred11Version"}})
    merged = checkpoint(tmp_path / "merge.safetensors", {"sd_merge_models": models})
    assert "NoobAI-XL" in (failing_family_warning(merged, SDXL) or "")


def test_a_v_prediction_marker_is_enough(tmp_path: Path) -> None:
    marked = checkpoint(tmp_path / "m.safetensors", {"format": "pt"}, v_pred=torch.zeros(0))
    assert "v-prediction SDXL" in (failing_family_warning(marked, SDXL) or "")


def test_the_file_name_is_read_when_nothing_else_says(tmp_path: Path) -> None:
    named = checkpoint(tmp_path / "waiNSFWIllustrious_v140.safetensors")
    assert "Illustrious-XL" in (failing_family_warning(named, SDXL) or "")
    assert failing_family_warning(checkpoint(tmp_path / "juggernautXL.safetensors"), SDXL) is None


def test_folders_hub_ids_and_families(tmp_path: Path) -> None:
    folder = tmp_path / "my-sdxl"
    (folder / "unet").mkdir(parents=True)
    checkpoint(
        folder / "unet" / "diffusion_pytorch_model.safetensors",
        {"modelspec.merged_from": "NoobAI-XL-1.1"},
    )
    assert "NoobAI-XL" in (failing_family_warning(folder, SDXL) or "")
    assert "Illustrious" in (failing_family_warning("OnomaAIResearch/Illustrious-xl", SDXL) or "")
    assert failing_family_warning("stabilityai/stable-diffusion-xl-base-1.0", SDXL) is None
    sd15 = failing_family_warning("someone/illustrious-sd15-merge", SD15) or ""
    assert "trained on SD1.5 base" in sd15 and "(sd15_matted)" in sd15
    assert failing_family_warning("Qwen/Illustrious", ModelFamily.FLUX) is None


def test_an_unreadable_file_is_judged_by_its_name_only(tmp_path: Path) -> None:
    broken = tmp_path / "illustrious_broken.safetensors"
    broken.write_bytes(b"\xff" * 16)
    assert "Illustrious-XL" in (failing_family_warning(broken, SDXL) or "")
    assert failing_family_warning(tmp_path / "absent.safetensors", SDXL) is None
