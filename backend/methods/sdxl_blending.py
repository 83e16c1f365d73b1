"""SDXL layer methods: blending from a layer, a layer from it and the blending, and both in one go.

The four conditional files (layerdiffuse.md §4) see condition latents beside the sample:

| method   | condition       | produces                 |
|----------|-----------------|--------------------------|
| fg2ble   | foreground      | blended image            |
| bg2ble   | background      | blended image            |
| fgble2bg | foreground, blend | background             |
| bgble2fg | background, blend | foreground (transparent) |

The one-click workflows chain them: "background for this foreground" is fg2ble then
fgble2bg; "foreground into this background" is bg2ble then bgble2fg, each result's
second step from that result's blend and seed. Step 2 has its own prompt, negative
prompt, sampler and Stop At (`second_*` of the request); left out, they are the seed
README's two-step recipes: the prompt and negative prompt of step 1, UniPC ("change the
sampler to Euler A or UniPC or some other sampler that is not dpm"; its recipe names
UniPC), and Stop At 0.5 for the background ("I set stop at as 0.5 to get better results
since I do not need the bg to be exactly same") but 1 for the transparent foreground,
whose alpha needs the layer model to the end. So the README's dog is one call:
prompt "a dog sitting in room, high quality", second prompt "room, high quality".
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import torch

from protocol import LayerRole, Method, Sampler

from ..model_set import ModelSet
from .denoise import StepCallback, no_progress
from .request import GenerationRequest, GenerationResult, MethodRunner
from .schedule import plan_schedule
from .sdxl_recipe import framing_of, run_layer_file, sample_layer_file
from .stages import img2img_source

_FG, _BG, _BLEND = LayerRole.FOREGROUND, LayerRole.BACKGROUND, LayerRole.BLENDED
SECOND_SAMPLER = Sampler.UNIPC
"""Step 2's sampler unless the request names one (the seed README's recipe)."""
SECOND_ENDING_STEPS = {Method.SDXL_FG_TO_BG: 0.5, Method.SDXL_BG_TO_FG: 1.0}
"""Step 2's Stop At unless the request gives one: the background's recipe stops at 0.5."""


@dataclass(frozen=True)
class SecondStep:
    """What step 2 of a one-click workflow runs with, defaults resolved."""

    prompt: str
    negative_prompt: str
    sampler: Sampler
    ending_step: float


def second_step(request: GenerationRequest) -> SecondStep:
    """Step 2's settings of a one-click request: its `second_*` fields, or the recipe's."""
    return SecondStep(
        prompt=request.prompt if request.second_prompt is None else request.second_prompt,
        negative_prompt=request.negative_prompt
        if request.second_negative_prompt is None
        else request.second_negative_prompt,
        sampler=request.second_sampler or SECOND_SAMPLER,
        ending_step=SECOND_ENDING_STEPS[request.method]
        if request.second_ending_step is None
        else request.second_ending_step,
    )


def _single_step(
    layer_file: str, output: LayerRole, transparent: bool, condition: tuple[LayerRole, ...]
) -> MethodRunner:
    def run(
        request: GenerationRequest, models: ModelSet, on_step: StepCallback = no_progress
    ) -> GenerationResult:
        # A transparent output can rework a foreground input (img2img), as the original's.
        source = img2img_source(models, request, framing_of(request)) if transparent else None
        return run_layer_file(
            request,
            models,
            on_step,
            layer_file=layer_file,
            output=output,
            transparent=transparent,
            condition=condition,
            source=source,
        )

    run.__doc__ = (
        f"{output.value} from {' + '.join(role.value for role in condition)} ({layer_file})"
    )
    return run


# The four released conditional models, as the table above lists them.
run_fg_to_blend = _single_step("layer_xl_fg2ble", _BLEND, False, (_FG,))
run_bg_to_blend = _single_step("layer_xl_bg2ble", _BLEND, False, (_BG,))
run_fg_blend_to_bg = _single_step("layer_xl_fgble2bg", _BG, False, (_FG, _BLEND))
run_bg_blend_to_fg = _single_step("layer_xl_bgble2fg", _FG, True, (_BG, _BLEND))


def _workflow(
    first: tuple[str, LayerRole], second: tuple[str, LayerRole, bool], doc: str
) -> MethodRunner:
    def run(
        request: GenerationRequest, models: ModelSet, on_step: StepCallback = no_progress
    ) -> GenerationResult:
        return _two_steps(request, models, on_step, first=first, second=second)

    run.__doc__ = doc
    return run


# The one-click workflows: (first file, the given layer), (second file, its layer, alpha).
run_fg_to_bg = _workflow(
    ("layer_xl_fg2ble", _FG),
    ("layer_xl_fgble2bg", _BG, False),
    "One click: a background for this foreground (and the blend).",
)
run_bg_to_fg = _workflow(
    ("layer_xl_bg2ble", _BG),
    ("layer_xl_bgble2fg", _FG, True),
    "One click: a transparent foreground for this background (and the blend).",
)


def _two_steps(
    request: GenerationRequest,
    models: ModelSet,
    on_step: StepCallback,
    first: tuple[str, LayerRole],
    second: tuple[str, LayerRole, bool],
) -> GenerationResult:
    first_file, given = first
    second_file, produced, transparent = second
    settings = second_step(request)
    # One progress bar over both steps: step 1 runs every result in batch_count passes,
    # step 2 one pass per result, each pass as many UNet calls as its sampler makes.
    config = models.base.scheduler_config
    first_calls = _calls(request, request.sampler, config)
    second_calls = _calls(request, settings.sampler, config)
    step_1_total = request.batch_count * first_calls
    total = step_1_total + request.image_count * second_calls

    def phase(done_before: int) -> StepCallback:
        def report(step: int, _: int, latents: torch.Tensor) -> None:
            on_step(done_before + step, total, latents)

        return report

    # 1. The blends, all results at once, with the request's sampler, at the generation
    #    size: step 2 takes each blend as the original's user drags it in, unresized.
    framing = framing_of(request)
    given_layer = framing.input_at_generation(request.inputs[given], request.resize_mode)
    blends, seeds = sample_layer_file(
        request,
        models,
        phase(0),
        framing=framing,
        layer_file=first_file,
        output=_BLEND,
        transparent=False,
        conditions=[given_layer],
    )
    # 2. Each result's layer from the given layer and its own blend, with step 2's
    #    prompts, sampler and Stop At.
    images = []
    for index, (blend, seed) in enumerate(zip(blends, seeds, strict=True)):
        single = replace(
            request,
            seed=seed,
            batch_size=1,
            batch_count=1,
            prompt=settings.prompt,
            negative_prompt=settings.negative_prompt,
            sampler=settings.sampler,
            ending_step=settings.ending_step,
        )
        (layer,), _ = sample_layer_file(
            single,
            models,
            phase(step_1_total + index * second_calls),
            framing=framing,
            layer_file=second_file,
            output=produced,
            transparent=transparent,
            conditions=[given_layer, blend],
        )
        images.append({produced: framing.to_request(layer), _BLEND: framing.to_request(blend)})
    return GenerationResult(images=images, seeds=seeds, generation_size=framing.generation_size)


def _calls(request: GenerationRequest, sampler: Sampler, scheduler_config: dict[str, Any]) -> int:
    """UNet calls of one pass of the request's steps with `sampler`: txt2img, or the img2img
    of a second pass (`request.refine`) at its strength."""
    schedule = plan_schedule(
        sampler,
        scheduler_config,
        request.steps,
        img2img=bool(request.refine),
        strength=request.denoise_strength,
    )
    return len(schedule.timesteps)
