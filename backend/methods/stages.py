"""The stages the methods are made of: prompts, VAE, transparent decode and encode.

Each takes the `ModelSet` and plain tensors or uint8 arrays, so a method reads as
a list of these calls (style rule 12). The VAE and the transparent decoder and encoder
work in overlapping tiles when the image would not fit (`models.tiling`), so a 4096²
layer's memory is bounded by its tile's.
"""

from __future__ import annotations

import numpy as np
import torch

from protocol import LayerRole

from ..layerdiffuse import decoder_output_to_rgba, encoder_input, tiled_map
from ..model_set import ModelSet
from .framing import Framing
from .prompts import encode_prompts, encode_prompts_sdxl
from .request import GenerationRequest
from .sizing import composite_on_gray, to_uint8

# The original composites img2img sources on (127, 127, 127) before the VAE.
IMG2IMG_GRAY = 127 / 255

# Peak memory of one image row of each pass in float16, per image pixel: estimates from
# the activations alive at full resolution (the SD VAE's last decoder level holds 128 to
# 256 channels at once; the encoder's first, 128), and performance.md §4's measured ~830
# bytes per view for the transparent decoder. Above the free memory they allow, tiles.
VAE_DECODE_BYTES = 2400
VAE_ENCODE_BYTES = 1600
TRANSPARENT_DECODE_BYTES = 900
TRANSPARENT_ENCODE_BYTES = 400


def _in_tiles(models: ModelSet, image: torch.Tensor, scale: int, bytes_per_pixel: int) -> bool:
    """Whether a pass over `image` ((B, C, H, W) at `scale` pixels per latent pixel) tiles."""
    rows, height, width = image.shape[0], image.shape[-2] * 8 // scale, image.shape[-1] * 8 // scale
    cost = rows * bytes_per_pixel * image.element_size() / 2
    return models.tiling.tiles(height * width, cost, models.device)


