"""The Split-into-Layers demo set: a tiny random Qwen-Image-Layered built in code.

Like `store.flux_demo`, every model is the real class at a small width, seeded from one
number, and written as the release's diffusers folder (`model_index.json`, `transformer/`,
`vae/`, `text_encoder/`, `tokenizer/`, `processor/`, `scheduler/`), so that it is loaded by
`layered.load_layered_components`, the code that loads a download. Its layers are noise;
their count, size, alpha channel and plumbing are real.

- transformer: `QwenImageTransformer2DModel` with the release's flags (`use_layer3d_rope`,
  `use_additional_t_cond`, no guidance embedding), 64 input channels (16 latent channels
  in 2×2 patches), 2 blocks of 2 heads of 16 (rope axes 4 + 6 + 6);
- VAE: `AutoencoderKLQwenImage` with 4 input channels (RGBA), 16 latent channels, the real
  down/up layout (`dim_mult` 1, 2, 4, 4, 2 res blocks, temporal flags: the release's
  key names) at base width 4 and
  Qwen-Image's `latents_mean` / `latents_std` (the class defaults);
- text encoder: `Qwen2_5_VLForConditionalGeneration` with a 2-layer, 32-wide language model
  and a 2-block vision tower of the real patch layout (14-pixel patches, 2×2 merge,
  2-frame temporal patches), greedy `generation_config.json`;
- tokenizer: a byte-level BPE `Qwen2Tokenizer` written here: the 256 byte symbols, the
  words of the prompt template as whole tokens (so its header is 34 tokens, as with the
  real tokenizer, and the template drop is exact), and Qwen's special tokens. Not the real
  151,643-token vocabulary, which needs the hub;
- processor: Qwen2-VL's image processor, with at most 16 merged patches a picture;
- scheduler: the Qwen-Image family's `scheduler_config.json` values.

The demo set splits at `DEMO_RESOLUTIONS` (256² and 512² areas) instead of the release's
640² and 1024²: the layers are noise at any size, and on a CPU its VAE costs seconds per
layer at 640² (most of a split), a sixth of that at 256².
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

import torch

from .layered import LayeredComponents, load_layered_components

log = logging.getLogger(__name__)

LAYERED_DEMO_NAME = "demo-qwen-image-layered (tiny random weights: layers are noise)"
_MANIFEST = "manifest.json"
_VERSION = 1

QWEN_IMAGE_SCHEDULER: dict[str, Any] = {
    "_class_name": "FlowMatchEulerDiscreteScheduler",
    "base_image_seq_len": 256,
    "base_shift": 0.5,
    "invert_sigmas": False,
    "max_image_seq_len": 8192,
    "max_shift": 0.9,
    "num_train_timesteps": 1000,
    "shift": 1.0,
    "shift_terminal": 0.02,
    "stochastic_sampling": False,
    "time_shift_type": "exponential",
    "use_beta_sigmas": False,
    "use_dynamic_shifting": True,
    "use_exponential_sigmas": False,
    "use_karras_sigmas": False,
}
"""`Qwen/Qwen-Image` `scheduler/scheduler_config.json` (musubi-tuner and mflux carry the same
numbers). That Layered ships the same file is assumed, not read; a download brings its own."""

QWEN_SPECIAL_TOKENS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
)
"""Qwen2's special tokens the recipe uses (ids 151643 … 151656 in the real vocabulary)."""

_TEMPLATE_WORDS = (
    "system",
    "user",
    "assistant",
    "Describe",
    " the",
    " image",
    " by",
    " detailing",
    " color",
    " shape",
    " size",
    " texture",
    " quantity",
    " text",
    " spatial",
    " relationships",
    " of",
    " objects",
    " and",
    " background",
)
DEMO_RESOLUTIONS = (256, 512)
"""The demo set's small and large generation areas (`LayeredModelSet.resolutions`)."""
_TEXT_WIDTH = 32
_TRANSFORMER: dict[str, Any] = {
    "patch_size": 2,
    "in_channels": 64,
    "out_channels": 16,
    "num_layers": 2,
    "attention_head_dim": 16,
    "num_attention_heads": 2,
    "joint_attention_dim": _TEXT_WIDTH,
    "guidance_embeds": False,
    "axes_dims_rope": (4, 6, 6),
    "zero_cond_t": False,
    "use_additional_t_cond": True,
    "use_layer3d_rope": True,
}
_VAE: dict[str, Any] = {
    "base_dim": 4,
    "z_dim": 16,
    "dim_mult": [1, 2, 4, 4],
    "num_res_blocks": 2,
    "attn_scales": [],
    "temperal_downsample": [False, True, True],
    "input_channels": 4,
}
_VISION: dict[str, Any] = {
    "depth": 2,
    "hidden_size": _TEXT_WIDTH,
    "intermediate_size": 64,
    "num_heads": 2,
    "out_hidden_size": _TEXT_WIDTH,
    "patch_size": 14,
    "spatial_merge_size": 2,
    "temporal_patch_size": 2,
    "window_size": 112,
    "fullatt_block_indexes": [1],
    "tokens_per_second": 2,
}
_MERGED_PATCH = 28  # pixels a merged vision token covers: 14-pixel patches, 2×2 merge
_MODEL_INDEX = {
    "_class_name": "QwenImageLayeredPipeline",
    "_diffusers_version": "0.37.0",
    "processor": ["transformers", "Qwen2VLProcessor"],
    "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"],
    "text_encoder": ["transformers", "Qwen2_5_VLForConditionalGeneration"],
    "tokenizer": ["transformers", "Qwen2Tokenizer"],
    "transformer": ["diffusers", "QwenImageTransformer2DModel"],
    "vae": ["diffusers", "AutoencoderKLQwenImage"],
    "demo": True,
}


