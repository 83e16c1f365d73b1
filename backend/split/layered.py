"""Split into Layers: a flat picture to N transparent layers with Qwen-Image-Layered.

The release `Qwen/Qwen-Image-Layered` (Apache-2.0, 2025-12-19, arXiv 2512.15603) is run by
diffusers' `QwenImageLayeredPipeline`; its model card calls it with `layers=4`,
`resolution=640`, 50 steps, `true_cfg_scale=4.0`, `negative_prompt=" "`,
`cfg_normalize=True` and `use_en_prompt=True`. This module is that recipe on the model
pieces, without a pipeline object (`tests/backend/split` checks it against the pipeline):

1. size: the picture is resized (Lanczos, straight RGBA) to the area `resolution²` at its
   aspect ratio, each side rounded to a multiple of 32 (`calculate_dimensions`); the
   release was trained at the buckets 640 and 1024 (the card recommends 640);
2. prompt: without one, the Qwen2.5-VL text encoder *captions the picture* (its vision
   tower sees it through the "Image Annotator" instruction, up to 512 new tokens); the
   prompt is then wrapped in the system template "Describe the image by detailing …",
   encoded by the language model (last hidden state, normed), and the template's first
   34 tokens are dropped; the negative prompt `" "` goes the same way. The picture is not
   shown to the encoder here: only the VAE sees it;
3. latents: the RGBA VAE (`AutoencoderKLQwenImage`, 4 input channels, 16 latent channels,
   8× down) encodes the picture to its mode, normalised by `latents_mean` / `latents_std`.
   The noise has `layers + 1` frames of (16, H/8, W/8): frame 0 is the composite the
   model regenerates, frames 1…N the layers. Frames are packed into 2×2 patches, one
   after another ((1 + N)·H/16·W/16 tokens of 64), and the picture's own packed latent is
   appended after them as a condition (its tokens are dropped from the prediction). The
   transformer's layer-aware RoPE (`use_layer3d_rope`) gives frame i the layer index i
   and the condition index −1; `additional_t_cond` is 0 (an RGBA, not RGB, target);
4. schedule: `FlowMatchEulerDiscreteScheduler` with `sigmas = linspace(1, 0, steps + 1)[:-1]`
   and `mu = sqrt(condition tokens / 256)` (2.5 at 640², 4.0 at 1024²), shifted as the
   folder's `scheduler_config.json` says (exponential time shift for this family);
5. true CFG: two passes per step, `neg + cfg · (cond − neg)`, rescaled per token to the
   conditional prediction's norm (`cfg_normalize`); CFG ≤ 1 runs the conditional pass only;
6. decode: un-normalise, drop frame 0, decode each layer with the same VAE to RGBA in
   [−1, 1] → [0, 1] → uint8, and resize back to the picture's size. Layer 0 is the bottom
   of the stack: the official demo's `imagelist_to_pptx` places the outputs on one slide
   in order, each above the previous.

Deterministic per seed: the noise is drawn on the CPU from `torch.Generator().manual_seed(seed)`
(as the pipeline draws it with a CPU generator), the caption is greedy (the release's
`generation_config.json`: `top_k` 1). Latents stay float32 between steps; the pipeline
keeps them in the model dtype (identical in float32, close in bf16).

Memory plan for the real model (parameter counts of the real configs built on `meta`,
`tests/backend/split/test_layered_structure.py`; bf16 = 2 bytes a parameter):

| piece | parameters | bf16 | fp8 / int8 | NF4 (~4.5 bit) |
|---|---|---|---|---|
| transformer (60 blocks, 3072 wide) | 20,430,407,232 | 40.86 GB | 20.43 GB | ~11.5 GB |
| text encoder Qwen2.5-VL-7B, all | 8,292,166,656 | 16.58 GB | 8.29 GB | ~4.7 GB |
| … of which language model | 7,070,619,136 | 14.14 GB | | |
| … of which vision tower (captions only) | 676,550,144 | 1.35 GB | | |
| … of which `lm_head` (captions only) | 544,997,376 | 1.09 GB | | |
| RGBA VAE | 126,897,716 | 0.25 GB | | |

(40.86 GB and 16.58 GB are also the sizes of Comfy-Org's bf16 repackages.) Activations are
small beside the weights: at 640² and 4 layers the transformer attends over
(4 + 2) · 1,600 = 9,600 image tokens plus the prompt (about 1–2 GB with SDPA); at 1024²
over 24,576 (2–4 GB). Each layer is decoded alone, so the VAE never holds N frames.

- 80 GB (A100/H100 80 GB): everything bf16 on the card, about 58 GB of weights + activations.
- 48 GB (A6000, L40S): the transformer bf16 on the card (40.9 GB); the text encoder runs
  first and is moved to the CPU before denoising (diffusers' `model_cpu_offload_seq` is
  `text_encoder->transformer->vae`; 17 GB of system RAM); peak about 43 GB. With a prompt
  given, the vision tower and `lm_head` need not be on the card at all. Built:
  `LayeredComponents.offload` (`resident`) keeps every piece in host memory and brings each
  to the card only for its turn; `store.layered_sets` turns it on for a CUDA card under
  70 GB. Not measured on such a card yet.
- 24 GB (RTX 3090/4090): the transformer cannot stay in bf16. Built: `fp8` stores it in
  fp8 (`enable_layerwise_casting(storage_dtype=float8_e4m3fn, compute_dtype=bfloat16)`:
  each layer's weights are cast to bf16 only while it runs), 20.45 GB with the model's own
  keep list (its norms and `proj_out` stay bf16: 19 M parameters), on top of the 48 GB
  plan's turns: the text encoder alone on the card in bf16 (16.6 GB), then the
  transformer in fp8 with the VAE: about 22 GB at 640², so 640² with few layers, not
  1024². `store.layered_sets` turns it on for a CUDA card under 44 GiB. fp8 rounds every
  weight: the layers change slightly (tests/backend/split/test_small_card.py bounds it on
  the demo); not yet measured on a real 24 GB card. Not built: NF4 (bitsandbytes, ~11.5 GB,
  not a dependency of this backend) and streaming bf16 blocks from pinned CPU memory
  (`enable_group_offload`: about 4 TB over PCIe for 50 steps with CFG, minutes a picture).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from diffusers import FlowMatchEulerDiscreteScheduler
from PIL import Image

QWEN_LAYERED_REPO = "Qwen/Qwen-Image-Layered"
"""The Hugging Face repository of the release (a diffusers folder)."""

DEFAULT_LAYERS = 4
DEFAULT_RESOLUTION = 640
DEFAULT_STEPS = 50
DEFAULT_CFG = 4.0
"""The model card's settings (`layers`, `resolution`, `num_inference_steps`, `true_cfg_scale`)."""

