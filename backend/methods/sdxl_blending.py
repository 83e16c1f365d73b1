"""SDXL layer methods: blending from a layer, a layer from it and the blending, and both in one go.

The four conditional files (layerdiffuse.md §4) see condition latents beside the sample:

| method   | condition       | produces                 |
|----------|-----------------|--------------------------|
| fg2ble   | foreground      | blended image            |
| bg2ble   | background      | blended image            |
| fgble2bg | foreground, blend | background             |
| bgble2fg | background, blend | foreground (transparent) |

The one-click workflows chain them: "background for this foreground" is fg2ble then
fgble2bg; "foreground into this background" is bg2ble then bgble2fg. The second step
runs with Euler a when the request asks for a DPM++ sampler, as the original's README
advises for these models ("change the sampler to Euler A or UniPC"); each result's
second step uses that result's blend and seed.
"""

from __future__ import annotations

from dataclasses import replace

import torch

from protocol import LayerRole, Sampler

from ..model_set import ModelSet
from .denoise import StepCallback, no_progress
from .request import GenerationRequest, GenerationResult, MethodRunner
from .sdxl_recipe import framing_of, run_layer_file, sample_layer_file

_FG, _BG, _BLEND = LayerRole.FOREGROUND, LayerRole.BACKGROUND, LayerRole.BLENDED
_DPM_SAMPLERS = (Sampler.DPMPP_2M_KARRAS, Sampler.DPMPP_2M_SDE_KARRAS)


def _single_step(
    layer_file: str, output: LayerRole, transparent: bool, condition: tuple[LayerRole, ...]
) -> MethodRunner:
    def run(
        request: GenerationRequest, models: ModelSet, on_step: StepCallback = no_progress
    ) -> GenerationResult:
        return run_layer_file(
            request,
            models,
            on_step,
            layer_file=layer_file,
            output=output,
            transparent=transparent,
            condition=condition,
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
    # Progress over both steps: step 1 runs every result in batch_count passes, step 2
    # one pass per result; every pass has the request's number of steps.
    passes = request.batch_count + request.image_count

    def phase(passes_before: int, passes_in_call: int) -> StepCallback:
        def report(step: int, total: int, latents: torch.Tensor) -> None:
            per_pass = total // passes_in_call
            on_step(passes_before * per_pass + step, passes * per_pass, latents)

        return report

    # 1. The blends, all results at once, with the request's sampler, at the generation
    #    size: step 2 takes each blend as the original's user drags it in, unresized.
    framing = framing_of(request)
    given_layer = framing.input_at_generation(request.inputs[given], request.resize_mode)
    blends, seeds = sample_layer_file(
        request,
        models,
        phase(0, request.batch_count),
        framing=framing,
        layer_file=first_file,
        transparent=False,
        conditions=[given_layer],
    )
    # 2. Each result's layer from the given layer and its own blend.
    sampler = Sampler.EULER_A if request.sampler in _DPM_SAMPLERS else request.sampler
    images = []
    for index, (blend, seed) in enumerate(zip(blends, seeds, strict=True)):
        single = replace(request, seed=seed, batch_size=1, batch_count=1, sampler=sampler)
        (layer,), _ = sample_layer_file(
            single,
            models,
            phase(request.batch_count + index, 1),
            framing=framing,
            layer_file=second_file,
            transparent=transparent,
            conditions=[given_layer, blend],
        )
        images.append({produced: framing.to_request(layer), _BLEND: framing.to_request(blend)})
    return GenerationResult(images=images, seeds=seeds, generation_size=framing.generation_size)
