"""SD1.5: only generate a transparent image (attention injection), txt2img or img2img.

`layer_sd15_transparent_attn` moves SD1.5 into the transparent latent space; the
SD1.5 transparent decoder turns each result into straight RGBA. With a foreground
input the source is encoded through the transparent encoder and re-noised by
`denoise_strength` (transparent img2img).
"""

from __future__ import annotations

from protocol import LayerRole

from ..model_set import ModelSet
from .denoise import StepCallback, no_progress
from .request import GenerationRequest, GenerationResult
from .sd15_frames import framing_of, run_frames
from .stages import img2img_source

LAYER_FILE = "layer_sd15_transparent_attn"


def run(
    request: GenerationRequest, models: ModelSet, on_step: StepCallback = no_progress
) -> GenerationResult:
    """Generate `request.image_count` transparent images: {FOREGROUND: RGBA} each."""
    # 1. The img2img source, if any, as scaled latents carrying its alpha offset.
    source = img2img_source(models, request, framing_of(request))
    # 2. One frame, the foreground, decoded with alpha.
    return run_frames(
        request,
        models,
        on_step,
        layer_file=LAYER_FILE,
        frame_roles=(LayerRole.FOREGROUND,),
        source=source,
    )