def build_layered_demo(root: Path, seed: int = 0) -> Path:
    """Build the demo folder in `root` (a second or two on a CPU), or find it built.

    Built in a temporary sibling and renamed into place, so a reader never sees half a
    set. The same seed writes the same tensors.

    Args:
        root: a missing folder, or one this function built.
        seed: every model is seeded from it.

    Returns:
        `root`, a diffusers folder for `layered.load_layered_components`.
    """
    if not (root / _MANIFEST).is_file():
        staging = root.with_name(f"{root.name}.{os.getpid()}.building")
        shutil.rmtree(staging, ignore_errors=True)
        log.info("building the qwen-image-layered demo set in %s", root)
        _build(staging, seed)
        if (root / _MANIFEST).is_file():  # built meanwhile by another process
            shutil.rmtree(staging, ignore_errors=True)
        else:
            shutil.rmtree(root, ignore_errors=True)
            os.replace(staging, root)
    return root


def open_layered_demo(
    root: Path, *, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32
) -> LayeredComponents:
    """Load the demo folder as a download is loaded (float32 on the CPU by default)."""
    return load_layered_components(root, device=device, dtype=dtype)


def demo_tokenizer() -> Any:
    """The demo's byte-level `Qwen2Tokenizer`, built in memory.

    Returns:
        A tokenizer whose ids are the 256 byte symbols (in byte order), the template words'
        merge chains, then `QWEN_SPECIAL_TOKENS`.
    """
    from transformers import Qwen2Tokenizer

    symbols = _byte_symbols()
    vocab = {symbol: index for index, symbol in enumerate(symbols)}
    merges: list[tuple[str, str]] = []
    for word in _TEMPLATE_WORDS:
        pieces = [symbols[byte] for byte in word.encode()]
        joined = pieces[0]
        for piece in pieces[1:]:
            if joined + piece not in vocab:
                merges.append((joined, piece))
                vocab[joined + piece] = len(vocab)
            joined += piece
    for token in QWEN_SPECIAL_TOKENS:
        vocab[token] = len(vocab)
    return Qwen2Tokenizer(
        vocab=vocab,
        merges=merges,
        unk_token=None,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=list(QWEN_SPECIAL_TOKENS),
    )


def _byte_symbols() -> list[str]:
    """Byte-level BPE's stand-in character for each byte value 0…255 (GPT-2's table)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1)]
    printable += range(ord("®"), ord("ÿ") + 1)
    others = iter(range(256, 512))
    return [chr(byte) if byte in printable else chr(next(others)) for byte in range(256)]


def _build(root: Path, seed: int) -> None:
    from diffusers import AutoencoderKLQwenImage, QwenImageTransformer2DModel
    from transformers import GenerationConfig, Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import (
        Qwen2VLImageProcessorPil,
    )

    torch.manual_seed(seed)
    QwenImageTransformer2DModel(**_TRANSFORMER).save_pretrained(
        root / "transformer", safe_serialization=True
    )
    torch.manual_seed(seed + 1)
    AutoencoderKLQwenImage(**_VAE).save_pretrained(root / "vae", safe_serialization=True)

    tokenizer = demo_tokenizer()
    tokenizer.save_pretrained(str(root / "tokenizer"))
    ids = {token: tokenizer.convert_tokens_to_ids(token) for token in QWEN_SPECIAL_TOKENS}
    text = {
        "vocab_size": len(tokenizer),
        "hidden_size": _TEXT_WIDTH,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 4096,
        "rms_norm_eps": 1e-6,
        # Qwen2.5-VL's multimodal rope: sections of (time, height, width) frequencies.
        "rope_parameters": {"rope_type": "default", "mrope_section": [2, 1, 1], "rope_theta": 1e6},
        "bos_token_id": ids["<|endoftext|>"],
        "eos_token_id": ids["<|im_end|>"],
        "pad_token_id": ids["<|endoftext|>"],
    }
    config = Qwen2_5_VLConfig(
        text_config=text,
        vision_config=_VISION,
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed + 2)
    text_encoder = Qwen2_5_VLForConditionalGeneration(config)
    text_encoder.generation_config = GenerationConfig(
        do_sample=False,
        bos_token_id=ids["<|endoftext|>"],
        eos_token_id=[ids["<|im_end|>"], ids["<|endoftext|>"]],
        pad_token_id=ids["<|endoftext|>"],
    )
    text_encoder.save_pretrained(root / "text_encoder", safe_serialization=True)

    processor = root / "processor"
    Qwen2VLImageProcessorPil(
        min_pixels=4 * _MERGED_PATCH**2,
        max_pixels=16 * _MERGED_PATCH**2,
        patch_size=14,
        merge_size=2,
        temporal_patch_size=2,
    ).save_pretrained(str(processor))
    tokenizer.save_pretrained(str(processor))
    (root / "scheduler").mkdir(parents=True)
    (root / "scheduler" / "scheduler_config.json").write_text(
        json.dumps(QWEN_IMAGE_SCHEDULER, indent=2)
    )
    (root / "model_index.json").write_text(json.dumps(_MODEL_INDEX, indent=2))
    (root / "README.txt").write_text(
        "krita-layerdiffuse Qwen-Image-Layered demo set: tiny random models with the real\n"
        "structure. Its layers are noise; it exists to run Split into Layers without downloads.\n"
    )
    (root / _MANIFEST).write_text(json.dumps({"version": _VERSION, "seed": seed}, indent=2))
