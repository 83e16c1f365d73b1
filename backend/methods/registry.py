"""Which function runs each method, and the checks every request passes first."""

from __future__ import annotations

from collections.abc import Mapping

from protocol import METHOD_SPECS, LoRAInfo, Method, ModelFamily

from ..errors import InvalidRequest
from ..model_set import AnyModelSet
from . import (
    flux_transparent,
    matted,
    sd15_layered,
    sd15_transparent,
    sdxl_blending,
    sdxl_transparent,
    split_layers,
)
from .denoise import StepCallback, no_progress
from .hires import has_second_pass, run_two_passes
from .masking import apply_mask
from .request import GenerationRequest, GenerationResult, MethodRunner

METHOD_RUNNERS: dict[Method, MethodRunner] = {
    Method.SD15_TRANSPARENT: sd15_transparent.run,
    Method.SD15_JOINT: sd15_layered.run_joint,
    Method.SD15_FG_TO_BG: sd15_layered.run_fg_to_bg,
    Method.SD15_BG_TO_FG: sd15_layered.run_bg_to_fg,
    Method.SDXL_TRANSPARENT_ATTN: sdxl_transparent.run_attention,
    Method.SDXL_TRANSPARENT_CONV: sdxl_transparent.run_conv,
    Method.SDXL_FG_TO_BLEND: sdxl_blending.run_fg_to_blend,
    Method.SDXL_BG_TO_BLEND: sdxl_blending.run_bg_to_blend,
    Method.SDXL_FG_BLEND_TO_BG: sdxl_blending.run_fg_blend_to_bg,
    Method.SDXL_BG_BLEND_TO_FG: sdxl_blending.run_bg_blend_to_fg,
    Method.SDXL_FG_TO_BG: sdxl_blending.run_fg_to_bg,
    Method.SDXL_BG_TO_FG: sdxl_blending.run_bg_to_fg,
    Method.FLUX_TRANSPARENT: flux_transparent.run,
    Method.SPLIT_LAYERS: split_layers.run,
    Method.SD15_MATTED: matted.run_sd15,
    Method.SDXL_MATTED: matted.run_sdxl,
}


def available_methods() -> list[Method]:
    """The methods this backend runs, in the protocol's order."""
    return [method for method in Method if method in METHOD_RUNNERS]


def check_request(request: GenerationRequest, models: AnyModelSet | None = None) -> None:
    """Validate a request before any tensor exists; with `models`, against the loaded model too.

    Callers check without `models` before loading anything, so a bad request never
    waits for (or downloads) a model.

    Raises:
        InvalidRequest: naming the field at fault.
    """
    if request.method not in METHOD_RUNNERS:
        names = ", ".join(method.value for method in available_methods())
        raise InvalidRequest(
            "method", f"{request.method.value} is not available in this backend; available: {names}"
        )
    request.check()
    if models is None:
        return
    family = METHOD_SPECS[request.method].family
    if family != models.family:
        raise InvalidRequest(
            "method",
            f"{request.method.value} needs a {family.value} base model, "
            f"but {models.base.name} is {models.family.value}",
        )
    check_lora(request.lora, models.offered_loras, models.family, models.base.name)


def check_lora(
    name: str | None, offered: Mapping[str, LoRAInfo], family: ModelFamily, model_name: str
) -> None:
    """Check that a request's LoRA is one the model set offers, of the model's family.

    Raises:
        InvalidRequest: naming `lora`, with what is offered.
    """
    if name is None:
        return
    info = offered.get(name)
    if info is None:
        names = ", ".join(sorted(offered)) or "none"
        raise InvalidRequest(
            "lora", f"{name!r} is not a LoRA this backend offers; offered: {names}"
        )
    if info.family != family:
        raise InvalidRequest(
            "lora", f"{name} is a {info.family.value} LoRA, but {model_name} is {family.value}"
        )


def run_method(
    request: GenerationRequest, models: AnyModelSet, on_step: StepCallback = no_progress
) -> GenerationResult:
    """Check the request, then run its method, in two passes for a canvas larger than the
    native area (`hires`); a selection shapes the results."""
    check_request(request, models)
    try:
        models.use_lora(request.lora, request.lora_weight)
    except ValueError as error:
        reason = f"{request.lora} does not fit {models.base.name}: {error}"
        raise InvalidRequest("lora", reason) from error
    runner = METHOD_RUNNERS[request.method]
    if has_second_pass(request):
        return run_two_passes(runner, request, models, on_step)
    return apply_mask(request, runner(request, models, on_step))
