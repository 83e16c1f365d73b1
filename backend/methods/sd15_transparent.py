"""SD1.5: only generate a transparent image (attention injection), txt2img or img2img.

`layer_sd15_transparent_attn` moves SD1.5 into the transparent latent space; the
SD1.5 transparent decoder turns each result into straight RGBA. With a foreground
input the source is encoded through the transparent encoder and re-noised by
`denoise_strength` (transparent img2img).
"""

from __future__ import annotations

import torch

from protocol import LayerRole

from ..layerdiffuse import attach_sd15_layer_model
from ..model_set import ModelSet
from .denoise import StepCallback, denoise, no_progress, seeded_noise
from .request import GenerationRequest, GenerationResult
from .sizing import fit_rgba, generation_size
from .stages import encode_text, encode_transparent_source, transparent_decode, vae_decode

LAYER_MODEL = "layer_sd15_transparent_attn"
NATIVE_AREA = 512 * 512


def run(
    request: GenerationRequest, models: ModelSet, on_step: StepCallback = no_progress
) -> GenerationResult:
    """Generate `request.image_count` transparent images.

    Returns:
        One {FOREGROUND: RGBA} per image, at the requested size.
    """
    # 1. Sizes: the model runs at multiples of 64; results go back to the asked size.
    width, height = generation_size(
        request.width, request.height, native_area=NATIVE_AREA if request.fit_to_native else None
    )
    latent_shape = (4, height // 8, width // 8)

    # 2. Prompts, one row per image of a pass.
    rows = request.batch_size
    context, uncond = encode_text(models, [request.prompt] * rows, [request.negative_prompt] * rows)

    # 3. The img2img source, if any, as scaled latents with its alpha offset.
    source = None
    if LayerRole.FOREGROUND in request.inputs:
        fitted = fit_rgba(request.inputs[LayerRole.FOREGROUND], width, height, request.resize_mode)
        source = encode_transparent_source(models, fitted).expand(rows, -1, -1, -1)

    # 4. Attach the layer model for the whole run; the UNet is restored whatever happens.
    handle = attach_sd15_layer_model(models.base.unet, models.layer_state_dict(LAYER_MODEL))
    images, seeds = [], []
    try:
        for batch in range(request.batch_count):
            first = request.seed + batch * rows
            batch_seeds = list(range(first, first + rows))
            noise, generators = seeded_noise(batch_seeds, latent_shape, models.device, models.dtype)

            def report(step: int, total: int, latents: torch.Tensor, batch: int = batch) -> None:
                on_step(batch * total + step, request.batch_count * total, latents)

            latents = denoise(
                unet=models.base.unet,
                sampler=request.sampler,
                scheduler_config=models.base.scheduler_config,
                latents=source,
                noise=noise,
                generators=generators,
                context=context,
                uncond_context=uncond,
                cfg_scale=request.cfg_scale,
                steps=request.steps,
                strength=request.denoise_strength if source is not None else 1.0,
                on_step=report,
                use_layer_model=handle.set_active,
                ending_step=request.ending_step,
            )
            # 5. Decode: SD VAE, then the transparent decoder for alpha and colour.
            pixels = vae_decode(models, latents)
            for rgba, seed in zip(
                transparent_decode(models, latents, pixels), batch_seeds, strict=True
            ):
                images.append(
                    {
                        LayerRole.FOREGROUND: fit_rgba(
                            rgba, request.width, request.height, request.resize_mode
                        )
                    }
                )
                seeds.append(seed)
    finally:
        handle.detach()
    return GenerationResult(images=images, seeds=seeds, generation_size=(width, height))
