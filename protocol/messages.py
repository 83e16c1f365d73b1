"""The messages of the protocol: one frozen dataclass per `type`, and their parts.

`protocol.codec` is the only code that turns these into JSON and back; it checks types,
shapes and the string bounds below. Ranges that depend on the method or the model
(cfg scale, seed, sizes that fit a model) are the server's to check (`invalid_request`);
the ranges the `Limits` set are checked by `check_limits`, on both sides.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import ClassVar

from .errors import ErrorCode, LimitExceeded, ProtocolError
from .images import ImageRef, PixelFormat
from .limits import Limits
from .methods import Hires, LayerRole, Method, ModelFamily, NoiseSource, ResizeMode, Sampler

__all__ = [
    "MAX_JOB_ID_CHARS",
    "MAX_NAME_CHARS",
    "MAX_TEXT_CHARS",
    "Accepted",
    "Cancel",
    "Capabilities",
    "Done",
    "Error",
    "ErrorInfo",
    "GenerationParameters",
    "Hello",
    "JobStatus",
    "LayerImage",
    "LoRAInfo",
    "Message",
    "ModelInfo",
    "Progress",
    "Result",
    "Submit",
    "Welcome",
]

MAX_JOB_ID_CHARS = 128
"""Characters of a job id (non-empty, chosen by the client)."""

MAX_NAME_CHARS = 256
"""Characters of a client, server or model name and of a session id."""

MAX_TEXT_CHARS = 4000
"""Characters of a prompt, a layer prompt or an error message."""


class JobStatus(str, Enum):
    """How a job ended."""

    COMPLETED = "completed"
    CANCELLED = "cancelled"
    FAILED = "failed"


@dataclass(frozen=True)
class GenerationParameters:
    """The generation parameters of a `submit` (the wire form of the backend's request).

    Attributes:
        method: which LayerDiffuse method runs (the only field without a default).
        prompt / negative_prompt: the main prompts.
        layer_prompts: extra per-layer prompts of the multi-frame methods.
        width / height: pixels the results come back at.
        fit_to_native: generate near the model's native area instead of at the size.
        resize_mode: how inputs are fitted to the generation size and results back.
        seed: the first result's seed; result i uses seed + i.
        steps / cfg_scale / sampler: the sampling schedule.
        batch_size: results diffused together; batch_count: such passes in a row.
        weight: strength of the SDXL layer models.
        ending_step: fraction of the schedule that uses the layer model.
        denoise_strength: for img2img, how much of the source is re-noised.
        noise_source: where the starting noise is drawn (since 1.1).
        second_prompt / second_negative_prompt / second_sampler / second_ending_step:
            step 2 of the one-click SDXL workflows (`sdxl_fg2bg`, `sdxl_bg2fg`); None
            takes the workflow's default (since 1.1).
        hires: whether a request larger than the native area gets a second pass at its
            size (since 1.1).
        hires_strength: how much of the first pass the second re-noises (since 1.1).
        lora: a LoRA the server offers (`Capabilities.loras`), merged into the base model
            for this job, e.g. a distilled few-step LoRA; None: none (since 1.2).
        lora_weight: the LoRA's strength (since 1.2).
        layers: `split_layers`: how many layers the picture is split into (since 1.3).
    """

    method: Method
    prompt: str = ""
    negative_prompt: str = ""
    layer_prompts: dict[LayerRole, str] = field(default_factory=dict)
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

    def check_limits(self, limits: Limits) -> None:
        """Check the parameters the limits bound: steps, result count, result size.

        Raises:
            LimitExceeded: naming the field, the value and the limit.
        """
        if self.steps > limits.max_steps:
            raise LimitExceeded(
                f"request.steps: {self.steps} exceeds the limit of {limits.max_steps}"
            )
        count = self.batch_size * self.batch_count
        if count > limits.max_images:
            raise LimitExceeded(
                f"request: {self.batch_size} x {self.batch_count} = {count} images "
                f"exceed the limit of {limits.max_images}"
            )
        for name, side in (("width", self.width), ("height", self.height)):
            if side > limits.max_image_side:
                raise LimitExceeded(
                    f"request.{name}: {side} exceeds the limit of {limits.max_image_side}"
                )
        pixels = self.width * self.height
        if pixels > limits.max_image_pixels:
            raise LimitExceeded(
                f"request: {self.width}x{self.height} is {pixels} pixels, "
                f"over the limit of {limits.max_image_pixels}"
            )


@dataclass(frozen=True)
class LayerImage:
    """One layer of an input or a result: its role and its announced image."""

    role: LayerRole
    image: ImageRef


@dataclass(frozen=True)
class ModelInfo:
    """The model the server runs: a name, its family, and whether it is the demo set.

    `warning` (since 1.3): why LayerDiffuse is expected to fail on this model (a
    checkpoint of a family it was not trained for, e.g. Illustrious-XL), in a sentence
    for the painter; a client then offers the family's matted method. Null: none known.
    """

    name: str
    family: ModelFamily
    demo: bool
    warning: str | None = None


@dataclass(frozen=True)
class LoRAInfo:
    """A LoRA the server offers (since 1.2), with the settings it is made for.

    Attributes:
        name: what a request's `lora` names.
        family: the base model family it fits; a request on another family is refused.
        label: shown to the painter, e.g. "Hyper-SD 8 steps".
        sampler / steps / cfg_scale / weight: what a client sets when the painter picks
            it (a distilled LoRA is made for few steps and low guidance); null for a
            LoRA without such advice (a style LoRA from the server's folder).
    """

    name: str
    family: ModelFamily
    label: str
    sampler: Sampler | None = None
    steps: int | None = None
    cfg_scale: float | None = None
    weight: float = 1.0


@dataclass(frozen=True)
class Capabilities:
    """What the server can do; a client offers only these.

    `loras` (since 1.2) are the LoRAs a request may name; a 1.1 server sends none.
    """

    methods: tuple[Method, ...]
    families: tuple[ModelFamily, ...]
    samplers: tuple[Sampler, ...]
    resize_modes: tuple[ResizeMode, ...]
    formats: tuple[PixelFormat, ...]
    loras: tuple[LoRAInfo, ...] = ()


@dataclass(frozen=True)
class ErrorInfo:
    """Why a job failed: a wire code and a short message."""

    code: ErrorCode
    message: str


@dataclass(frozen=True)
class Hello:
    """Client → server, first: its version, its name, a session to resume or None."""

    protocol: tuple[int, int]
    client: str
    session: str | None = None
    type: ClassVar[str] = "hello"


@dataclass(frozen=True)
class Welcome:
    """Server → client, in answer to `hello`: what the server is, has and allows."""

    protocol: tuple[int, int]
    server: str
    session: str
    model: ModelInfo
    capabilities: Capabilities
    limits: Limits
    type: ClassVar[str] = "welcome"


@dataclass(frozen=True)
class Submit:
    """Client → server: a job; its input images follow as binary frames, in order.

    Attributes:
        job: the client's id for it, unique among the session's unfinished jobs.
        request: the generation parameters.
        inputs: the input layers; no two with the same role or image id.
        result_format: the format results come back in.
        previews: whether progress messages carry a preview image.
    """

    job: str
    request: GenerationParameters
    inputs: tuple[LayerImage, ...] = ()
    result_format: PixelFormat = PixelFormat.BGRA8
    previews: bool = True
    type: ClassVar[str] = "submit"

    def check_limits(self, limits: Limits) -> None:
        """Check the request and every input image against the limits.

        Raises:
            LimitExceeded: too many inputs, or a request or image over a limit.
            InvalidField: an image reference that does not match itself.
        """
        if len(self.inputs) > limits.max_inputs:
            raise LimitExceeded(
                f"inputs: {len(self.inputs)} images exceed the limit of {limits.max_inputs}",
                job=self.job,
            )
        try:
            self.request.check_limits(limits)
            for layer in self.inputs:
                layer.image.check(limits)
        except ProtocolError as exc:
            exc.job = self.job
            raise


@dataclass(frozen=True)
class Accepted:
    """Server → client: the job is queued; `position` 0 runs next."""

    job: str
    position: int
    type: ClassVar[str] = "accepted"


@dataclass(frozen=True)
class Progress:
    """Server → client: a sampler step finished; an RGBA8 preview may follow."""

    job: str
    step: int
    total: int
    preview: ImageRef | None = None
    type: ClassVar[str] = "progress"


@dataclass(frozen=True)
class Result:
    """Server → client: one result (`index` from 0) and its layers, whose frames follow."""

    job: str
    index: int
    seed: int
    layers: tuple[LayerImage, ...]
    type: ClassVar[str] = "result"


@dataclass(frozen=True)
class Done:
    """Server → client: the job ended; `error` is given exactly when it failed."""

    job: str
    status: JobStatus
    error: ErrorInfo | None = None
    type: ClassVar[str] = "done"


@dataclass(frozen=True)
class Cancel:
    """Client → server: end the job (queued: at once; running: within one step)."""

    job: str
    type: ClassVar[str] = "cancel"


@dataclass(frozen=True)
class Error:
    """Server → client: something a frame did went wrong; `job` when about one job."""

    code: ErrorCode
    message: str
    job: str | None = None
    type: ClassVar[str] = "error"


Message = Hello | Welcome | Submit | Accepted | Progress | Result | Done | Cancel | Error
"""Any of the nine messages."""