TRAINED_RESOLUTIONS = (640, 1024)
"""The pipeline's buckets; other multiples of 32 run (the demo uses them) but are untrained."""

MAX_LAYERS = 10
"""Our limit, not the model's: each layer adds H/16·W/16 tokens (1,600 at 640²) to every pass."""

NEGATIVE_PROMPT = " "
"""The card's negative prompt: one space, which turns true CFG on."""

MAX_SEQUENCE_LENGTH = 512
"""Prompt tokens kept after the template (`QwenImageLayeredPipeline.__call__`'s default)."""

CAPTION_TOKENS = 512
"""New tokens the caption may take (`get_image_caption`'s `max_new_tokens`)."""

PROMPT_TEMPLATE = (
    "<|im_start|>system\nDescribe the image by detailing the color, shape, size, texture, "
    "quantity, text, spatial relationships of the objects and background:<|im_end|>\n"
    "<|im_start|>user\n{}<|im_end|>\n<|im_start|>assistant\n"
)
TEMPLATE_TOKENS = 34
"""Tokens of `PROMPT_TEMPLATE` before the prompt, dropped from the embedding."""

CAPTION_PROMPT = (
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
    "# Image Annotator\nYou are a professional\nimage annotator. Please write an image caption "
    "based on the input image:\n1. Write the caption using natural,\ndescriptive language "
    "without structured formats or rich text.\n2. Enrich caption details by including: \n"
    " - Object\nattributes, such as quantity, color, shape, size, material, state, position, "
    "actions, and so on\n - Vision Relations\nbetween objects, such as spatial relations, "
    "functional relations, possessive relations, attachment relations, action\nrelations, "
    "comparative relations, causal relations, and so on\n - Environmental details, such as "
    "weather, lighting,\ncolors, textures, atmosphere, and so on\n - Identify the text clearly "
    "visible in the image, without translation or\nexplanation, and highlight it in the caption "
    "with quotation marks\n3. Maintain authenticity and accuracy:\n - Avoid\ngeneralizations\n"
    " - Describe all visible information in the image, while do not add information not "
    "explicitly shown in\nthe image\n<|vision_start|><|image_pad|><|vision_end|><|im_end|>\n"
    "<|im_start|>assistant\n"
)
"""The pipeline's English caption instruction (`image_caption_prompt_en`), line breaks as there."""

