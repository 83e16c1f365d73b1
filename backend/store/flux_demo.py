"""The FLUX demo model set: tiny random FLUX.1 pieces of the real structure, built in code.

Like `demo.py` for SD, every model is the real class at a small width, seeded from one
number, and written in the real formats so that it loads through the code that loads
the real files: a diffusers folder (`FluxTransformer2DModel`, a 16-channel
`AutoencoderKL`, `CLIPTextModel`, `T5EncoderModel`, the FLUX.1-dev
`FlowMatchEulerDiscreteScheduler` config), a `TransparentVAE.pth` pickle with the
release's `decoder.*` / `encoder.*` / `sd_vae.*` layout (read back only through the
sha256-checked safetensors conversion), and a `layerlora.safetensors` in the kohya layout
(`flux_lora_key_shapes`). Its pictures are noise; its alpha and plumbing are real.

Tokenizers work offline: CLIP's is the exact one (`tokenizer.write_tokenizer_files`); T5's
is a tiny character-level Unigram tokenizer written as a `tokenizer.json` here, with T5's
special ids (`<pad>` 0, `</s>` 1, `<unk>` 2) and its `</s>` appended, not the real
SentencePiece vocabulary (which needs the hub).
"""

from __future__ import annotations

import json
import logging
import string
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from ..layerdiffuse.flux_transparent_vae import (
    FluxTransparentVAEDecoder,
    FluxTransparentVAEEncoder,
)
from ..layerdiffuse.flux_weights import (
    flux_lora_key_shapes,
)
from .download import sha256_of
from .tokenizer import write_tokenizer_files

log = logging.getLogger(__name__)

FLUX_DEMO_NAME = "demo-flux (tiny random weights: pictures are noise)"
TRANSPARENT_VAE_FILE = "TransparentVAE.pth"
LORA_FILE = "layerlora.safetensors"
_MANIFEST = "manifest.json"

FLUX_DEV_SCHEDULER: dict[str, Any] = {
    "_class_name": "FlowMatchEulerDiscreteScheduler",
    "num_train_timesteps": 1000,
    "shift": 3.0,
    "use_dynamic_shifting": True,
    "base_shift": 0.5,
    "max_shift": 1.15,
    "base_image_seq_len": 256,
    "max_image_seq_len": 4096,
}
"""FLUX.1-dev's `scheduler/scheduler_config.json` values (the ones the sampler reads)."""

_TEXT_WIDTH = 32
# 1 double block and 2 single blocks of the real layout; 2 heads of 8, rope axes 2+2+4.
_TRANSFORMER: dict[str, Any] = {
    "patch_size": 1,
    "in_channels": 64,
    "num_layers": 1,
    "num_single_layers": 2,
    "attention_head_dim": 8,
    "num_attention_heads": 2,
    "joint_attention_dim": _TEXT_WIDTH,
    "pooled_projection_dim": _TEXT_WIDTH,
    "guidance_embeds": True,
    "axes_dims_rope": (2, 2, 4),
}
# FLUX's VAE at small width: 16 latent channels, downsampling by 8, scale and shift,
# no quant convs.
_VAE: dict[str, Any] = {
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ("DownEncoderBlock2D",) * 4,
    "up_block_types": ("UpDecoderBlock2D",) * 4,
    "block_out_channels": (8, 8, 16, 16),
    "layers_per_block": 1,
    "latent_channels": 16,
    "norm_num_groups": 4,
    "sample_size": 64,
    "scaling_factor": 0.3611,
    "shift_factor": 0.1159,
    "use_quant_conv": False,
    "use_post_quant_conv": False,
}
_CLIP: dict[str, Any] = {
    "vocab_size": 49408,
    "hidden_size": _TEXT_WIDTH,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "max_position_embeddings": 77,
    "hidden_act": "quick_gelu",
    "bos_token_id": 49406,
    "eos_token_id": 49407,
    "pad_token_id": 49407,
}
_T5_SPECIALS = ("<pad>", "</s>", "<unk>")
_T5_CHARACTERS = string.ascii_lowercase + string.ascii_uppercase + string.digits + ".,;:!?'-()"
_T5_PIECES = (*_T5_SPECIALS, "▁", *_T5_CHARACTERS, *("▁" + c for c in _T5_CHARACTERS))
_T5: dict[str, Any] = {
    "vocab_size": len(_T5_PIECES),
    "d_model": _TEXT_WIDTH,
    "d_kv": 8,
    "d_ff": 64,
    "num_layers": 2,
    "num_heads": 4,
    "relative_attention_num_buckets": 8,
    "feed_forward_proj": "gated-gelu",
    "pad_token_id": 0,
    "eos_token_id": 1,
    "decoder_start_token_id": 0,
}
_DECODER_CHANNELS = (4, 4, 8, 8, 16, 16, 16)
_ENCODER_CHANNELS = (8, 8, 16, 16)
_LORA_RANK = 4


