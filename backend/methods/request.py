"""The backend's validated form of a generation request, and what a run returns."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from protocol import (
    MAX_INPUT_SIDE,
    METHOD_SPECS,
    Hires,
    InvalidParameter,
    LayerRole,
    Method,
    NoiseSource,
    ResizeMode,
    Sampler,
    check_input_roles,
    check_mask_size,
    check_parameters,
)

from ..errors import InvalidRequest

if TYPE_CHECKING:
    from ..model_set import ModelSet
    from .denoise import StepCallback


@dataclass
class GenerationRequest:
    """Everything one generation needs; images are uint8 RGBA arrays (H, W, 4).

    Attributes:
        method: which LayerDiffuse method runs.
        prompt / negative_prompt: the main prompts.
        layer_prompts: extra per-layer prompts; each non-empty one becomes
            "<layer prompt>, <prompt>" for that layer's frame (SD1.5 multi-frame methods).
        inputs: input layers by role (condition images, the img2img source, and the
            mask: an image at the request's size whose alpha is the selection).
        width / height: the size results are returned at.
        fit_to_native: generate near the model's native area (for big canvases)
            instead of at the requested size rounded to multiples of 64.
        resize_mode: how inputs are fitted to the generation size and results back.
        seed: the first image's seed; image i uses seed + i.
        steps / cfg_scale / sampler: the sampling schedule.
        batch_size: results diffused together; batch_count: such passes one after another.
        weight: strength of the SDXL layer models (the SD1.5 models ignore it, as the original).
        ending_step: "Stop At": fraction of the schedule that uses the layer model.
        denoise_strength: for img2img, how much of the source is re-noised.
        noise_source: where the starting noise is drawn (CPU: the same on every machine).
        second_prompt / second_negative_prompt / second_sampler / second_ending_step:
            step 2 of the one-click SDXL workflows; None takes the workflow's default
            (`sdxl_blending`).
        hires / hires_strength: the second pass at the request's size (`hires`).
        lora / lora_weight: a LoRA of the model set's offer merged into the base model
            for the job (`ModelSet.use_lora`), e.g. a few-step one, and its strength.
        layers: `split_layers`: how many layers the picture is split into.
        refine: not on the wire: the layers of a first pass, by output role, at the
            request's size, that this run reworks (the second pass): each output starts
            from its own layer re-noised by `denoise_strength`, instead of from noise or
            the foreground input.
    """

    method: Method
    prompt: str = ""
    negative_prompt: str = ""
    layer_prompts: dict[LayerRole, str] = field(default_factory=dict)
    inputs: dict[LayerRole, np.ndarray] = field(default_factory=dict)
    width: int = 512
    height: int = 512
    fit_to_native: bool = False
    resize_mode: ResizeMode = ResizeMode.CROP_AND_RESIZE
    seed: int = 12345
    steps: int = 20
    cfg_scale: float = 7.0
    sampler: Sampler = Sampler.DPMPP_2M_KARRAS
    batch_size: int = 1
    batch_count: int = 1
    weight: float = 1.0
    ending_step: float = 1.0
    denoise_strength: float = 0.7
    noise_source: NoiseSource = NoiseSource.CPU
    second_prompt: str | None = None
    second_negative_prompt: str | None = None
    second_sampler: Sampler | None = None
    second_ending_step: float | None = None
    hires: Hires = Hires.AUTO
    hires_strength: float = 0.5
    lora: str | None = None
    lora_weight: float = 1.0
    layers: int = 4
    refine: dict[LayerRole, np.ndarray] = field(default_factory=dict)

    @property
    def image_count(self) -> int:
        return self.batch_size * self.batch_count

    def check(self) -> None:
        """Validate every field before any tensor exists (ranges: `protocol.PARAMETERS`).

        Raises:
            InvalidRequest: naming the field and the allowed range.
        """
        try:
            check_parameters(self)
            check_input_roles(self.method, self.inputs)
        except InvalidParameter as error:
            raise InvalidRequest(error.field, error.reason) from None
        for role, image in self.inputs.items():
            _check_image(f"inputs.{role.value}", image)
        mask = self.inputs.get(LayerRole.MASK)
        if mask is not None:
            try:
                check_mask_size(self, mask.shape[1], mask.shape[0])
            except InvalidParameter as error:
                raise InvalidRequest("inputs.mask", error.reason) from None
        outputs = METHOD_SPECS[self.method].outputs
        for role, image in self.refine.items():
            if role not in outputs:
                raise InvalidRequest("refine", f"{self.method.value} makes no {role.value} layer")
            if image.shape != (self.height, self.width, 4) or image.dtype != np.uint8:
                raise InvalidRequest(
                    "refine", f"expected ({self.height}, {self.width}, 4) uint8, got {image.shape}"
                )


@dataclass
class GenerationResult:
    """What a method returns: one dict of layers per image, at the requested size.

    Attributes:
        images: per result, its layers by role, (height, width, 4) uint8 straight RGBA;
            `split_layers`' role `layer` holds all of a result's layers as one
            (layers, height, width, 4) stack, bottom first.
        seeds: the seed of each result's first frame.
        generation_size: (width, height) the model ran at.
    """

    images: list[dict[LayerRole, np.ndarray]]
    seeds: list[int]
    generation_size: tuple[int, int]


MethodRunner = Callable[[GenerationRequest, "ModelSet", "StepCallback"], GenerationResult]
"""One method: request, models and a progress callback in, the results out."""


def _check_image(name: str, image: np.ndarray) -> None:
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8:
        raise InvalidRequest(name, "expected a uint8 image")
    if image.ndim != 3 or image.shape[2] != 4:
        raise InvalidRequest(name, f"expected (height, width, 4) RGBA, got shape {image.shape}")
    height, width = image.shape[:2]
    if not (1 <= width <= MAX_INPUT_SIDE and 1 <= height <= MAX_INPUT_SIDE):
        raise InvalidRequest(name, f"size {width}x{height} outside 1..{MAX_INPUT_SIDE}")
