"""The catalogue lists the 14 released files and the few-step LoRAs with consistent facts."""

from __future__ import annotations

import re
from collections import Counter

import pytest

from backend.errors import ModelNotFound
from backend.store.catalogue import (
    CATALOGUE,
    FEW_STEP_LORAS,
    FLUX_FILES,
    LAYERDIFFUSION_REPO,
    MATTING_FILES,
    RELEASED_FILES,
    FileKind,
    format_size,
    released_file,
)
from protocol.methods import ModelFamily, Sampler

# Parameter counts computed from the architectures (reference/layerdiffuse.md section 1.1);
# every released file is fp16, so its size is 2 bytes per parameter plus the JSON header.
PARAMETERS = {
    "layer_sd15_transparent_attn": 175_098_496,
    "layer_sd15_joint": 277_138_048,
    "layer_sd15_fg2bg": 281_425_568,
    "layer_sd15_bg2fg": 281_425_568,
    "layer_sd15_vae_transparent_decoder": 104_104_804,
    "layer_sd15_vae_transparent_encoder": 1_181_764,
    "layer_xl_transparent_attn": 371_589_120,
    "vae_transparent_decoder": 104_104_804,
    "vae_transparent_encoder": 1_181_764,
}


def test_all_fourteen_files_are_listed_once() -> None:
    assert len(RELEASED_FILES) == 14
    for name, entry in RELEASED_FILES.items():
        assert entry.name == name
        assert entry.filename == name + ".safetensors"
        assert (entry.repo_id, entry.revision) == (LAYERDIFFUSION_REPO, "main")
    families = Counter(entry.family for entry in RELEASED_FILES.values())
    assert families == {ModelFamily.SD15: 6, ModelFamily.SDXL: 8}
    kinds = Counter(entry.kind for entry in RELEASED_FILES.values())
    assert kinds == {
        FileKind.ATTENTION_SHARING: 4,
        FileKind.LORA: 1,
        FileKind.DIFF: 5,
        FileKind.TRANSPARENT_DECODER: 2,
        FileKind.TRANSPARENT_ENCODER: 2,
    }


def test_every_file_has_a_sha256_and_they_differ() -> None:
    hashes = [entry.sha256 for entry in RELEASED_FILES.values()]
    assert all(h is not None and re.fullmatch(r"[0-9a-f]{64}", h) for h in hashes)
    assert len(set(hashes)) == 14


def test_only_the_conv_file_size_is_an_estimate() -> None:
    estimates = [entry.name for entry in RELEASED_FILES.values() if not entry.size_exact]
    assert estimates == ["layer_xl_transparent_conv"]


@pytest.mark.parametrize(("name", "parameters"), PARAMETERS.items())
def test_sizes_agree_with_the_parameter_counts(name: str, parameters: int) -> None:
    header = RELEASED_FILES[name].size_bytes - 2 * parameters
    assert 0 < header < 200_000


def test_encoders_are_used_unscaled() -> None:
    encoders = [e for e in RELEASED_FILES.values() if e.kind is FileKind.TRANSPARENT_ENCODER]
    assert [(e.name, e.offset_scale) for e in encoders] == [
        ("layer_sd15_vae_transparent_encoder", 1.0),
        ("vae_transparent_encoder", 1.0),
    ]


def test_lookup_by_stem_or_file_name() -> None:
    assert released_file("layer_sd15_joint") is RELEASED_FILES["layer_sd15_joint"]
    assert released_file("vae_transparent_encoder.safetensors").family is ModelFamily.SDXL


def test_an_unknown_name_lists_the_known_ones() -> None:
    with pytest.raises(ModelNotFound) as caught:
        released_file("layer_sd21_joint")
    message = str(caught.value)
    assert message.startswith("unknown model file 'layer_sd21_joint'; known names: ")
    assert message.endswith(", ".join(sorted(CATALOGUE)))


def test_summaries_read_like_the_hub_listing() -> None:
    assert released_file("layer_xl_transparent_attn").summary() == (
        "layer_xl_transparent_attn  sdxl  lora  743.4 MB"
    )
    assert released_file("layer_xl_transparent_conv").summary() == (
        "layer_xl_transparent_conv  sdxl  diff  ~3.62 GB"
    )
    assert [format_size(n) for n in (999, 2_365_008, 3_619_791_856)] == [
        "999 B",
        "2.4 MB",
        "3.62 GB",
    ]


def test_the_few_step_loras_carry_hashes_sizes_and_their_settings() -> None:
    """Each distilled LoRA: a full sha256, its own repository and file, and the sampler,
    steps and CFG its authors advise (guidance 0 is CFG 1: no negative pass)."""
    assert set(CATALOGUE) == (
        set(RELEASED_FILES) | set(FEW_STEP_LORAS) | set(FLUX_FILES) | set(MATTING_FILES)
    )
    assert len(FEW_STEP_LORAS) == 7
    for entry in FEW_STEP_LORAS.values():
        assert entry.kind is FileKind.FEW_STEP_LORA
        assert entry.sha256 is not None and re.fullmatch(r"[0-9a-f]{64}", entry.sha256)
        assert entry.repo_id != LAYERDIFFUSION_REPO and entry.filename.endswith(".safetensors")
        assert entry.few_step is not None and 1 <= entry.few_step.steps <= 8
        assert entry.few_step.cfg_scale in (1.0, 5.0)
    dmd2 = FEW_STEP_LORAS["dmd2_sdxl_4step"]
    assert (dmd2.few_step.sampler, dmd2.few_step.steps) == (Sampler.LCM_SGM_UNIFORM, 4)
    assert dmd2.licence is not None and "non-commercial" in dmd2.licence
    assert released_file("sdxl_lightning_4step_lora.safetensors").family is ModelFamily.SDXL


def test_layerdiffuse_flux_files_are_listed_with_their_licence_and_hashes() -> None:
    """The `.pth` is a pickle: listed like any file (downloaded and hash-checked by the
    store), read only through the safe conversion, never by `load_state_dict`."""
    assert sorted(FLUX_FILES) == ["flux_layerlora", "flux_transparent_vae"]
    for entry in FLUX_FILES.values():
        assert (
            entry.family is ModelFamily.FLUX
            and entry.repo_id == "RedAIGC/Flux-version-LayerDiffuse"
        )
        assert entry.sha256 is not None and re.fullmatch(r"[0-9a-f]{64}", entry.sha256)
        assert entry.licence is not None and "AFL-3.0" in entry.licence
    assert FLUX_FILES["flux_transparent_vae"].filename == "TransparentVAE.pth"
