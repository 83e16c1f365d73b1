"""What each generation parameter means and may be: one table for every side.

`GenerationParameters` (messages.py) declares each field and its default; `PARAMETERS`
adds what the field means and the values it may take. Everything that checks or shows a
parameter reads this table: the server refuses a request outside it (`check_parameters`,
wire code `invalid_request`), `layerdiffuse generate` checks each flag against it as the
flag is parsed (naming the flag, not the field), and the request table of
docs/protocol.md is generated from it (`parameter_table`), with a test that the two agree.

These ranges are the methods' own. The `Limits` a server advertises bound some of the
same values again, possibly tighter (`max_steps`, `max_images`, `max_image_side`); those
are checked first, as `limit_exceeded`.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import MISSING, dataclass, fields
from enum import Enum
from typing import Any, NoReturn

from .errors import InvalidParameter
from .messages import MAX_NAME_CHARS, MAX_TEXT_CHARS, GenerationParameters
from .methods import METHOD_SPECS, Hires, LayerRole, Method, NoiseSource, ResizeMode, Sampler

__all__ = [
    "MAX_INPUT_SIDE",
    "MAX_REQUEST_IMAGES",
    "PARAMETERS",
    "SECOND_STEP_FIELDS",
    "SECOND_STEP_METHODS",
    "ParameterSpec",
    "check_input_roles",
    "check_mask_size",
    "check_parameters",
    "parameter_table",
]

MAX_REQUEST_IMAGES = 64
"""Results of one request in all, batch_size × batch_count (`max_images` may be lower)."""

MAX_INPUT_SIDE = 4096
"""Pixels of the width or the height of an input layer."""

Label = Callable[[str], str]
"""How a message names a field, given its path: the field (`steps`), or one layer's part
of it (`inputs.foreground`, `layer_prompts.background`). The wire names the field
(`_wire_name`); the command line names the flag the user typed."""


def _wire_name(path: str) -> str:
    return path.partition(".")[0]


@dataclass(frozen=True)
class ParameterSpec:
    """One generation parameter: its meaning, its default and the values it may take.

    Attributes:
        name: the field of `GenerationParameters` (and of the wire's `request`).
        meaning: what it does, one short phrase.
        default: the value a request that leaves the field out gets (None: required).
        kind: "integer", "number" (an integer or a float), "text", "name" (a text of 1
            to `MAX_NAME_CHARS`), "boolean", "choice" (one of `choices`) or "layer
            prompts" ({role: text}).
        low / high: the inclusive range of an integer or a number.
        choices: the values a choice takes, in the protocol's order.
        nullable: null is a value too (its default): "the method's own".
    """

    name: str
    meaning: str
    default: Any
    kind: str
    low: float | None = None
    high: float | None = None
    choices: tuple[str, ...] = ()
    nullable: bool = False

    @property
    def allowed(self) -> str:
        """The values it may take, in words: `1..150`, `at most 4000 characters`."""
        if self.low is not None:
            return f"{self.low}..{self.high}"
        if self.kind == "text":
            return f"at most {MAX_TEXT_CHARS} characters"
        if self.kind == "name":
            return f"1 to {MAX_NAME_CHARS} characters"
        if self.kind == "boolean":
            return "true or false"
        if self.kind == "layer prompts":
            return f"the roles the method reads, at most {MAX_TEXT_CHARS} characters each"
        return ", ".join(self.choices)

    @property
    def shown_default(self) -> str:
        """The default as the doc and `--help` show it (`20`, `dpmpp_2m_karras`, `""`)."""
        if self.default is None and self.nullable:
            return "null"
        if isinstance(self.default, Enum):
            return str(self.default.value)
        if isinstance(self.default, bool):
            return "true" if self.default else "false"
        if isinstance(self.default, str):
            return f'"{self.default}"'
        if self.default == {}:
            return "{}"
        return str(self.default)

    def check(self, value: Any, label: Label = _wire_name) -> None:
        """Refuse a number outside the range, or a text over `MAX_TEXT_CHARS`.

        Raises:
            InvalidParameter: `"<label>: 0 outside 1..150"`, the field named by `label`.
        """
        if value is None and self.nullable:
            return
        if self.low is not None and self.high is not None:
            if isinstance(value, bool) or not isinstance(value, int | float):
                self._refuse(f"expected a number, got {type(value).__name__}", label)
            if self.kind == "integer" and not isinstance(value, int):
                self._refuse(f"expected an integer, got {value}", label)
            if not self.low <= value <= self.high:
                self._refuse(f"{value} outside {self.allowed}", label)
        elif self.kind == "text" and isinstance(value, str) and len(value) > MAX_TEXT_CHARS:
            self._refuse(f"{len(value)} characters exceed {MAX_TEXT_CHARS}", label)
        elif self.kind == "name" and isinstance(value, str):
            if not value:
                self._refuse("expected a name, got an empty text", label)
            if len(value) > MAX_NAME_CHARS:
                self._refuse(f"{len(value)} characters exceed {MAX_NAME_CHARS}", label)

    def _refuse(self, reason: str, label: Label) -> NoReturn:
        raise InvalidParameter(self.name, reason, shown_as=label(self.name))


def _integer(meaning: str, low: int, high: int) -> dict[str, Any]:
    return {"meaning": meaning, "kind": "integer", "low": low, "high": high}


def _number(meaning: str, low: float, high: float) -> dict[str, Any]:
    return {"meaning": meaning, "kind": "number", "low": low, "high": high}


def _choice(meaning: str, cls: type[Enum]) -> dict[str, Any]:
    return {"meaning": meaning, "kind": "choice", "choices": tuple(str(m.value) for m in cls)}


_SPECS: dict[str, dict[str, Any]] = {
    "method": _choice("the LayerDiffuse method (table below); the one required field", Method),
    "prompt": {"meaning": "the prompt", "kind": "text"},
    "negative_prompt": {"meaning": "the negative prompt", "kind": "text"},
    "layer_prompts": {
        "meaning": 'per-layer prompts: each becomes "⟨layer prompt⟩, ⟨prompt⟩" for its layer',
        "kind": "layer prompts",
    },
    "width": _integer("width the results come back at, in pixels", 8, 4096),
    "height": _integer("height the results come back at, in pixels", 8, 4096),
    "fit_to_native": {
        "meaning": "generate near the model's native area (512² SD1.5, 1024² SDXL) at the "
        "same aspect, then resize",
        "kind": "boolean",
    },
    "resize_mode": _choice(
        "how an input layer of another size is fitted to width × height", ResizeMode
    ),
    "seed": _integer("the first result's seed; result i uses seed + i", 0, 2**32 - 1),
    "steps": _integer("sampler steps", 1, 150),
    "cfg_scale": _number("classifier-free guidance scale", 1.0, 30.0),
    "sampler": _choice("the sampler (A1111's names)", Sampler),
    "batch_size": _integer("results diffused together", 1, MAX_REQUEST_IMAGES),
    "batch_count": _integer("batches one after another", 1, MAX_REQUEST_IMAGES),
    "weight": _number("strength of the SDXL layer models (the SD1.5 ones ignore it)", 0.0, 2.0),
    "ending_step": _number(
        '"Stop At": the fraction of the steps that use the layer model', 0.0, 1.0
    ),
    "denoise_strength": _number("img2img: how much of the source is re-noised", 0.0, 1.0),
    "noise_source": _choice(
        "where the starting noise is drawn: cpu, the same on every machine, or gpu, as "
        "A1111 draws it on an NVIDIA card (a CPU-only backend draws it on the CPU)",
        NoiseSource,
    ),
    "second_prompt": {
        "meaning": "sdxl_fg2bg / sdxl_bg2fg: the prompt of step 2, the layer from the blend; "
        "null: the prompt",
        "kind": "text",
    },
    "second_negative_prompt": {
        "meaning": "sdxl_fg2bg / sdxl_bg2fg: the negative prompt of step 2; null: the "
        "negative prompt",
        "kind": "text",
    },
    "second_sampler": _choice(
        "sdxl_fg2bg / sdxl_bg2fg: the sampler of step 2; null: unipc, as the original's "
        "recipes advise (not a DPM++ one)",
        Sampler,
    ),
    "second_ending_step": _number(
        'sdxl_fg2bg / sdxl_bg2fg: "Stop At" of step 2; null: 0.5 for the background (the '
        "original's recipe), 1 for the foreground",
        0.0,
        1.0,
    ),
    "hires": _choice(
        "a second pass at width × height for a request larger than the model's native area "
        "(the first pass runs near it): auto, above 1.2 × the native area; on, above it; off, "
        "one pass",
        Hires,
    ),
    "hires_strength": _number(
        "the second pass's denoising strength: how much of the first pass it re-noises",
        0.0,
        1.0,
    ),
    "lora": {
        "meaning": "a LoRA of the server's `capabilities.loras` (e.g. a few-step one), "
        "merged into the base model for the job; null: none",
        "kind": "name",
    },
    "lora_weight": _number("the LoRA's strength", 0.0, 2.0),
    "layers": _integer("split_layers: how many layers the picture is split into", 1, 10),
}

SECOND_STEP_FIELDS = (
    "second_prompt",
    "second_negative_prompt",
    "second_sampler",
    "second_ending_step",
)
"""The fields of step 2 of the one-click SDXL workflows; other methods take them null."""

SECOND_STEP_METHODS = (Method.SDXL_FG_TO_BG, Method.SDXL_BG_TO_FG)
"""The methods with a step 2: the one-click SDXL workflows."""


def _table() -> dict[str, ParameterSpec]:
    table = {}
    for field in fields(GenerationParameters):
        if field.default_factory is not MISSING:
            default = field.default_factory()
        else:
            default = None if field.default is MISSING else field.default
        nullable = field.default is None
        table[field.name] = ParameterSpec(
            name=field.name, default=default, nullable=nullable, **_SPECS[field.name]
        )
    return table


PARAMETERS: dict[str, ParameterSpec] = _table()
"""Every field of `GenerationParameters`, in its order, with its default and range."""


def check_parameters(parameters: Any, label: Label = _wire_name) -> None:
    """Check every parameter against the table and against the method.

    Args:
        parameters: a `GenerationParameters`, or anything with its fields (the backend's
            request); the codec has checked the fields' types.
        label: how a message names a field; the wire name by default.

    Raises:
        InvalidParameter: the first field at fault.
    """
    for name, spec in PARAMETERS.items():
        spec.check(getattr(parameters, name), label)
    count = parameters.batch_size * parameters.batch_count
    if count > MAX_REQUEST_IMAGES:
        reason = f"{count} images in all exceed the limit of {MAX_REQUEST_IMAGES}"
        raise InvalidParameter("batch_size", reason, shown_as=label("batch_size"))
    method: Method = parameters.method
    if method not in SECOND_STEP_METHODS:
        for name in SECOND_STEP_FIELDS:
            if getattr(parameters, name) is not None:
                others = " and ".join(m.value for m in SECOND_STEP_METHODS)
                reason = f"{method.value} has no step 2 (only {others} have)"
                raise InvalidParameter(name, reason, shown_as=label(name))
    for role, text in parameters.layer_prompts.items():
        if role not in METHOD_SPECS[method].layer_prompts:
            reason = f"{method.value} takes no {role.value} prompt"
        elif len(text) > MAX_TEXT_CHARS:
            reason = f"the {role.value} prompt's {len(text)} characters exceed {MAX_TEXT_CHARS}"
        else:
            continue
        shown_as = label(f"layer_prompts.{role.value}")
        raise InvalidParameter("layer_prompts", reason, shown_as=shown_as)


def check_input_roles(
    method: Method, roles: Collection[LayerRole], label: Label = _wire_name
) -> None:
    """Check that the input layers are those the method needs and takes.

    Args:
        method: the request's method.
        roles: the roles of the input layers given.
        label: how a message names an input (its path is `inputs.<role>`).

    Raises:
        InvalidParameter: `inputs: sd15_fg2bg needs a foreground layer` (or `takes no`).
    """
    spec = METHOD_SPECS[method]
    for role in spec.required_inputs:
        if role not in roles:
            reason = f"{method.value} needs a {role.value} layer"
            raise InvalidParameter("inputs", reason, shown_as=label(f"inputs.{role.value}"))
    for role in roles:
        if role not in spec.required_inputs and role not in spec.optional_inputs:
            reason = f"{method.value} takes no {role.value} layer"
            raise InvalidParameter("inputs", reason, shown_as=label(f"inputs.{role.value}"))


def check_mask_size(parameters: Any, width: int, height: int, label: Label = _wire_name) -> None:
    """Check that a mask input is at the request's size (it is not fitted: it is the
    selection of the very pixels the results cover).

    Args:
        parameters: a `GenerationParameters`, or anything with its `width` and `height`.
        width / height: the mask image's size.
        label: how a message names the input (its path is `inputs.mask`).

    Raises:
        InvalidParameter: `inputs: the mask is 100x80, the request 512x512`.
    """
    if (width, height) != (parameters.width, parameters.height):
        reason = (
            f"the mask is {width}x{height}, the request {parameters.width}x{parameters.height}"
            " (a mask is sent at the request's size)"
        )
        raise InvalidParameter("inputs", reason, shown_as=label("inputs.mask"))


def parameter_table() -> str:
    """The Markdown table of the `request` fields in docs/protocol.md."""
    rows = ["| field | type | default | allowed | meaning |", "|---|---|---|---|---|"]
    for spec in PARAMETERS.values():
        default = "–" if spec.default is None and not spec.nullable else f"`{spec.shown_default}`"
        if spec.name == "method":
            allowed = "a method of the table below"
        elif spec.kind == "choice":
            allowed = ", ".join(f"`{choice}`" for choice in spec.choices)
        else:
            allowed = spec.allowed
        kind = "object" if spec.kind == "layer prompts" else spec.kind.replace("text", "string")
        kind = "string" if spec.kind in ("choice", "name") else kind
        kind = f"{kind} or null" if spec.nullable else kind
        rows.append(f"| `{spec.name}` | {kind} | {default} | {allowed} | {spec.meaning} |")
    return "\n".join(rows)
