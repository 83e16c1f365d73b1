"""The demo model set: tiny random models with the real structure, built in code.

It lets the whole chain — store, loading, methods, decoder, server, plugin — run on a
CPU with no download. Every model is the real class at a small width, seeded
deterministically, and written to disk in the real formats (a diffusers folder for
the base model; the LayerDiffuse files in their released key layouts), so it is
loaded by exactly the code that loads the real files. Its pictures are noise; its
layers, alpha and plumbing are real. Everything built from it says "demo".
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from safetensors.torch import save_file

from protocol import ModelFamily

from ..layerdiffuse import (
    RELEASED_SDXL_FILES,
    LayerModelLayout,
    TransparentVAEDecoder,
    TransparentVAEEncoder,
    build_sd15_layer_model,
    read_unet_layout,
    released_key_shapes,
)
from .catalogue import CATALOGUE, FEW_STEP_LORAS, ReleasedFile
from .configs import config_path
from .demo_loras import few_step_lora_state_dict
from .download import default_cache_dir, sha256_of
from .tokenizer import write_tokenizer_files

log = logging.getLogger(__name__)

DEMO_VERSION = 5
DEMO_NAMES = {
    ModelFamily.SD15: "demo-sd15 (tiny random weights: pictures are noise)",
    ModelFamily.SDXL: "demo-sdxl (tiny random weights: pictures are noise)",
}
_MANIFEST = "manifest.json"

# Tiny but structurally real: the SD1.5 block layout (16 transformers, 32 attention
# modules), a VAE that downsamples by 8, CLIP's real vocabulary and context length.
_UNET = {
    "sample_size": 8,
    "block_out_channels": (16, 32, 32, 32),
    "layers_per_block": 2,
    "down_block_types": ("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
    "up_block_types": ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
    "cross_attention_dim": 32,
    # One head (diffusers names SD1.5's head count "attention_head_dim"): at 512² the
    # first level attends over 4096 tokens, and the quick start runs on a CPU.
    "attention_head_dim": 1,
    "norm_num_groups": 8,
}
_VAE = {
    "block_out_channels": (16, 16, 32, 32),
    "down_block_types": ("DownEncoderBlock2D",) * 4,
    "up_block_types": ("UpDecoderBlock2D",) * 4,
    "latent_channels": 4,
    "layers_per_block": 1,
    "norm_num_groups": 8,
    "sample_size": 64,
    "scaling_factor": 0.18215,
}
_TEXT = {
    "vocab_size": 49408,
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "max_position_embeddings": 77,
    "hidden_act": "quick_gelu",
    "bos_token_id": 49406,
    "eos_token_id": 49407,
    "pad_token_id": 49407,
}
# The SDXL block layout (3 levels, transformer depths 1 and 2 where SDXL has 2 and 10),
# two text encoders whose hidden states concatenate to the cross-attention width, and
# the "text_time" embedding of the pooled text and the six size numbers.
_SDXL_TEXT_WIDTH = 16
_SDXL_UNET = {
    "sample_size": 16,
    "block_out_channels": (16, 32, 32),
    "layers_per_block": 2,
    "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    "up_block_types": ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    "transformer_layers_per_block": (1, 1, 2),
    "attention_head_dim": (1, 1, 2),
    "cross_attention_dim": 2 * _SDXL_TEXT_WIDTH,
    "norm_num_groups": 8,
    "use_linear_projection": True,
    "addition_embed_type": "text_time",
    "addition_time_embed_dim": 8,
    "projection_class_embeddings_input_dim": _SDXL_TEXT_WIDTH + 6 * 8,
}
_SDXL_TEXT = {
    **{key: value for key, value in _TEXT.items() if key != "hidden_size"},
    "hidden_size": _SDXL_TEXT_WIDTH,
    "hidden_act": "gelu",
}
_LAYER_RANK = 8
_DECODER_CHANNELS = (4, 4, 8, 8, 16, 16, 16)
_ENCODER_CHANNELS = (8, 8, 16, 16)
_CONTROL_CHANNELS = (8, 8, 16, 16)
_SD15_LAYER_FILES = {
    "layer_sd15_transparent_attn": LayerModelLayout(1, _LAYER_RANK, False),
    "layer_sd15_joint": LayerModelLayout(3, _LAYER_RANK, False),
    "layer_sd15_fg2bg": LayerModelLayout(2, _LAYER_RANK, True, _CONTROL_CHANNELS),
    "layer_sd15_bg2fg": LayerModelLayout(2, _LAYER_RANK, True, _CONTROL_CHANNELS),
}


@dataclass(frozen=True)
class DemoSet:
    """Where the built demo set lies.

    Attributes:
        family: the base model family it is shaped like.
        base_dir: a diffusers folder of the tiny base model.
        models_dir: the tiny LayerDiffuse files and few-step LoRAs (random, in the
            released files' key layout) under their released file names.
        catalogue: the released catalogue with these files' sizes and sha256, so the
            store checks them as it checks downloads.
    """

    family: ModelFamily
    base_dir: Path
    models_dir: Path
    catalogue: dict[str, ReleasedFile]


def demo_root(cache_dir: Path | None = None, family: ModelFamily = ModelFamily.SD15) -> Path:
    """The folder a demo set is built in (inside the store's cache folder)."""
    infix = "" if family is ModelFamily.SD15 else f"-{family.value}"
    return (cache_dir or default_cache_dir()) / f"demo{infix}-v{DEMO_VERSION}"


def ensure_demo_set(
    cache_dir: Path | None = None, family: ModelFamily = ModelFamily.SD15
) -> DemoSet:
    """Build the demo set once (a few seconds) and return where it is.

    A complete set is recognised by its manifest; a partial one is rebuilt. Building
    happens in a temporary folder that is renamed into place, so concurrent callers
    never see half a set.
    """
    root = demo_root(cache_dir, family)
    if not (root / _MANIFEST).is_file():
        staging = root.with_name(f"{root.name}.{os.getpid()}.building")
        shutil.rmtree(staging, ignore_errors=True)
        log.info("building the %s demo model set in %s", family.value, root)
        _build(staging, family)
        if (root / _MANIFEST).is_file():  # built meanwhile by another process
            shutil.rmtree(staging, ignore_errors=True)
        else:
            shutil.rmtree(root, ignore_errors=True)
            os.replace(staging, root)
    manifest = json.loads((root / _MANIFEST).read_text())
    catalogue = {
        name: replace(
            CATALOGUE[name],
            sha256=entry["sha256"],
            size_bytes=entry["size_bytes"],
            size_exact=True,
            description="demo: " + CATALOGUE[name].description,
        )
        for name, entry in manifest["files"].items()
    }
    return DemoSet(
        family=family, base_dir=root / "base", models_dir=root / "layer_models", catalogue=catalogue
    )


def _build(root: Path, family: ModelFamily) -> None:
    base = root / "base"
    if family is ModelFamily.SD15:
        unet = _build_sd15_base(base)
        files = _sd15_layer_files(unet)
    else:
        unet = _build_sdxl_base(base)
        files = _sdxl_layer_files(unet)
    few_step = [entry for entry in FEW_STEP_LORAS.values() if entry.family is family]
    for index, entry in enumerate(few_step):
        files[entry.name] = few_step_lora_state_dict(unet, seed=400 + index)
    (root / "README.txt").write_text(
        "krita-layerdiffuse demo model set: tiny random models with the real structure.\n"
        "Pictures made with it are noise; it exists to run everything without downloads.\n"
    )
    layers = root / "layer_models"
    layers.mkdir(parents=True)
    manifest: dict[str, dict[str, object]] = {}
    for name, state in files.items():
        path = layers / CATALOGUE[name].filename
        save_file({key: value.contiguous() for key, value in state.items()}, str(path))
        manifest[name] = {"sha256": sha256_of(path), "size_bytes": path.stat().st_size}
    (root / _MANIFEST).write_text(
        json.dumps({"version": DEMO_VERSION, "files": manifest}, indent=2)
    )


def _build_sd15_base(base: Path) -> torch.nn.Module:
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(0)
    unet = UNet2DConditionModel(**_UNET)
    unet.save_pretrained(base / "unet", safe_serialization=True)
    torch.manual_seed(1)
    AutoencoderKL(**_VAE).save_pretrained(base / "vae", safe_serialization=True)
    torch.manual_seed(2)
    CLIPTextModel(CLIPTextConfig(**_TEXT)).save_pretrained(
        base / "text_encoder", safe_serialization=True
    )
    write_tokenizer_files(base / "tokenizer")
    _write_scheduler_and_index(base, ModelFamily.SD15)
    return unet


def _build_sdxl_base(base: Path) -> torch.nn.Module:
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(0)
    unet = UNet2DConditionModel(**_SDXL_UNET)
    unet.save_pretrained(base / "unet", safe_serialization=True)
    torch.manual_seed(1)
    vae = {**_VAE, "scaling_factor": 0.13025, "force_upcast": True}
    AutoencoderKL(**vae).save_pretrained(base / "vae", safe_serialization=True)
    torch.manual_seed(2)
    CLIPTextModel(CLIPTextConfig(**_SDXL_TEXT)).save_pretrained(
        base / "text_encoder", safe_serialization=True
    )
    torch.manual_seed(3)
    second = CLIPTextConfig(**_SDXL_TEXT, projection_dim=_SDXL_TEXT_WIDTH)
    CLIPTextModelWithProjection(second).save_pretrained(
        base / "text_encoder_2", safe_serialization=True
    )
    # No tokenizer folders: the loader falls back to the built-in CLIP tokenizers
    # (with SDXL's "!" padding for the second), as for a checkpoint file.
    _write_scheduler_and_index(base, ModelFamily.SDXL)
    return unet


def _write_scheduler_and_index(base: Path, family: ModelFamily) -> None:
    (base / "scheduler").mkdir(parents=True)
    shutil.copy(config_path(family, "scheduler"), base / "scheduler" / "scheduler_config.json")
    (base / "model_index.json").write_text(json.dumps(_model_index(family), indent=2))


def _sd15_layer_files(unet: torch.nn.Module) -> dict[str, dict[str, torch.Tensor]]:
    files: dict[str, dict[str, torch.Tensor]] = {}
    for index, (name, layout) in enumerate(_SD15_LAYER_FILES.items()):
        torch.manual_seed(100 + index)
        model = build_sd15_layer_model(unet, layout)
        _small_init_(model)
        files[name] = model.state_dict()
    decoder, encoder = _transparent_vae_files()
    files["layer_sd15_vae_transparent_decoder"] = decoder
    files["layer_sd15_vae_transparent_encoder"] = encoder
    return files


def _sdxl_layer_files(unet: torch.nn.Module) -> dict[str, dict[str, torch.Tensor]]:
    """The six SDXL files in the frozen-patcher format, with small random patches."""
    shapes = {key: tuple(value.shape) for key, value in unet.state_dict().items()}
    layout = read_unet_layout(unet.config)
    files: dict[str, dict[str, torch.Tensor]] = {}
    for index, name in enumerate(RELEASED_SDXL_FILES):
        generator = torch.Generator().manual_seed(300 + index)
        keys = released_key_shapes(shapes, layout, name, rank=_LAYER_RANK)
        files[name] = {
            key: torch.randn(shape, generator=generator) * 0.02 for key, shape in keys.items()
        }
    decoder, encoder = _transparent_vae_files()
    files["vae_transparent_decoder"] = decoder
    files["vae_transparent_encoder"] = encoder
    return files


def _transparent_vae_files() -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    torch.manual_seed(200)
    decoder = TransparentVAEDecoder(block_out_channels=_DECODER_CHANNELS)
    with torch.no_grad():
        # Trained in the real file; a visible latent path keeps the demo's alpha image-dependent.
        torch.nn.init.normal_(decoder.latent_conv_in.weight, std=0.5)
        # Centre the untrained output so alpha spans transparent, partial and opaque.
        decoder.conv_out.weight[0] *= 3.0
        decoder.conv_out.bias[0] += 0.7
        decoder.conv_out.bias[1:] += 0.4
    torch.manual_seed(201)
    return decoder.state_dict(), TransparentVAEEncoder(_ENCODER_CHANNELS).state_dict()


@torch.no_grad()
def _small_init_(module: torch.nn.Module) -> None:
    """Small weights for the LoRA and temporal parts, so the tiny UNet stays numerically
    tame; the control path keeps unit gain, so the control image visibly steers results."""
    for name, parameter in module.named_parameters():
        if name.endswith("temporal_n.weight"):
            parameter.fill_(1.0)
        elif parameter.dim() == 1:
            parameter.zero_()
        elif name.startswith("kwargs_encoder."):
            torch.nn.init.kaiming_normal_(parameter, nonlinearity="relu")
        elif ".control_convs." in name:
            torch.nn.init.kaiming_normal_(parameter, nonlinearity="linear")
        else:
            parameter.normal_(std=0.02)


def _model_index(family: ModelFamily) -> dict[str, object]:
    index: dict[str, object] = {
        "_class_name": "StableDiffusionPipeline",
        "_diffusers_version": "0.30.0",
        "scheduler": ["diffusers", "DDIMScheduler"],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
        "demo": True,
    }
    if family is ModelFamily.SDXL:
        index |= {
            "_class_name": "StableDiffusionXLPipeline",
            "scheduler": ["diffusers", "EulerDiscreteScheduler"],
            "text_encoder_2": ["transformers", "CLIPTextModelWithProjection"],
            "tokenizer_2": ["transformers", "CLIPTokenizer"],
        }
    return index