IMAGE_TOKEN = "<|image_pad|>"
_BASE_CONDITION_TOKENS = 256  # the pipeline's `base_seqlen = 256 * 256 / 16 / 16`
_PATCH = 2  # 2×2 latent pixels make one token
_SIZE_MULTIPLE = 32

StepCallback = Callable[[int, int, torch.Tensor], None]
"""`(step, total, latents)` after each step, as `methods.denoise.StepCallback`; raising stops.

`latents`: (1, (1 + layers)·h·w, 64) float32 packed tokens, h = H/16, w = W/16.
"""


@dataclass
class LayeredComponents:
    """The loaded pieces of Qwen-Image-Layered, all on one device.

    Attributes:
        transformer: `QwenImageTransformer2DModel` (`use_layer3d_rope`, `use_additional_t_cond`).
        vae: `AutoencoderKLQwenImage` with 4 input channels (RGBA).
        text_encoder: `Qwen2_5_VLForConditionalGeneration` (text encoder and captioner).
        tokenizer: its `Qwen2Tokenizer`.
        image_processor: Qwen2-VL's image processor (the `processor` folder), for captions.
        scheduler_config: the `FlowMatchEulerDiscreteScheduler` config.
        device / dtype: where and in what the models run.
        offload: the models wait in host memory and each goes to `device` only while it
            works (`resident`): the 48 GB plan (peak: the transformer, 40.9 GB in bf16).
        fp8: the transformer is stored in `FP8_STORAGE` and computes in `dtype` layer by
            layer: the 24 GB plan (20.45 GB).
    """

    transformer: torch.nn.Module
    vae: Any
    text_encoder: Any
    tokenizer: Any
    image_processor: Any
    scheduler_config: dict[str, Any]
    device: torch.device
    dtype: torch.dtype
    offload: bool = False
    fp8: bool = False


OFFLOAD_DEVICE = torch.device("cpu")
"""Where offloaded pieces wait."""
FP8_STORAGE = torch.float8_e4m3fn
"""The transformer's storage dtype in the 24 GB plan."""


def load_layered_components(
    folder: Path,
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.bfloat16,
    offload: bool = False,
    fp8: bool = False,
) -> LayeredComponents:
    """Load a Qwen-Image-Layered diffusers folder (a download or the demo) from disk only.

    The processor is read as its image processor and the tokenizer: Qwen2VLProcessor itself
    insists on a video processor, which needs torchvision (not a dependency here).

    Args:
        folder: holds `transformer/`, `vae/`, `text_encoder/`, `tokenizer/`, `processor/`,
            `scheduler/` (the release's layout).
        device / dtype: where and in what the models run.
        offload: keep the models in host memory, each on `device` only while it works.
        fp8: store the transformer in fp8 (cast while still in host memory, so the card
            never holds it in bf16).
    """
    from diffusers import AutoencoderKLQwenImage, QwenImageTransformer2DModel
    from transformers import Qwen2_5_VLForConditionalGeneration, Qwen2Tokenizer
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import (
        Qwen2VLImageProcessorPil,
    )

    target = torch.device(device)
    transformer = QwenImageTransformer2DModel.from_pretrained(
        folder / "transformer", torch_dtype=dtype, local_files_only=True
    )
    if fp8:  # the model's own keep list: its norms and the output head stay in `dtype`
        transformer.enable_layerwise_casting(storage_dtype=FP8_STORAGE, compute_dtype=dtype)
    vae = AutoencoderKLQwenImage.from_pretrained(
        folder / "vae", torch_dtype=dtype, local_files_only=True
    )
    text_encoder = Qwen2_5_VLForConditionalGeneration.from_pretrained(
        folder / "text_encoder", dtype=dtype, local_files_only=True
    )
    for module in (transformer, vae, text_encoder):
        module.to(OFFLOAD_DEVICE if offload else target).eval().requires_grad_(False)
    return LayeredComponents(
        transformer=transformer,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=Qwen2Tokenizer.from_pretrained(str(folder / "tokenizer"), local_files_only=True),
        image_processor=Qwen2VLImageProcessorPil.from_pretrained(
            str(folder / "processor"), local_files_only=True
        ),
        scheduler_config=json.loads((folder / "scheduler" / "scheduler_config.json").read_text()),
        device=target,
        dtype=dtype,
        offload=offload,
        fp8=fp8,
    )


