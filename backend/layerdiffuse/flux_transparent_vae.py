"""FLUX.1 LayerDiffuse: the transparent decoder and offset encoder on the 16-channel latent.

The release `RedAIGC/Flux-version-LayerDiffuse` (`TransparentVAE.pth`, 379 MB, bf16) keeps
SD LayerDiffuse's design and retrains it for FLUX's VAE (its `lib_layerdiffuse/vae.py`):

- the decoder is the same "UNet1024" as SD's (`TransparentVAEDecoder`, 7 levels, head dim
  8, GroupNorm 4) whose `latent_conv_in` takes the **16** latent channels (1×1, 16 → 64);
- the encoder is the same offset encoder (`TransparentVAEEncoder`) with a 16-channel
  output conv, whose output is multiplied by **300** before use ("similar to LoRA's alpha");
- the file is the state dict of one container: `decoder.*`, `encoder.*`, and `sd_vae.*`,
  a copy of the FLUX VAE it was trained with.

Decode (its `TransparentVAE.decode`): the FLUX VAE decodes the *unscaled* latent
`z = packed_latents / scaling_factor + shift_factor` to `pixel = sample * 0.5 + 0.5`, which
is **not clipped**, and the decoder takes (pixel, z) through SD's 8-view median.

Encode (its `TransparentVAE.encode` and `demo_i2i.py`): the VAE encodes `(2·rgb − 1)·alpha`
(the image on mid-grey); the encoder takes `cat([pad_rgb colour, alpha])`, colour
**first** (SD's encoder takes alpha first); `z = mean + std · 300 · offset`, then the
sampler-space latent is `(z − shift_factor) · scaling_factor`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from .alpha import pad_rgb
from .transparent_vae_decoder import RELEASED_BLOCK_CHANNELS, TransparentVAEDecoder
from .transparent_vae_encoder import RELEASED_ENCODER_CHANNELS, TransparentVAEEncoder

FLUX_LATENT_CHANNELS = 16
"""Channels of the FLUX VAE latent (`AutoencoderKL.config.latent_channels`)."""

FLUX_OFFSET_SCALE = 300.0
"""The release's `TransparentVAE(alpha=300.0)`: the encoder's output is multiplied by it."""


class FluxTransparentVAEDecoder(TransparentVAEDecoder):
    """The released FLUX transparent decoder: SD's UNet1024 on the 16-channel latent.

    Built with no arguments its state dict has the keys and shapes of the file's
    `decoder.*` tensors (prefix removed): 538 tensors, `latent_conv_in.weight`
    (64, 16, 1, 1). Smaller `block_out_channels` give the same structure at demo size.

    Args:
        block_out_channels: channels per level; 7 levels, the last three with attention.
        layers_per_block: resnets per down block (up blocks have one more).
        latent_channels: channels of the FLUX latent.
    """

    def __init__(
        self,
        block_out_channels: Sequence[int] = RELEASED_BLOCK_CHANNELS,
        layers_per_block: int = 2,
        latent_channels: int = FLUX_LATENT_CHANNELS,
    ) -> None:
        super().__init__(
            block_out_channels=block_out_channels,
            layers_per_block=layers_per_block,
            latent_channels=latent_channels,
        )


class FluxTransparentVAEEncoder(TransparentVAEEncoder):
    """The released FLUX offset encoder: SD's conv stack with a 16-channel output.

    Built with no arguments its state dict has the keys and shapes of the file's
    `encoder.*` tensors: `blocks.{0,2,…,16}.{weight,bias}`, `blocks.16.weight`
    (16, 256, 3, 3).

    Args:
        channels: channels of the four resolutions.
        latent_channels: channels of the FLUX latent.
    """

    def __init__(
        self,
        channels: Sequence[int] = RELEASED_ENCODER_CHANNELS,
        latent_channels: int = FLUX_LATENT_CHANNELS,
    ) -> None:
        super().__init__(channels=channels, in_channels=4, latent_channels=latent_channels)


@torch.no_grad()
def decode_transparent(
    vae: torch.nn.Module,
    decoder: TransparentVAEDecoder,
    latents: torch.Tensor,
    *,
    augment: bool = True,
    max_views_per_batch: int | None = None,
) -> torch.Tensor:
    """Decode FLUX latents to straight RGBA with the transparent decoder.

    Args:
        vae: the FLUX `AutoencoderKL` (16 latent channels).
        decoder: a `FluxTransparentVAEDecoder` (or any `TransparentVAEDecoder` whose
            `latent_conv_in` takes the VAE's latent channels).
        latents: (B, 16, H/8, W/8) *unscaled* latents, `unpacked / scaling_factor +
            shift_factor`, the tensor `vae.decode` takes; H, W multiples of 64.
        augment: the reference's 8-view median (True) or one pass (False).
        max_views_per_batch: views per decoder pass; None picks from free memory.

    Returns:
        (B, 4, H, W) float32 in [0, 1] in **RGBA** order, straight alpha.
    """
    vae_dtype = next(vae.parameters()).dtype
    sample = vae.decode(latents.to(vae_dtype)).sample
    # The release feeds the decoder `sample * 0.5 + 0.5` unclipped (vae.py decode).
    pixel = (sample * 0.5 + 0.5).to(decoder.conv_in.weight.dtype)
    latent = latents.to(decoder.conv_in.weight.dtype)
    if augment:
        output = decoder.estimate_augmented(pixel, latent, max_views_per_batch)
    else:
        output = decoder(pixel, latent).clip(0, 1)
    output = output.float().clip(0, 1)
    return torch.cat([output[:, 1:4], output[:, 0:1]], dim=1)


def flux_encoder_input(rgba: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """The FLUX VAE's and the offset encoder's inputs for one RGBA image.

    Args:
        rgba: (H, W, 4) uint8 straight-alpha RGBA.

    Returns:
        (vae_input, offset_input): (1, 3, H, W) `(2·rgb − 1)·alpha` in [−1, 1], and
        (1, 4, H, W) `cat([pad_rgb colour, alpha])` in [0, 1], colour first.
    """
    image = torch.from_numpy(rgba.astype(np.float32) / 255.0).movedim(-1, 0)[None]
    rgb, alpha = image[:, :3], image[:, 3:]
    padded = torch.from_numpy(pad_rgb(rgba)).movedim(-1, 0)[None]
    return (rgb * 2.0 - 1.0) * alpha, torch.cat([padded, alpha], dim=1)


@torch.no_grad()
def encode_transparent(
    vae: torch.nn.Module,
    encoder: TransparentVAEEncoder,
    rgba: np.ndarray,
    *,
    offset_scale: float = FLUX_OFFSET_SCALE,
) -> torch.Tensor:
    """Encode a transparent image to sampler-space FLUX latents (transparent img2img).

    The posterior's noise is replaced by the offset: `z = mean + std · offset_scale ·
    encoder(x)`, then `(z − shift_factor) · scaling_factor`.

    Args:
        vae: the FLUX `AutoencoderKL`.
        encoder: a `FluxTransparentVAEEncoder`.
        rgba: (H, W, 4) uint8 straight alpha; H, W multiples of 8.
        offset_scale: the release's 300.

    Returns:
        (1, 16, H/8, W/8) latents in the VAE's dtype and device, scaled and shifted as
        the sampler sees them (before packing).
    """
    parameter = next(vae.parameters())
    vae_input, offset_input = flux_encoder_input(rgba)
    posterior = vae.encode(vae_input.to(parameter)).latent_dist
    encoder_weight = encoder.blocks[0].weight
    offset = encoder(offset_input.to(encoder_weight)) * offset_scale
    latent = posterior.mean + posterior.std * offset.to(posterior.mean)
    config = vae.config
    return (latent - config.shift_factor) * config.scaling_factor
