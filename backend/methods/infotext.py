"""Generation parameters as A1111/Forge write them into a PNG's `parameters` text chunk.

The key names and the method label are the original extension's, so tools that read
A1111 infotexts (and people comparing with the seed README's sanity checks) can read ours.
"""

from __future__ import annotations

import json

from protocol import METHOD_SPECS, SECOND_STEP_METHODS, LayerRole, Method, NoiseSource

from .hires import has_second_pass
from .request import GenerationRequest

VERSION = "krita-layerdiffuse 0.1.0"
MATTED_METHODS = (Method.SD15_MATTED, Method.SDXL_MATTED)
MATTED_NOTE = "generated on neutral gray without a layer model, then matted"
"""The infotext's `layerdiffusion_fallback` of a matted layer."""
_LAYER_PROMPT_KEYS = {
    LayerRole.FOREGROUND: "layerdiffusion_fg_additional_prompt",
    LayerRole.BACKGROUND: "layerdiffusion_bg_additional_prompt",
    LayerRole.BLENDED: "layerdiffusion_blend_additional_prompt",
}
_IMAGE_KEYS = {
    LayerRole.FOREGROUND: "layerdiffusion_fg_image",
    LayerRole.BACKGROUND: "layerdiffusion_bg_image",
    LayerRole.BLENDED: "layerdiffusion_blend_image",
}


def format_parameters(
    request: GenerationRequest, seed: int, model_name: str, generation_size: tuple[int, int]
) -> str:
    """The A1111-style parameters text of one result.

    Args:
        request: what was asked.
        seed: this result's seed.
        model_name: the base model's name.
        generation_size: (width, height) the model ran at.

    Returns:
        Prompt line, "Negative prompt: …" line, and the "Key: value, …" line.
    """
    spec = METHOD_SPECS[request.method]
    width, height = generation_size
    if request.method is Method.SPLIT_LAYERS:
        return _split_parameters(request, seed, model_name, generation_size)
    fields: list[tuple[str, object]] = [("Steps", request.steps)]
    if spec.family.value == "flux":  # Forge's FLUX fields: guidance embedded, one pass
        fields += [
            ("Sampler", "Euler"),
            ("Schedule type", "Simple"),
            ("CFG scale", "1"),
            ("Distilled CFG Scale", _number(request.cfg_scale)),
        ]
    else:
        fields += [("Sampler", request.sampler.label), ("CFG scale", _number(request.cfg_scale))]
    fields += [
        ("Seed", seed),
        ("Size", f"{width}x{height}"),
        ("Model", model_name),
    ]
    if LayerRole.FOREGROUND in request.inputs and LayerRole.FOREGROUND in spec.optional_inputs:
        fields.append(("Denoising strength", _number(request.denoise_strength)))
    if has_second_pass(request):  # A1111's hires fix writes its resize and strength
        fields.append(("Hires resize", f"{request.width}x{request.height}"))
        fields.append(("Hires strength", _number(request.hires_strength)))
    if request.lora is not None and request.lora_weight != 0:
        # A1111 names a LoRA in the prompt (<lora:name:weight>); ours is a field.
        fields.append(("Lora", f"{request.lora}: {_number(request.lora_weight)}"))
    if request.noise_source is NoiseSource.CPU:
        fields.append(("RNG", "CPU"))  # A1111 writes it when not its default, GPU
    fields += [
        ("layerdiffusion_enabled", request.method not in MATTED_METHODS),
        ("layerdiffusion_method", spec.label),
        ("layerdiffusion_weight", _number(request.weight)),
        ("layerdiffusion_ending_step", _number(request.ending_step)),
    ]
    fields += [(key, role in request.inputs) for role, key in _IMAGE_KEYS.items()]
    if LayerRole.MASK in request.inputs:
        fields.append(("layerdiffusion_mask", True))  # ours: a selection shaped it
    if request.method in MATTED_METHODS:
        fields.append(("layerdiffusion_fallback", MATTED_NOTE))
    fields.append(("layerdiffusion_resize_mode", request.resize_mode.label))
    if spec.family.value == "sd15":
        fields += [
            (key, request.layer_prompts.get(role, "")) for role, key in _LAYER_PROMPT_KEYS.items()
        ]
    if request.method in SECOND_STEP_METHODS:
        from .sdxl_blending import second_step  # the one-click workflows' step 2, resolved

        second = second_step(request)
        fields += [
            ("layerdiffusion_second_prompt", second.prompt),
            ("layerdiffusion_second_negative_prompt", second.negative_prompt),
            ("layerdiffusion_second_sampler", second.sampler.label),
            ("layerdiffusion_second_ending_step", _number(second.ending_step)),
        ]
    fields.append(("Version", VERSION))
    settings = ", ".join(f"{key}: {_quote(value)}" for key, value in fields)
    return f"{request.prompt}\nNegative prompt: {request.negative_prompt}\n{settings}"


def _split_parameters(
    request: GenerationRequest, seed: int, model_name: str, generation_size: tuple[int, int]
) -> str:
    """A split's parameters: flow matching with true CFG, its layer count, no LayerDiffuse."""
    width, height = generation_size
    fields: list[tuple[str, object]] = [
        ("Steps", request.steps),
        ("Sampler", "Euler"),
        ("Schedule type", "Simple"),
        ("True CFG scale", _number(request.cfg_scale)),
        ("Seed", seed),
        ("Size", f"{width}x{height}"),
        ("Model", model_name),
        ("Split layers", request.layers),
    ]
    if LayerRole.MASK in request.inputs:
        fields.append(("Split selection", True))
    fields.append(("Version", VERSION))
    settings = ", ".join(f"{key}: {_quote(value)}" for key, value in fields)
    return f"{request.prompt}\nNegative prompt: {request.negative_prompt}\n{settings}"


def _number(value: float) -> str:
    return f"{value:g}"


def _quote(value: object) -> str:
    text = str(value)
    # A1111 JSON-quotes values that would break its "key: value, " parsing.
    if "," in text or ":" in text or "\n" in text:
        return json.dumps(text, ensure_ascii=False)
    return text
