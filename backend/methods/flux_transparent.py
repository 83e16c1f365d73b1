"""FLUX.1-dev: generate a transparent image (LayerDiffuse-Flux), txt2img or transparent img2img.

The release `RedAIGC/Flux-version-LayerDiffuse` runs diffusers' `FluxPipeline` with its
`layerlora.safetensors` loaded (strength 1), 1024², guidance 3.5, 50 steps, then decodes
with its transparent VAE (`demo_t2i.py`); img2img starts from the transparent encoder's
latent re-noised by `strength` (`demo_i2i.py` with its `FluxImg2ImgPipeline`, whose
demo defaults are guidance 7.0 and strength 0.8; the README's example uses 0.9). This
module is that recipe on the model pieces, without a pipeline object:

1. prompt: CLIP's pooled output (77 tokens) and T5's last hidden state
   (`max_sequence_length` tokens, 512 for dev), no negative prompt (FLUX.1-dev is
   guidance-distilled: the guidance scale goes in as an embedding, one pass per step);
2. schedule: `FlowMatchEulerDiscreteScheduler` with `sigmas = linspace(1, 1/steps, steps)`
   and the resolution-dependent shift `mu` (linear in the packed sequence length between
   `base_image_seq_len` → `base_shift` and `max_image_seq_len` → `max_shift`);
   img2img skips the first `steps − int(steps·strength)` and mixes the source with noise
   by the scheduler's `scale_noise` at the first kept timestep;
3. the loop on packed latents (2×2 patches: (B, 16, h, w) → (B, h/2·w/2, 64)) with
   positional ids (0, row, column) for the image and zeros for the text;
4. unpack, `latents / scaling_factor + shift_factor`, VAE decode, transparent decoder
   (`layerdiffuse.decode_transparent`) → RGBA.

The LoRA is merged into the transformer before (`layerdiffuse.attach_flux_lora`), once
per loaded model, not per job. `run` is the method as the registry calls it: a request's
`prompt`, `seed`, `steps`, `cfg_scale` (FLUX's embedded guidance), its size (generated at
multiples of 64, near 1024² with `fit_to_native`, and mapped back exactly as the SD
methods do), `batch_size` × `batch_count`, and a FOREGROUND input with
`denoise_strength` for img2img. The negative prompt, the sampler and Stop At have no
FLUX.1-dev meaning (guidance-distilled, flow matching, the LoRA always on); a second pass
(`hires`) is not made for FLUX.
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np
import torch
from diffusers import FlowMatchEulerDiscreteScheduler

from protocol import LayerRole

from ..errors import InvalidRequest
from ..layerdiffuse.flux_transparent_vae import decode_transparent, encode_transparent
from ..layerdiffuse.transparent_vae_decoder import TransparentVAEDecoder
from ..layerdiffuse.transparent_vae_encoder import TransparentVAEEncoder
from .denoise import StepCallback, no_progress, seeded_noise
from .framing import framing_for
from .request import GenerationRequest, GenerationResult

NATIVE_AREA = 1024 * 1024

DEFAULT_GUIDANCE = 3.5
"""The release's text-to-image guidance (`demo_t2i.py --guidance`), FLUX.1-dev's usual value."""

DEFAULT_STEPS = 50
"""The release's demo steps."""

DEFAULT_MAX_SEQUENCE_LENGTH = 512
"""T5 tokens for FLUX.1-dev (`FluxPipeline`'s default)."""

CLIP_MAX_LENGTH = 77
_PATCH = 2  # FLUX packs 2×2 latent pixels into one token


class FluxComponents(Protocol):
    """What the FLUX methods read: the loaded model pieces, all on one device.

    Attributes:
        transformer: `FluxTransformer2DModel` (guidance_embeds True), LoRA merged.
        vae: the 16-channel `AutoencoderKL` with `scaling_factor` and `shift_factor`.
        text_encoder / tokenizer: `CLIPTextModel` and its tokenizer (pooled output).
        text_encoder_2 / tokenizer_2: `T5EncoderModel` and its tokenizer.
        scheduler_config: the `FlowMatchEulerDiscreteScheduler` config (dynamic shifting).
        decoder / encoder: the FLUX transparent decoder and offset encoder.
        device / dtype: where and in what the transformer runs.
    """

    transformer: torch.nn.Module
    vae: Any
    text_encoder: torch.nn.Module
    tokenizer: Any
    text_encoder_2: torch.nn.Module
    tokenizer_2: Any
    scheduler_config: dict[str, Any]
    decoder: TransparentVAEDecoder
    encoder: TransparentVAEEncoder
    device: torch.device
    dtype: torch.dtype