def encode_text(
    models: ModelSet, prompts: list[str], negative_prompts: list[str]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Positive and negative contexts, one row per prompt, in the UNet's dtype.

    Both are encoded in one call so that long prompts give both the same length.

    Returns:
        (context, uncond_context), each (len(prompts), tokens, hidden).
    """
    base = models.base
    both = encode_prompts(base.text_encoder, base.tokenizer, prompts + negative_prompts)
    both = both.to(device=models.device, dtype=models.dtype)
    return both[: len(prompts)], both[len(prompts) :]


def encode_text_sdxl(
    models: ModelSet, prompts: list[str], negative_prompts: list[str], width: int, height: int
) -> tuple[torch.Tensor, torch.Tensor, tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]]:
    """SDXL's contexts and its added conditions (pooled text, size ids), one row per prompt.

    The size ids are (original, crop offset, target) = ((H, W), (0, 0), (H, W)) for every
    row, as A1111 and Forge send them for a generation of that size. An empty negative
    prompt is all zeros, context and pooled text alike, as A1111's SDXL conditioner makes
    it (`force_zero_embeddings`).

    Returns:
        (context, uncond_context, (negative added conditions, positive added conditions)).
    """
    base = models.base
    assert base.text_encoder_2 is not None and base.tokenizer_2 is not None
    context, pooled = encode_prompts_sdxl(
        base.text_encoder,
        base.tokenizer,
        base.text_encoder_2,
        base.tokenizer_2,
        prompts + negative_prompts,
    )
    context = context.to(device=models.device, dtype=models.dtype)
    pooled = pooled.to(device=models.device, dtype=models.dtype)
    rows = len(prompts)
    for index, text in enumerate(negative_prompts):
        if text == "":
            context[rows + index] = 0
            pooled[rows + index] = 0
    time_ids = torch.tensor(
        [[height, width, 0, 0, height, width]] * rows, device=models.device, dtype=models.dtype
    )
    positive = {"text_embeds": pooled[:rows], "time_ids": time_ids}
    negative = {"text_embeds": pooled[rows:], "time_ids": time_ids}
    return context[:rows], context[rows:], (negative, positive)


@torch.no_grad()
def encode_condition(models: ModelSet, image: np.ndarray) -> torch.Tensor:
    """A condition layer as the SDXL conditional models take it (layerdiffuse.md §4).

    Over 50 % gray, VAE-encoded (the posterior's mean: Forge draws a sample, which only
    adds noise to a condition), times the scaling factor.

    Args:
        image: (h, w, 4) uint8 straight RGBA at the generation size.

    Returns:
        (1, 4, h/8, w/8) in the set's dtype.
    """
    vae = models.base.vae
    on_gray = composite_on_gray(image)
    vae_input = torch.from_numpy(on_gray * 2.0 - 1.0).movedim(-1, 0)[None]
    latents = _vae_encode(models, vae_input.to(device=models.device, dtype=vae.dtype))[0]
    return (latents * vae.config.scaling_factor).to(models.dtype)


def _vae_encode(models: ModelSet, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The VAE posterior's mean and std of (B, 3, H, W) in [-1, 1], in tiles if large."""
    vae = models.base.vae

    def encode(crop: torch.Tensor) -> torch.Tensor:
        posterior = vae.encode(crop).latent_dist
        return torch.cat([posterior.mean, posterior.std], dim=1)

    if _in_tiles(models, image, 8, VAE_ENCODE_BYTES):
        both = tiled_map(encode, [(image, 8)], output_scale=1, grid=models.tiling.grid())
    else:
        both = encode(image)
    mean, std = both.chunk(2, dim=1)
    return mean, std


def condition_latents(models: ModelSet, images: list[np.ndarray]) -> torch.Tensor:
    """The concatenated condition latents of layers at the generation size, in order
    (e.g. [bg, blend]): (1, 4 · len(images), h/8, w/8)."""
    return torch.cat([encode_condition(models, image) for image in images], 1)


@torch.no_grad()
def vae_decode(models: ModelSet, latents: torch.Tensor) -> torch.Tensor:
    """Scaled latents (B, 4, h, w) → images (B, 3, 8h, 8w) in [0, 1]."""
    vae = models.base.vae
    scaled = latents.to(dtype=vae.dtype) / vae.config.scaling_factor

    def decode(crop: torch.Tensor) -> torch.Tensor:
        return vae.decode(crop).sample

    if _in_tiles(models, scaled, 1, VAE_DECODE_BYTES):
        decoded = tiled_map(decode, [(scaled, 1)], output_scale=8, grid=models.tiling.grid())
    else:
        decoded = decode(scaled)
    return (decoded / 2 + 0.5).clamp(0, 1)


@torch.no_grad()
def transparent_decode(
    models: ModelSet, latents: torch.Tensor, pixels: torch.Tensor
) -> list[np.ndarray]:
    """The transparent decoder's 8-view estimate for each image.

    Args:
        latents: (B, 4, h, w) scaled latents, as the sampler returns them.
        pixels: (B, 3, 8h, 8w) their VAE decode in [0, 1].

    Returns:
        B arrays (8h, 8w, 4) uint8 straight RGBA.
    """
    decoder = models.transparent_decoder()
    dtype = next(decoder.parameters()).dtype
    unscaled = (latents / models.base.vae.config.scaling_factor).to(dtype)
    pixels = pixels.to(dtype)
    if _in_tiles(models, pixels, 8, TRANSPARENT_DECODE_BYTES):
        inputs = [(pixels, 8), (unscaled, 1)]
        grid = models.tiling.grid()
        output = tiled_map(decoder.estimate_augmented, inputs, output_scale=8, grid=grid)
    else:
        output = decoder.estimate_augmented(pixels, unscaled)
    return decoder_output_to_rgba(output)


def opaque_rgba(pixels: torch.Tensor) -> list[np.ndarray]:
    """(B, 3, H, W) in [0, 1] → B arrays (H, W, 4) uint8 with alpha 255."""
    images = to_uint8(pixels.movedim(1, -1).float().cpu().numpy())
    alpha = np.full((*images.shape[:-1], 1), 255, dtype=np.uint8)
    return list(np.concatenate([images, alpha], axis=-1))


@torch.no_grad()
def encode_transparent_source(models: ModelSet, rgba: np.ndarray) -> torch.Tensor:
    """A transparent image → scaled latents carrying its alpha (transparent img2img).

    The VAE sees the image over mid-gray; its posterior noise is replaced by the
    transparent encoder's offset: z = mean + std · scale · offset (layerdiffuse.md §2.2).

    Args:
        rgba: (H, W, 4) uint8 at the generation size.

    Returns:
        (1, 4, H/8, W/8) latents multiplied by the VAE's scaling factor, in the set's dtype.
    """
    vae = models.base.vae
    image = rgba.astype(np.float32) / 255.0
    alpha = image[..., 3:]
    on_gray = image[..., :3] * alpha + IMG2IMG_GRAY * (1.0 - alpha)
    vae_input = torch.from_numpy(on_gray * 2.0 - 1.0).movedim(-1, 0)[None]
    mean, std = _vae_encode(models, vae_input.to(device=models.device, dtype=vae.dtype))

    encoder, offset_scale = models.transparent_encoder()
    weight = next(encoder.parameters())
    encoded = encoder_input(rgba).to(device=weight.device, dtype=weight.dtype)
    if _in_tiles(models, encoded, 8, TRANSPARENT_ENCODE_BYTES):
        offset = tiled_map(encoder, [(encoded, 8)], output_scale=1, grid=models.tiling.grid())
    else:
        offset = encoder(encoded)
    latents = mean + std * (offset * offset_scale).to(mean.dtype)
    return (latents * vae.config.scaling_factor).to(models.dtype)


def refined_sources(
    models: ModelSet,
    request: GenerationRequest,
    framing: Framing,
    roles: tuple[LayerRole, ...],
) -> torch.Tensor:
    """A second pass's starting latents: each role's first-pass layer (`request.refine`, at
    the request's size) mapped into this generation and encoded, a foreground through the
    transparent encoder (its alpha), another layer through the VAE.

    Returns:
        (len(roles), 4, h/8, w/8) scaled latents, in the order of `roles`.
    """
    latents = []
    for role in roles:
        layer = framing.to_generation(request.refine[role])
        if role is LayerRole.FOREGROUND:
            latents.append(encode_transparent_source(models, layer))
        else:
            latents.append(encode_condition(models, layer))
    return torch.cat(latents)


def img2img_source(
    models: ModelSet, request: GenerationRequest, framing: Framing
) -> torch.Tensor | None:
    """A transparent method's img2img source: its foreground input mapped into the
    generation (`Framing.input_at_generation`) and encoded as above; None for txt2img,
    and for a second pass, which starts from its first pass's layers instead.
    """
    rgba = request.inputs.get(LayerRole.FOREGROUND)
    if rgba is None or request.refine:
        return None
    return encode_transparent_source(models, framing.input_at_generation(rgba, request.resize_mode))
