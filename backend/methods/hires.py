"""The second pass: a canvas larger than the model's native area comes back sharp.

A model generates well near its native area (512² SD1.5, 1024² SDXL); a 4096² layer made
there and scaled up is soft, and one generated at 4096² from noise repeats itself. So
(docs/protocol.md, "A second pass at the canvas's size"):

1. pass 1 runs the method near the native area, at the request's aspect (the size
   `fit_to_native` picks), and maps its results to the request's size;
2. pass 2 runs it again for each result at the request's size (rounded to multiples of
   64), as an img2img of pass 1: every output layer starts from its own pass-1 layer
   (`GenerationRequest.refine`) re-noised by `hires_strength`, a layer with alpha through
   the transparent encoder so that colour *and* alpha are refined and the transparent
   decoder draws the alpha at full size. Same inputs, prompts, mask and seed.

Large passes work in tiles where they would not fit (`ModelSet.tiling`): the UNet above
4 native areas, the VAE and the transparent decoder and encoder above a memory threshold.
Unlike the original extension's hires fix, which upscales the latent and decodes the
alpha from a mismatched one (its issues #71 and #119), the alpha here is re-encoded at
the target size with the image it belongs to.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch

from protocol import METHOD_SPECS, SECOND_STEP_METHODS, Hires, LayerRole, ModelFamily, Sampler

from ..model_set import ModelSet
from .denoise import StepCallback
from .masking import apply_mask
from .request import GenerationRequest, GenerationResult, MethodRunner
from .schedule import plan_schedule
from .sdxl_blending import second_step
from .sizing import AREA_TOLERANCE

NATIVE_AREAS = {
    ModelFamily.SD15: 512 * 512,
    ModelFamily.SDXL: 1024 * 1024,
    ModelFamily.FLUX: 1024 * 1024,
}
"""Pixels of each family's native generation."""


def has_second_pass(request: GenerationRequest) -> bool:
    """Whether a request runs in two passes: `hires` on above the native area, auto above
    1.2 × it, off never; FLUX's method and a split run in one (a second pass is made for
    SD's)."""
    family = METHOD_SPECS[request.method].family
    if family in (ModelFamily.FLUX, ModelFamily.QWEN_LAYERED):
        return False
    native = NATIVE_AREAS[family]
    area = request.width * request.height
    if request.hires is Hires.ON:
        return area > native
    if request.hires is Hires.AUTO:
        return area > native * (1 + AREA_TOLERANCE)
    return False


def run_two_passes(
    runner: MethodRunner,
    request: GenerationRequest,
    models: ModelSet,
    on_step: StepCallback,
) -> GenerationResult:
    """Pass 1 near the native area, then pass 2 at the request's size for each result.

    Progress counts both passes' UNet calls as one job.
    """
    first_request = replace(request, fit_to_native=True)
    first_calls = planned_calls(first_request, models)
    second_calls = planned_calls(_second(request, {}, request.seed), models, second_pass=True)
    total = first_calls + request.image_count * second_calls

    def after(done: int) -> StepCallback:
        def report(step: int, _: int, latents: torch.Tensor) -> None:
            on_step(min(done + step, total), total, latents)

        return report

    # 1. Pass 1 near the native area; results mapped to the request's size.
    first = apply_mask(first_request, runner(first_request, models, after(0)))
    # 2. Pass 2 per result, from its own layers, with its own seed.
    images = []
    generation_size = first.generation_size
    for index, (layers, seed) in enumerate(zip(first.images, first.seeds, strict=True)):
        second = _second(request, layers, seed)
        result = runner(second, models, after(first_calls + index * second_calls))
        images.append(apply_mask(second, result).images[0])
        generation_size = result.generation_size
    return GenerationResult(images=images, seeds=first.seeds, generation_size=generation_size)


def _second(
    request: GenerationRequest, layers: dict[LayerRole, np.ndarray], seed: int
) -> GenerationRequest:
    """Pass 2 of one result: its pass-1 layers to refine, its seed, the hires strength."""
    return replace(
        request,
        refine=dict(layers),
        seed=seed,
        batch_size=1,
        batch_count=1,
        denoise_strength=request.hires_strength,
        fit_to_native=False,
    )


def planned_calls(
    request: GenerationRequest, models: ModelSet, *, second_pass: bool = False
) -> int:
    """The UNet calls a run of `request` makes (what its progress counts).

    Each pass of `steps` is counted as its schedule runs it: txt2img, or img2img (a
    second pass; the foreground input of a method that reworks one) at its strength.
    The one-click workflows make step 1's passes, then one step-2 pass per result.

    Args:
        second_pass: count it as a second pass (img2img), whatever its `refine` holds.
    """
    config = models.base.scheduler_config
    spec = METHOD_SPECS[request.method]
    second_pass = second_pass or bool(request.refine)
    reworks = (
        LayerRole.FOREGROUND in request.inputs and LayerRole.FOREGROUND in spec.optional_inputs
    )
    img2img = second_pass or (reworks and request.method not in SECOND_STEP_METHODS)

    def calls(sampler: Sampler, img2img: bool) -> int:
        schedule = plan_schedule(
            sampler,
            config,
            request.steps,
            img2img=img2img,
            strength=request.denoise_strength,
        )
        return len(schedule.timesteps)

    if request.method in SECOND_STEP_METHODS:
        step_2 = second_step(request).sampler
        first = request.batch_count * calls(request.sampler, img2img)
        return first + request.image_count * calls(step_2, second_pass)
    return request.batch_count * calls(request.sampler, img2img)
