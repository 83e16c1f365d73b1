"""SD1.5 layer methods: everything together, background from foreground, foreground from background.

The three released multi-frame models (layerdiffuse.md §5.5). The caller asks for N
results; each result is a set of layers diffused together as frames, so the original's
"batch size must be divisible by 3 (or 2)" rule is ours to keep, not the user's.
joint and bg2fg, whose foreground has alpha, also take a foreground to rework through
the transparent encoder (img2img), as the original allows.

| method | frames                      | control image | alpha-decoded |
|--------|-----------------------------|---------------|---------------|
| joint  | foreground, background, blend | –           | foreground    |
| fg2bg  | background, blend           | foreground    | –             |
| bg2fg  | foreground, blend           | background    | foreground    |
"""

from __future__ import annotations

from protocol import LayerRole

from ..model_set import ModelSet
from .denoise import StepCallback, no_progress
from .request import GenerationRequest, GenerationResult
from .sd15_frames import framing_of, run_frames
from .stages import img2img_source

_FG, _BG, _BLEND = LayerRole.FOREGROUND, LayerRole.BACKGROUND, LayerRole.BLENDED


def run_joint(
    request: GenerationRequest, models: ModelSet, on_step: StepCallback = no_progress
) -> GenerationResult:
    """Foreground (transparent), background and blend, generated together; with a
    foreground input, every frame starts from it (transparent img2img)."""
    return run_frames(
        request,
        models,
        on_step,
        layer_file="layer_sd15_joint",
        frame_roles=(_FG, _BG, _BLEND),
        source=img2img_source(models, request, framing_of(request)),
    )


def run_fg_to_bg(
    request: GenerationRequest, models: ModelSet, on_step: StepCallback = no_progress
) -> GenerationResult:
    """A background (and the blend) for the given foreground layer."""
    return run_frames(
        request,
        models,
        on_step,
        layer_file="layer_sd15_fg2bg",
        frame_roles=(_BG, _BLEND),
        control_role=_FG,
    )


def run_bg_to_fg(
    request: GenerationRequest, models: ModelSet, on_step: StepCallback = no_progress
) -> GenerationResult:
    """A transparent foreground (and the blend) for the given background layer; with a
    foreground input, both frames start from it (transparent img2img)."""
    return run_frames(
        request,
        models,
        on_step,
        layer_file="layer_sd15_bg2fg",
        frame_roles=(_FG, _BLEND),
        control_role=_BG,
        source=img2img_source(models, request, framing_of(request)),
    )