@dataclass(frozen=True)
class FluxDemoSet:
    """Where a built FLUX demo set lies, with its files' sha256 (the catalogue's role).

    Attributes:
        base_dir: the diffusers folder of the tiny FLUX model.
        transparent_vae: the tiny `TransparentVAE.pth` (a pickle: use it only through
            `flux_weights.load_released_pickle` with `transparent_vae_sha256`).
        transparent_vae_sha256 / lora_sha256: the files' sha256.
        lora: the tiny `layerlora.safetensors`.
    """

    base_dir: Path
    transparent_vae: Path
    transparent_vae_sha256: str
    lora: Path
    lora_sha256: str


def build_flux_demo_set(root: Path, seed: int = 0) -> FluxDemoSet:
    """Build the FLUX demo set in `root` (a second or two on a CPU), or find it built.

    The same seed writes the same tensors; the manifest records the files' sha256.

    Args:
        root: an empty or missing folder, or one this function built.
        seed: every model is seeded from it.
    """
    manifest_path = root / _MANIFEST
    if not manifest_path.is_file():
        log.info("building the flux demo model set in %s", root)
        _build(root, seed)
    manifest = json.loads(manifest_path.read_text())
    layers = root / "layer_models"
    return FluxDemoSet(
        base_dir=root / "base",
        transparent_vae=layers / TRANSPARENT_VAE_FILE,
        transparent_vae_sha256=manifest["files"][TRANSPARENT_VAE_FILE],
        lora=layers / LORA_FILE,
        lora_sha256=manifest["files"][LORA_FILE],
    )


def _build(root: Path, seed: int) -> None:
    from diffusers import AutoencoderKL, FluxTransformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    base = root / "base"
    torch.manual_seed(seed)
    transformer = FluxTransformer2DModel(**_TRANSFORMER)
    transformer.save_pretrained(base / "transformer", safe_serialization=True)
    torch.manual_seed(seed + 1)
    vae = AutoencoderKL(**_VAE)
    vae.save_pretrained(base / "vae", safe_serialization=True)
    torch.manual_seed(seed + 2)
    CLIPTextModel(CLIPTextConfig(**_CLIP)).save_pretrained(
        base / "text_encoder", safe_serialization=True
    )
    torch.manual_seed(seed + 3)
    T5EncoderModel(T5Config(**_T5)).save_pretrained(
        base / "text_encoder_2", safe_serialization=True
    )
    write_tokenizer_files(base / "tokenizer")
    (base / "tokenizer_2").mkdir(parents=True)
    (base / "tokenizer_2" / "tokenizer.json").write_text(
        json.dumps(_t5_tokenizer_json(), ensure_ascii=False)
    )
    (base / "scheduler").mkdir(parents=True)
    (base / "scheduler" / "scheduler_config.json").write_text(json.dumps(FLUX_DEV_SCHEDULER))
    (base / "model_index.json").write_text(json.dumps(_MODEL_INDEX, indent=2))

    layers = root / "layer_models"
    layers.mkdir(parents=True)
    # The release's pickle: an OrderedDict of bf16 tensors, sd_vae.* beside the two models.
    pickle_state: OrderedDict[str, torch.Tensor] = OrderedDict()
    decoder, encoder = _transparent_vae_models(seed + 4)
    for prefix, module in (("sd_vae", vae), ("encoder", encoder), ("decoder", decoder)):
        for key, value in module.state_dict().items():
            pickle_state[f"{prefix}.{key}"] = value.to(torch.bfloat16)
    torch.save(pickle_state, layers / TRANSPARENT_VAE_FILE)

    shapes = {name: tuple(p.shape) for name, p in transformer.named_parameters()}
    generator = torch.Generator().manual_seed(seed + 6)
    lora = {
        key: (
            torch.tensor(_LORA_RANK / 2)
            if not shape
            else torch.randn(shape, generator=generator) * 0.1
        ).to(torch.bfloat16)
        for key, shape in flux_lora_key_shapes(shapes, _LORA_RANK).items()
    }
    save_file(lora, str(layers / LORA_FILE))
    files = {name: sha256_of(layers / name) for name in (TRANSPARENT_VAE_FILE, LORA_FILE)}
    (root / "README.txt").write_text(
        "krita-layerdiffuse FLUX demo model set: tiny random models with the real structure.\n"
        "Pictures made with it are noise; it exists to run everything without downloads.\n"
    )
    (root / _MANIFEST).write_text(json.dumps({"seed": seed, "files": files}, indent=2))