def run_flux_transparent(
    models: FluxComponents,
    prompt: str,
    *,
    seed: int,
    width: int = 1024,
    height: int = 1024,
    steps: int = DEFAULT_STEPS,
    guidance_scale: float = DEFAULT_GUIDANCE,
    image_count: int = 1,
    max_sequence_length: int = DEFAULT_MAX_SEQUENCE_LENGTH,
    augment: bool = True,
    on_step: StepCallback = no_progress,
) -> torch.Tensor:
    """Text to transparent images.

    Args:
        models: the loaded pieces (`FluxComponents`).
        prompt: the prompt (no negative prompt: FLUX.1-dev uses guidance embedding).
        seed: image i uses seed + i (CPU noise, the same on every device).
        width / height: multiples of the decoder's `size_multiple` (64).
        steps: sampler steps.
        guidance_scale: FLUX's embedded guidance.
        image_count: images generated together.
        max_sequence_length: T5 tokens.
        augment: the decoder's 8-view median.
        on_step: progress; raising in it stops the run.

    Returns:
        (image_count, 4, height, width) float32 RGBA in [0, 1], straight alpha.

    Raises:
        ValueError: a size, step count or guidance outside what the models take.
    """
    # 1. Check inputs before any tensor exists.
    _check(models, width, height, steps, guidance_scale, image_count, strength=1.0)
    # 2. Prompt, noise, schedule.
    embeds, pooled = encode_prompt(models, [prompt] * image_count, max_sequence_length)
    shape = (_latent_channels(models), height // 8, width // 8)
    noise, _ = seeded_noise(range(seed, seed + image_count), shape, models.device, torch.float32)
    scheduler, timesteps = flux_schedule(models.scheduler_config, steps, shape[1], shape[2])
    # 3. Denoise and decode.
    latents = denoise_flux(
        models, scheduler, timesteps, noise, embeds, pooled, guidance_scale, on_step
    )
    return decode_latents(models, latents, augment=augment)


def run_flux_transparent_img2img(
    models: FluxComponents,
    prompt: str,
    source: np.ndarray,
    *,
    seed: int,
    strength: float = 0.8,
    steps: int = DEFAULT_STEPS,
    guidance_scale: float = DEFAULT_GUIDANCE,
    image_count: int = 1,
    max_sequence_length: int = DEFAULT_MAX_SEQUENCE_LENGTH,
    augment: bool = True,
    on_step: StepCallback = no_progress,
) -> torch.Tensor:
    """Transparent img2img: re-noise the transparent encoding of `source` and denoise.

    Args:
        source: (H, W, 4) uint8 straight-alpha RGBA at the generation size (multiples
            of 64); the result has its size.
        strength: fraction of the schedule re-run (0 < strength ≤ 1).
        Other arguments: as `run_flux_transparent`.

    Returns:
        (image_count, 4, H, W) float32 RGBA in [0, 1], straight alpha.

    Raises:
        ValueError: a bad source, size, strength, step count or guidance.
    """
    # 1. Check inputs.
    if source.ndim != 3 or source.shape[2] != 4 or source.dtype != np.uint8:
        raise ValueError(f"source must be (H, W, 4) uint8, got {source.shape} {source.dtype}")
    height, width = source.shape[:2]
    _check(models, width, height, steps, guidance_scale, image_count, strength)
    # 2. The source's latent (alpha in its offset), prompt, noise, the shortened schedule.
    encoded = encode_transparent(models.vae, models.encoder, source).float()
    embeds, pooled = encode_prompt(models, [prompt] * image_count, max_sequence_length)
    shape = tuple(encoded.shape[1:])
    noise, _ = seeded_noise(range(seed, seed + image_count), shape, models.device, torch.float32)
    scheduler, timesteps = flux_schedule(
        models.scheduler_config, steps, shape[1], shape[2], strength=strength
    )
    start = scheduler.scale_noise(
        encoded.to(models.device).expand(image_count, -1, -1, -1), timesteps[:1], noise
    )
    # 3. Denoise and decode.
    latents = denoise_flux(
        models, scheduler, timesteps, start, embeds, pooled, guidance_scale, on_step
    )
    return decode_latents(models, latents, augment=augment)


def run(
    request: GenerationRequest, models: Any, on_step: StepCallback = no_progress
) -> GenerationResult:
    """`flux_transparent`: `request.image_count` transparent images, {FOREGROUND: RGBA} each.

    Args:
        models: a `FluxModelSet` (`FluxComponents`).
    """
    framing = framing_for(
        request.width, request.height, fit_to_native=request.fit_to_native, native_area=NATIVE_AREA
    )
    width, height = framing.generation_size
    source = request.inputs.get(LayerRole.FOREGROUND)
    if source is not None:
        if request.denoise_strength <= 0.0:
            reason = "flux_transparent reworks a foreground with a strength above 0"
            raise InvalidRequest("denoise_strength", reason)
        source = framing.input_at_generation(source, request.resize_mode)
    images: list[dict[LayerRole, np.ndarray]] = []
    seeds: list[int] = []
    for index in range(request.batch_count):
        first = request.seed + index * request.batch_size

        def report(step: int, total: int, latents: torch.Tensor, index: int = index) -> None:
            on_step(index * total + step, request.batch_count * total, latents)

        common = {
            "seed": first,
            "steps": request.steps,
            "guidance_scale": request.cfg_scale,
            "image_count": request.batch_size,
            "on_step": report,
        }
        if source is None:
            rgba = run_flux_transparent(
                models, request.prompt, width=width, height=height, **common
            )
        else:
            rgba = run_flux_transparent_img2img(
                models, request.prompt, source, strength=request.denoise_strength, **common
            )
        for row in range(request.batch_size):
            images.append({LayerRole.FOREGROUND: framing.to_request(_to_uint8(rgba[row]))})
            seeds.append(first + row)
    return GenerationResult(images=images, seeds=seeds, generation_size=(width, height))


def _to_uint8(rgba: torch.Tensor) -> np.ndarray:
    """(4, H, W) float RGBA in [0, 1] → (H, W, 4) uint8 straight RGBA."""
    pixels = (rgba.float().clamp(0, 1) * 255).round().to(torch.uint8)
    return pixels.permute(1, 2, 0).cpu().numpy()


@torch.no_grad()
def encode_prompt(
    models: FluxComponents, prompts: list[str], max_sequence_length: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """FLUX's text conditioning: T5's hidden states and CLIP's pooled output.

    Returns:
        (B, max_sequence_length, joint_attention_dim) and (B, pooled_projection_dim),
        in `models.dtype` on `models.device`.
    """
    # The text encoders may live elsewhere than the transformer (on the CPU for a 24 GB
    # card): each reads its tokens where its weights are.
    clip_ids = models.tokenizer(
        prompts,
        padding="max_length",
        max_length=CLIP_MAX_LENGTH,
        truncation=True,
        return_tensors="pt",
    ).input_ids.to(_device_of(models.text_encoder))
    pooled = models.text_encoder(clip_ids, output_hidden_states=False).pooler_output
    t5_ids = models.tokenizer_2(
        prompts,
        padding="max_length",
        max_length=max_sequence_length,
        truncation=True,
        return_tensors="pt",
    ).input_ids.to(_device_of(models.text_encoder_2))
    embeds = models.text_encoder_2(t5_ids, output_hidden_states=False)[0]
    return (
        embeds.to(models.device, models.dtype),
        pooled.to(models.device, models.dtype),
    )


def _device_of(module: torch.nn.Module) -> torch.device:
    return next(module.parameters()).device


def flux_schedule(
    scheduler_config: dict[str, Any],
    steps: int,
    latent_height: int,
    latent_width: int,
    *,
    strength: float = 1.0,
) -> tuple[FlowMatchEulerDiscreteScheduler, torch.Tensor]:
    """The scheduler set for FLUX's shifted sigmas, and the timesteps to run.

    Args:
        scheduler_config: the model's `FlowMatchEulerDiscreteScheduler` config.
        steps: steps of the full schedule.
        latent_height / latent_width: the unpacked latent's size (image / 8).
        strength: img2img: the last `int(steps·strength)` timesteps are kept (the
            scheduler's begin index is set to the first kept one).
    """
    scheduler = FlowMatchEulerDiscreteScheduler.from_config(scheduler_config)
    sequence = (latent_height // _PATCH) * (latent_width // _PATCH)
    config = scheduler.config
    slope = (config.max_shift - config.base_shift) / (
        config.max_image_seq_len - config.base_image_seq_len
    )
    mu = config.base_shift + slope * (sequence - config.base_image_seq_len)
    sigmas = np.linspace(1.0, 1.0 / steps, steps).tolist()
    scheduler.set_timesteps(sigmas=sigmas, mu=mu)
    first = int(max(steps - min(steps * strength, steps), 0))
    scheduler.set_begin_index(first)
    return scheduler, scheduler.timesteps[first:]


@torch.no_grad()
def denoise_flux(
    models: FluxComponents,
    scheduler: FlowMatchEulerDiscreteScheduler,
    timesteps: torch.Tensor,
    latents: torch.Tensor,
    embeds: torch.Tensor,
    pooled: torch.Tensor,
    guidance_scale: float,
    on_step: StepCallback = no_progress,
) -> torch.Tensor:
    """The flow-matching Euler loop on packed latents.

    Args:
        latents: (B, 16, h, w) float32 start (noise, or re-noised source), sampler space.
        embeds / pooled: from `encode_prompt`, B rows.

    Returns:
        (B, 16, h, w) float32 denoised latents, sampler space (scaled and shifted).
    """
    batch, _, height, width = latents.shape
    sample = pack_latents(latents)
    image_ids = latent_image_ids(height // _PATCH, width // _PATCH, models.device, models.dtype)
    text_ids = torch.zeros(embeds.shape[1], 3, device=models.device, dtype=models.dtype)
    guidance = torch.full((batch,), guidance_scale, device=models.device, dtype=torch.float32)
    total = len(timesteps)
    for index, timestep in enumerate(timesteps):
        velocity = models.transformer(
            hidden_states=sample.to(models.dtype),
            timestep=(timestep.expand(batch) / 1000).to(models.dtype),
            guidance=guidance,
            pooled_projections=pooled,
            encoder_hidden_states=embeds,
            txt_ids=text_ids,
            img_ids=image_ids,
            return_dict=False,
        )[0]
        sample = scheduler.step(velocity.float(), timestep, sample, return_dict=False)[0]
        on_step(index + 1, total, unpack_latents(sample, height, width))
    return unpack_latents(sample, height, width)


@torch.no_grad()
def decode_latents(
    models: FluxComponents, latents: torch.Tensor, *, augment: bool = True
) -> torch.Tensor:
    """(B, 16, h, w) sampler-space latents → (B, 4, 8h, 8w) RGBA in [0, 1]."""
    config = models.vae.config
    unscaled = latents / config.scaling_factor + config.shift_factor
    return decode_transparent(models.vae, models.decoder, unscaled, augment=augment)


def pack_latents(latents: torch.Tensor) -> torch.Tensor:
    """(B, C, h, w) → (B, h/2·w/2, 4C): each 2×2 patch one token, channels-major."""
    batch, channels, height, width = latents.shape
    patches = latents.view(batch, channels, height // 2, 2, width // 2, 2)
    return patches.permute(0, 2, 4, 1, 3, 5).reshape(batch, (height // 2) * (width // 2), -1)


def unpack_latents(packed: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """The inverse of `pack_latents` for an unpacked (h, w) = (`height`, `width`)."""
    batch, _, features = packed.shape
    channels = features // 4
    patches = packed.view(batch, height // 2, width // 2, channels, 2, 2)
    return patches.permute(0, 3, 1, 4, 2, 5).reshape(batch, channels, height, width)


def latent_image_ids(
    rows: int, columns: int, device: torch.device, dtype: torch.dtype
) -> torch.Tensor:
    """(rows·columns, 3) positional ids of the packed tokens: (0, row, column)."""
    ids = torch.zeros(rows, columns, 3)
    ids[..., 1] = torch.arange(rows)[:, None]
    ids[..., 2] = torch.arange(columns)[None, :]
    return ids.reshape(rows * columns, 3).to(device=device, dtype=dtype)


def _latent_channels(models: FluxComponents) -> int:
    return int(models.vae.config.latent_channels)


def _check(
    models: FluxComponents,
    width: int,
    height: int,
    steps: int,
    guidance_scale: float,
    image_count: int,
    strength: float,
) -> None:
    multiple = models.decoder.size_multiple
    if width <= 0 or height <= 0 or width % multiple or height % multiple:
        raise ValueError(f"size {width}x{height} is not a positive multiple of {multiple}")
    if steps < 1:
        raise ValueError(f"steps {steps} is below 1")
    if not 0.0 <= guidance_scale <= 100.0:
        raise ValueError(f"guidance scale {guidance_scale} outside 0..100")
    if image_count < 1:
        raise ValueError(f"image count {image_count} is below 1")
    if not 0.0 < strength <= 1.0:
        raise ValueError(f"strength {strength} outside (0, 1]")
    if models.transformer.config.in_channels != 4 * _latent_channels(models):
        raise ValueError(
            f"transformer in_channels {models.transformer.config.in_channels} does not take "
            f"2×2 patches of the VAE's {_latent_channels(models)} latent channels"
        )