def generation_size(width: int, height: int, resolution: int) -> tuple[int, int]:
    """The size the picture is split at: area `resolution²`, its aspect, sides ÷ 32.

    Returns:
        (width, height), as the pipeline's `calculate_dimensions`.
    """
    ratio = width / height
    target_width = math.sqrt(resolution * resolution * ratio)
    target_height = target_width / ratio
    return (
        round(target_width / _SIZE_MULTIPLE) * _SIZE_MULTIPLE,
        round(target_height / _SIZE_MULTIPLE) * _SIZE_MULTIPLE,
    )


@torch.no_grad()
def split_into_layers(
    components: LayeredComponents,
    image_rgba_uint8: np.ndarray,
    layers: int = DEFAULT_LAYERS,
    *,
    prompt: str | None,
    steps: int = DEFAULT_STEPS,
    cfg: float = DEFAULT_CFG,
    seed: int,
    resolution: int = DEFAULT_RESOLUTION,
    on_step: StepCallback | None = None,
    negative_prompt: str = NEGATIVE_PROMPT,
    cfg_normalize: bool = True,
    caption_tokens: int = CAPTION_TOKENS,
) -> list[np.ndarray]:
    """Split a flat RGBA picture into `layers` transparent layers.

    Args:
        components: the loaded pieces (`LayeredComponents`).
        image_rgba_uint8: (H, W, 4) uint8, straight alpha (a flat picture is opaque).
        layers: how many layers come back (1 … `MAX_LAYERS`).
        prompt: what the picture shows; None or blank lets the text encoder caption it.
        steps: sampler steps.
        cfg: true CFG scale; ≤ 1 skips the negative pass.
        seed: the noise seed (CPU noise: the same layers on every device).
        resolution: the side of the generation area (`TRAINED_RESOLUTIONS` are trained).
        on_step: progress; raising in it stops the run.
        negative_prompt: the negative pass's prompt.
        cfg_normalize: rescale the guided prediction to the conditional one's norm.
        caption_tokens: the caption's new-token limit.

    Returns:
        `layers` arrays (H, W, 4) uint8 RGBA at the input's size, bottom layer first.

    Raises:
        ValueError: a bad picture, layer count, step count, CFG or resolution.
    """
    # 1. Check inputs before any tensor exists.
    _check(image_rgba_uint8, layers, steps, cfg, resolution)
    height, width = image_rgba_uint8.shape[:2]
    gen_width, gen_height = generation_size(width, height, resolution)
    picture = Image.fromarray(image_rgba_uint8, "RGBA").resize(
        (gen_width, gen_height), Image.Resampling.LANCZOS
    )
    # 2. Prompt (a caption when none is given) and the negative prompt.
    with resident(components, components.text_encoder):
        if prompt is None or not prompt.strip():
            prompt = caption_image(components, picture, caption_tokens)
        embeds, mask = encode_prompt(components, prompt)
        negative = encode_prompt(components, negative_prompt) if cfg > 1 else None
    # 3. The picture's latent (the condition), noise for composite + layers, the schedule.
    with resident(components, components.vae):
        condition = pack_frames(encode_picture(components, picture))
    rows, columns = gen_height // 16, gen_width // 16
    channels = components.transformer.config.in_channels // (_PATCH * _PATCH)
    generator = torch.Generator("cpu").manual_seed(seed)
    noise = torch.randn(
        (1, layers + 1, channels, 2 * rows, 2 * columns), generator=generator, dtype=torch.float32
    )
    latents = pack_frames(noise.to(components.device))
    scheduler = FlowMatchEulerDiscreteScheduler.from_config(components.scheduler_config)
    sigmas = np.linspace(1.0, 0.0, steps + 1)[:-1]
    mu = math.sqrt(condition.shape[1] / _BASE_CONDITION_TOKENS)
    scheduler.set_timesteps(sigmas=sigmas, mu=mu, device=components.device)
    scheduler.set_begin_index(0)
    # 4. Denoise with true CFG.
    frame_shapes = [[(1, rows, columns)] * (layers + 2)]
    is_rgb = torch.zeros(1, dtype=torch.long, device=components.device)

    def predict(
        hidden: torch.Tensor, timestep: torch.Tensor, text: tuple[torch.Tensor, torch.Tensor | None]
    ) -> torch.Tensor:
        out = components.transformer(
            hidden_states=hidden,
            timestep=timestep,
            encoder_hidden_states=text[0],
            encoder_hidden_states_mask=text[1],
            img_shapes=frame_shapes,
            additional_t_cond=is_rgb,
            return_dict=False,
        )[0]
        return out[:, : latents.shape[1]].float()

    total = len(scheduler.timesteps)
    with resident(components, components.transformer):
        for index, t in enumerate(scheduler.timesteps):
            hidden = torch.cat([latents, condition], dim=1).to(components.dtype)
            timestep = (t.expand(1) / 1000).to(components.dtype)
            prediction = predict(hidden, timestep, (embeds, mask))
            if negative is not None:
                unguided = predict(hidden, timestep, negative)
                guided = unguided + cfg * (prediction - unguided)
                if cfg_normalize:
                    guided = guided * (
                        prediction.norm(dim=-1, keepdim=True) / guided.norm(dim=-1, keepdim=True)
                    )
                prediction = guided
            latents = scheduler.step(prediction, t, latents, return_dict=False)[0]
            if on_step is not None:
                on_step(index + 1, total, latents)
    # 5. Decode each layer (frame 0 is the regenerated composite) and resize back.
    frames = unpack_frames(latents, layers + 1, rows, columns)
    with resident(components, components.vae):
        return [
            _to_uint8(decode_frame(components, frames[:, frame]), width, height)
            for frame in range(1, layers + 1)
        ]