def _transparent_vae_models(
    seed: int,
) -> tuple[FluxTransparentVAEDecoder, FluxTransparentVAEEncoder]:
    torch.manual_seed(seed)
    decoder = FluxTransparentVAEDecoder(block_out_channels=_DECODER_CHANNELS)
    with torch.no_grad():
        # Trained in the real file; a visible latent path keeps the demo's alpha image-dependent.
        torch.nn.init.normal_(decoder.latent_conv_in.weight, std=0.5)
        # Centre the untrained output so alpha spans transparent, partial and opaque.
        decoder.conv_out.weight[0] *= 3.0
        decoder.conv_out.bias[0] += 0.7
        decoder.conv_out.bias[1:] += 0.4
    torch.manual_seed(seed + 1)
    return decoder, FluxTransparentVAEEncoder(_ENCODER_CHANNELS)


def _t5_tokenizer_json() -> dict[str, Any]:
    """A character-level Unigram `tokenizer.json` with T5's special tokens and `</s>` suffix."""
    metaspace = {"type": "Metaspace", "replacement": "▁", "prepend_scheme": "always", "split": True}
    specials = [
        {
            "id": index,
            "content": token,
            "single_word": False,
            "lstrip": False,
            "rstrip": False,
            "normalized": False,
            "special": True,
        }
        for index, token in enumerate(_T5_SPECIALS)
    ]
    end = {"SpecialToken": {"id": "</s>", "type_id": 0}}
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": specials,
        "normalizer": None,
        "pre_tokenizer": metaspace,
        "post_processor": {
            "type": "TemplateProcessing",
            "single": [{"Sequence": {"id": "A", "type_id": 0}}, end],
            "pair": [
                {"Sequence": {"id": "A", "type_id": 0}},
                end,
                {"Sequence": {"id": "B", "type_id": 0}},
                end,
            ],
            "special_tokens": {"</s>": {"id": "</s>", "ids": [1], "tokens": ["</s>"]}},
        },
        "decoder": metaspace,
        "model": {
            "type": "Unigram",
            "unk_id": 2,
            "vocab": [
                [piece, 0.0 if index < 3 else -1.0] for index, piece in enumerate(_T5_PIECES)
            ],
            "byte_fallback": False,
        },
    }


_MODEL_INDEX = {
    "_class_name": "FluxPipeline",
    "_diffusers_version": "0.30.0",
    "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"],
    "text_encoder": ["transformers", "CLIPTextModel"],
    "text_encoder_2": ["transformers", "T5EncoderModel"],
    "tokenizer": ["transformers", "CLIPTokenizer"],
    "tokenizer_2": ["transformers", "T5TokenizerFast"],
    "transformer": ["diffusers", "FluxTransformer2DModel"],
    "vae": ["diffusers", "AutoencoderKL"],
    "demo": True,
}