@contextmanager
def resident(components: LayeredComponents, module: torch.nn.Module) -> Iterator[None]:
    """With `components.offload`, `module` on the device only while it works, in host
    memory otherwise (diffusers' model CPU offload: one large piece on the card at a time,
    `text_encoder → transformer → vae`); without, nothing moves."""
    if not components.offload:
        yield
        return
    module.to(components.device)
    try:
        yield
    finally:
        module.to(OFFLOAD_DEVICE)
        if components.device.type == "cuda":
            torch.cuda.empty_cache()


@torch.no_grad()
def caption_image(components: LayeredComponents, picture: Image.Image, max_new_tokens: int) -> str:
    """The text encoder's own caption of the picture (the pipeline's `get_image_caption`).

    The image pad is expanded to one token per 2×2 merged patch, as `Qwen2VLProcessor` does.
    """
    vision = components.image_processor(images=picture, return_tensors="pt")
    merge = components.image_processor.merge_size
    count = int(vision["image_grid_thw"][0].prod()) // (merge * merge)
    text = CAPTION_PROMPT.replace(IMAGE_TOKEN, IMAGE_TOKEN * count)
    tokens = components.tokenizer(text, return_tensors="pt")
    generated = components.text_encoder.generate(
        input_ids=tokens["input_ids"].to(components.device),
        attention_mask=tokens["attention_mask"].to(components.device),
        pixel_values=vision["pixel_values"].to(components.device, components.dtype),
        image_grid_thw=vision["image_grid_thw"].to(components.device),
        max_new_tokens=max_new_tokens,
    )
    new = generated[0, tokens["input_ids"].shape[1] :]
    return components.tokenizer.decode(
        new, skip_special_tokens=True, clean_up_tokenization_spaces=False
    ).strip()


@torch.no_grad()
def encode_prompt(
    components: LayeredComponents, prompt: str
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The prompt's conditioning: the language model's last hidden state after the template.

    Returns:
        (1, tokens, hidden) in `components.dtype` with tokens ≤ `MAX_SEQUENCE_LENGTH`, and
        its mask (None: one prompt has no padding).
    """
    tokens = components.tokenizer(PROMPT_TEMPLATE.format(prompt), return_tensors="pt")
    output = components.text_encoder(
        input_ids=tokens["input_ids"].to(components.device),
        attention_mask=tokens["attention_mask"].to(components.device),
        output_hidden_states=True,
    )
    hidden = output.hidden_states[-1][:, TEMPLATE_TOKENS:][:, :MAX_SEQUENCE_LENGTH]
    return hidden.to(components.dtype), None


@torch.no_grad()
def encode_picture(components: LayeredComponents, picture: Image.Image) -> torch.Tensor:
    """The picture's normalised latent: (1, 1, 16, H/8, W/8) float32, frames second."""
    vae = components.vae
    pixels = torch.from_numpy(np.asarray(picture, dtype=np.float32) / 255.0)
    pixels = (pixels * 2 - 1).permute(2, 0, 1)[None, :, None]  # (1, 4, 1, H, W)
    latent = vae.encode(pixels.to(components.device, vae.dtype)).latent_dist.mode().float()
    mean, std = _latent_statistics(vae, latent.device)
    return ((latent - mean) / std).permute(0, 2, 1, 3, 4)


@torch.no_grad()
def decode_frame(components: LayeredComponents, frame: torch.Tensor) -> torch.Tensor:
    """One layer's RGBA: (1, 16, h, w) normalised latent → (4, H, W) float32 in [0, 1]."""
    vae = components.vae
    mean, std = _latent_statistics(vae, frame.device)
    latent = frame[:, :, None] * std + mean
    pixels = vae.decode(latent.to(vae.dtype), return_dict=False)[0][:, :, 0]
    return (pixels[0].float() / 2 + 0.5).clamp(0, 1)


def pack_frames(frames: torch.Tensor) -> torch.Tensor:
    """(B, F, C, 2h, 2w) → (B, F·h·w, 4C): frame by frame, row-major 2×2 patches."""
    batch, count, channels, height, width = frames.shape
    patches = frames.view(batch, count, channels, height // 2, 2, width // 2, 2)
    patches = patches.permute(0, 1, 3, 5, 2, 4, 6)
    return patches.reshape(batch, count * (height // 2) * (width // 2), channels * 4)


def unpack_frames(tokens: torch.Tensor, count: int, rows: int, columns: int) -> torch.Tensor:
    """The inverse of `pack_frames`: (B, F·h·w, 4C) → (B, F, C, 2h, 2w)."""
    batch, _, width = tokens.shape
    channels = width // 4
    patches = tokens.view(batch, count, rows, columns, channels, 2, 2)
    patches = patches.permute(0, 1, 4, 2, 5, 3, 6)
    return patches.reshape(batch, count, channels, 2 * rows, 2 * columns)


def _latent_statistics(vae: Any, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    shape = (1, vae.config.z_dim, 1, 1, 1)
    mean = torch.tensor(vae.config.latents_mean, dtype=torch.float32).view(shape)
    std = torch.tensor(vae.config.latents_std, dtype=torch.float32).view(shape)
    return mean.to(device), std.to(device)


def _to_uint8(rgba: torch.Tensor, width: int, height: int) -> np.ndarray:
    array = (rgba.permute(1, 2, 0).cpu().numpy() * 255).round().astype(np.uint8)
    layer = Image.fromarray(array, "RGBA")
    if layer.size != (width, height):
        layer = layer.resize((width, height), Image.Resampling.LANCZOS)
    return np.asarray(layer).copy()


def _check(image: np.ndarray, layers: int, steps: int, cfg: float, resolution: int) -> None:
    if image.ndim != 3 or image.shape[2] != 4 or image.dtype != np.uint8:
        raise ValueError(f"image must be (H, W, 4) uint8, got {image.shape} {image.dtype}")
    if min(image.shape[:2]) < 1:
        raise ValueError(f"image is empty: {image.shape}")
    if not 1 <= layers <= MAX_LAYERS:
        raise ValueError(f"layers {layers} outside 1..{MAX_LAYERS}")
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    if not math.isfinite(cfg) or cfg < 0:
        raise ValueError(f"cfg must be a finite number ≥ 0, got {cfg}")
    if resolution % _SIZE_MULTIPLE or not 64 <= resolution <= 1024:
        raise ValueError(f"resolution {resolution} is not a multiple of 32 in 64..1024")
