"""Messages to JSON text and back: the only code that knows the wire form of a message.

`decode_message` checks, in this order: the text's length against
`limits.max_text_bytes` (before parsing), that it is JSON and an object, its `type`,
then every field: unknown fields, types (a bool is not an integer; a number field takes
integers too), enum values (by value), string bounds, nested objects and lists, and the
few rules that tie fields together (one `error` exactly when a `done` failed, no two
layers of one role). Each error names the field path (`request.steps`,
`inputs[0].image.width`) and the value; one about a message that names a readable job
carries that `job`.

`encode_message` runs the same checks over what it encodes, so a message one side can
encode the other can decode.

Versions: a `hello` or `welcome` is read `protocol` first; another major version raises
`UnsupportedVersion` whatever else the message holds, and a newer minor version lets
the rest of that message carry fields and capability values this side does not know.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import MISSING, dataclass, fields, is_dataclass
from enum import Enum
from typing import Any, TypeVar

from .errors import (
    BadMessage,
    ErrorCode,
    InvalidField,
    LimitExceeded,
    MissingField,
    ProtocolError,
    UnknownType,
    describe,
)
from .images import MAX_IMAGE_ID_CHARS, ImageRef, PixelFormat
from .limits import DEFAULT_LIMITS, Limits
from .messages import (
    MAX_JOB_ID_CHARS,
    MAX_NAME_CHARS,
    MAX_TEXT_CHARS,
    Accepted,
    Cancel,
    Capabilities,
    Done,
    Error,
    ErrorInfo,
    GenerationParameters,
    Hello,
    JobStatus,
    LayerImage,
    LoRAInfo,
    Message,
    ModelInfo,
    Progress,
    Result,
    Submit,
    Welcome,
)
from .methods import Hires, LayerRole, Method, ModelFamily, NoiseSource, ResizeMode, Sampler
from .version import check_compatible, is_newer_minor

__all__ = ["MESSAGE_TYPES", "decode_message", "encode_message"]

MESSAGE_TYPES: dict[str, type[Message]] = {
    cls.type: cls
    for cls in (Hello, Welcome, Submit, Accepted, Progress, Result, Done, Cancel, Error)
}
"""The type-tag registry: each wire `type` and its class."""

_INT_RANGE = (-(2**63), 2**63 - 1)
_MAX_INT_DIGITS = 40  # a sign and digits; anything longer is out of range anyway

_E = TypeVar("_E", bound=Enum)
_Reader = Callable[[Any, str, "_Context"], Any]


@dataclass(frozen=True)
class _Context:
    allow_unknown: bool


def encode_message(message: Message) -> str:
    """The compact JSON text of a message.

    Args:
        message: one of the nine message dataclasses.

    Returns:
        The text, with every field (defaults included) and enum values as strings.

    Raises:
        TypeError: `message` is not a message.
        ProtocolError: a field `decode_message` would refuse (`InvalidField`, ...),
            e.g. a prompt over 4000 characters or a float that is not finite.
    """
    cls = type(message)
    tag = getattr(cls, "type", None)
    if not isinstance(tag, str) or MESSAGE_TYPES.get(tag) is not cls:
        raise TypeError(f"not a message: {cls.__name__}")
    data = {"type": cls.type, **_to_wire(message)}
    _read_message(data, _Context(allow_unknown=False))
    return json.dumps(data, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def decode_message(
    text: str | bytes,
    *,
    allow_unknown_fields: bool = False,
    limits: Limits = DEFAULT_LIMITS,
) -> Message:
    """Parse and check one text frame.

    Args:
        text: the frame, as text or UTF-8 bytes.
        allow_unknown_fields: ignore unknown fields (the peer has a newer minor version).
        limits: `max_text_bytes` bounds the text, checked before parsing.

    Returns:
        The message.

    Raises:
        LimitExceeded: the text is over `limits.max_text_bytes`.
        BadMessage: not UTF-8, not JSON, or not an object.
        MissingField: no `type`, or a required field absent.
        UnknownType: a `type` that names no message.
        InvalidField: a field of the wrong type or value, or an unknown field.
        UnsupportedVersion: a `hello` or `welcome` of another major version.
    """
    data = _parse(text, limits.max_text_bytes)
    job = data.get("job")
    try:
        return _read_message(data, _Context(allow_unknown=allow_unknown_fields))
    except ProtocolError as exc:
        if exc.job is None and _is_job_id(job):
            exc.job = job
        raise


def _parse(text: str | bytes, max_bytes: int) -> dict[str, Any]:
    if isinstance(text, str):
        if len(text) > max_bytes:
            raise LimitExceeded(
                f"text frame of {len(text)} characters exceeds the limit of {max_bytes} bytes"
            )
        if 4 * len(text) > max_bytes:
            size = len(text.encode("utf-8", "surrogatepass"))
            if size > max_bytes:
                raise LimitExceeded(
                    f"text frame of {size} bytes exceeds the limit of {max_bytes} bytes"
                )
    else:
        if len(text) > max_bytes:
            raise LimitExceeded(
                f"text frame of {len(text)} bytes exceeds the limit of {max_bytes} bytes"
            )
        try:
            text = bytes(text).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise BadMessage(f"not valid UTF-8: {exc.reason} at byte {exc.start}") from None
    try:
        data = json.loads(text, parse_constant=_refuse_constant, parse_int=_parse_int)
    except RecursionError:
        raise BadMessage("not valid JSON: nested too deeply") from None
    except _Refused as exc:
        raise BadMessage(f"not valid JSON: {exc}") from None
    except ValueError as exc:
        reason = str(exc)
        raise BadMessage(f"not valid JSON: {reason[:1].lower()}{reason[1:]}") from None
    if not isinstance(data, dict):
        raise BadMessage(f"expected a JSON object, got {describe(data)}")
    return data


class _Refused(ValueError):
    """A number JSON has no such thing as, or one too long to be worth converting."""


def _refuse_constant(name: str) -> None:
    raise _Refused(f"{name} is not allowed")  # NaN, Infinity, -Infinity


def _parse_int(digits: str) -> int:
    if len(digits) > _MAX_INT_DIGITS:
        raise _Refused(f"an integer of {len(digits)} digits")
    return int(digits)


def _read_message(data: dict[str, Any], context: _Context) -> Message:
    if "type" not in data:
        raise MissingField("message: missing field 'type'")
    tag = data["type"]
    if not isinstance(tag, str):
        raise InvalidField(f"type: expected a string, got {describe(tag)}")
    cls = MESSAGE_TYPES.get(tag)
    if cls is None:
        raise UnknownType(f"unknown message type {describe(tag)}")
    if cls in (Hello, Welcome) and "protocol" in data:
        version = _read_version(data["protocol"], "protocol", context)
        check_compatible(version)
        if is_newer_minor(version):
            context = _Context(allow_unknown=True)
    message: Message = _read_object(cls, data, "", context, where=tag, skip=("type",))
    _check_message(message)
    return message


def _check_message(message: Message) -> None:
    if isinstance(message, Done):
        if message.status is JobStatus.FAILED and message.error is None:
            raise MissingField("done: missing field 'error' (the job failed)")
        if message.status is not JobStatus.FAILED and message.error is not None:
            raise InvalidField(f"error: a {message.status.value} job carries no error")
    elif isinstance(message, Progress) and message.step > message.total:
        raise InvalidField(f"step: {message.step} exceeds total {message.total}")
    elif isinstance(message, Result):
        for index, layer in enumerate(message.layers):
            if layer.role is LayerRole.MASK:
                raise InvalidField(f"layers[{index}].role: a mask is an input, never a result")


# -- objects -------------------------------------------------------------------------


def _read_object(
    cls: type,
    value: Any,
    path: str,
    context: _Context,
    *,
    where: str | None = None,
    skip: tuple[str, ...] = (),
) -> Any:
    where = where or path
    if not isinstance(value, dict):
        raise InvalidField(f"{path}: expected an object, got {describe(value)}")
    readers = _READERS[cls]
    if not context.allow_unknown:
        for key in value:
            if key not in readers and key not in skip:
                raise InvalidField(f"{where}: unknown field {describe(key)}")
    arguments = {}
    for field in fields(cls):
        if field.name in value:
            arguments[field.name] = readers[field.name](
                value[field.name], _join(path, field.name), context
            )
        elif field.default is MISSING and field.default_factory is MISSING:
            raise MissingField(f"{where}: missing field '{field.name}'")
    return cls(**arguments)


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def _object(cls: type) -> _Reader:
    return lambda value, path, context: _read_object(cls, value, path, context)


def _optional(reader: _Reader) -> _Reader:
    return lambda value, path, context: None if value is None else reader(value, path, context)


# -- scalars -------------------------------------------------------------------------


def _read_int(value: Any, path: str, context: _Context) -> int:
    if type(value) is not int or not _INT_RANGE[0] <= value <= _INT_RANGE[1]:
        raise InvalidField(f"{path}: expected an integer, got {describe(value)}")
    return value


def _at_least(low: int) -> _Reader:
    def read(value: Any, path: str, context: _Context) -> int:
        number = _read_int(value, path, context)
        if number < low:
            raise InvalidField(f"{path}: expected an integer of at least {low}, got {number}")
        return number

    return read


def _read_float(value: Any, path: str, context: _Context) -> float:
    if type(value) is int and _INT_RANGE[0] <= value <= _INT_RANGE[1]:
        return float(value)
    if type(value) is not float or not math.isfinite(value):
        raise InvalidField(f"{path}: expected a number, got {describe(value)}")
    return value


def _read_bool(value: Any, path: str, context: _Context) -> bool:
    if type(value) is not bool:
        raise InvalidField(f"{path}: expected true or false, got {describe(value)}")
    return value


def _string(max_chars: int, *, empty: bool = True) -> _Reader:
    def read(value: Any, path: str, context: _Context) -> str:
        if not isinstance(value, str):
            raise InvalidField(f"{path}: expected a string, got {describe(value)}")
        if not value and not empty:
            raise InvalidField(f"{path}: expected a non-empty string")
        if len(value) > max_chars:
            raise InvalidField(f"{path}: {len(value)} characters exceed the limit of {max_chars}")
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise InvalidField(f"{path}: not valid unicode (a lone surrogate)") from None
        return value

    return read


def _is_job_id(value: Any) -> bool:
    """Whether a raw `job` can be attached to an error (and so sent back)."""
    try:
        _job(value, "job", _Context(allow_unknown=False))
    except InvalidField:
        return False
    return True


def _enum(cls: type[_E]) -> _Reader:
    def read(value: Any, path: str, context: _Context) -> _E:
        if isinstance(value, str):
            for member in cls:
                if member.value == value:
                    return member
        allowed = ", ".join(member.value for member in cls)
        raise InvalidField(f"{path}: expected one of {allowed}, got {describe(value)}")

    return read


def _read_version(value: Any, path: str, context: _Context) -> tuple[int, int]:
    if (
        not isinstance(value, list)
        or len(value) != 2
        or not all(type(part) is int and 0 <= part <= _INT_RANGE[1] for part in value)
    ):
        raise InvalidField(f"{path}: expected [major, minor], got {describe(value)}")
    return value[0], value[1]


# -- lists and maps ------------------------------------------------------------------


def _list(value: Any, path: str) -> list[Any]:
    if not isinstance(value, list):
        raise InvalidField(f"{path}: expected a list, got {describe(value)}")
    return value


def _enum_tuple(cls: type[_E]) -> _Reader:
    """A list of enum values; a newer-minor peer's values this side lacks are dropped."""
    read_member = _enum(cls)
    known = {member.value for member in cls}

    def read(value: Any, path: str, context: _Context) -> tuple[_E, ...]:
        items = _list(value, path)
        return tuple(
            read_member(item, f"{path}[{index}]", context)
            for index, item in enumerate(items)
            if not (context.allow_unknown and isinstance(item, str) and item not in known)
        )

    return read


def _layers(*, at_least: int, stack: bool = False) -> _Reader:
    """A list of layers, no two with the same role or image id; with `stack` (a result)
    any number of `layer` ones: a split's layers, bottom first."""
    read_layer = _object(LayerImage)

    def read(value: Any, path: str, context: _Context) -> tuple[LayerImage, ...]:
        items = _list(value, path)
        if len(items) < at_least:
            raise InvalidField(f"{path}: expected at least {at_least} layer")
        layers = tuple(
            read_layer(item, f"{path}[{index}]", context) for index, item in enumerate(items)
        )
        roles: set[LayerRole] = set()
        ids: set[str] = set()
        for index, layer in enumerate(layers):
            repeatable = stack and layer.role is LayerRole.LAYER
            if layer.role in roles and not repeatable:
                raise InvalidField(f"{path}[{index}].role: a second {layer.role.value} layer")
            if layer.image.id in ids:
                raise InvalidField(f"{path}[{index}].image.id: '{layer.image.id}' is used twice")
            roles.add(layer.role)
            ids.add(layer.image.id)
        return layers

    return read


def _read_layer_prompts(value: Any, path: str, context: _Context) -> dict[LayerRole, str]:
    if not isinstance(value, dict):
        raise InvalidField(f"{path}: expected an object, got {describe(value)}")
    read_role, read_text = _enum(LayerRole), _string(MAX_TEXT_CHARS)
    return {
        read_role(key, path, context): read_text(text, f"{path}.{key}", context)
        for key, text in value.items()
    }


def _lora_infos(value: Any, path: str, context: _Context) -> tuple[LoRAInfo, ...]:
    """The offered LoRAs; from a newer-minor peer, one this side cannot read (a sampler
    it lacks) is dropped rather than failing the whole welcome."""
    items = _list(value, path)
    infos = []
    for index, item in enumerate(items):
        try:
            infos.append(_read_object(LoRAInfo, item, f"{path}[{index}]", context))
        except InvalidField:
            if not context.allow_unknown:
                raise
    return tuple(infos)


# -- the schema ----------------------------------------------------------------------

_text = _string(MAX_TEXT_CHARS)
_name = _string(MAX_NAME_CHARS, empty=False)
_job = _string(MAX_JOB_ID_CHARS, empty=False)
_image_ref = _object(ImageRef)

_READERS: dict[type, dict[str, _Reader]] = {
    ImageRef: {
        "id": _string(MAX_IMAGE_ID_CHARS, empty=False),
        "width": _at_least(1),
        "height": _at_least(1),
        "format": _enum(PixelFormat),
        "size": _at_least(1),
    },
    LayerImage: {"role": _enum(LayerRole), "image": _image_ref},
    ModelInfo: {
        "name": _name,
        "family": _enum(ModelFamily),
        "demo": _read_bool,
        "warning": _optional(_text),
    },
    LoRAInfo: {
        "name": _name,
        "family": _enum(ModelFamily),
        "label": _text,
        "sampler": _optional(_enum(Sampler)),
        "steps": _optional(_at_least(1)),
        "cfg_scale": _optional(_read_float),
        "weight": _read_float,
    },
    Capabilities: {
        "methods": _enum_tuple(Method),
        "families": _enum_tuple(ModelFamily),
        "samplers": _enum_tuple(Sampler),
        "resize_modes": _enum_tuple(ResizeMode),
        "formats": _enum_tuple(PixelFormat),
        "loras": _lora_infos,
    },
    Limits: {field.name: _at_least(1) for field in fields(Limits)},
    ErrorInfo: {"code": _enum(ErrorCode), "message": _text},
    GenerationParameters: {
        "method": _enum(Method),
        "prompt": _text,
        "negative_prompt": _text,
        "layer_prompts": _read_layer_prompts,
        "width": _read_int,
        "height": _read_int,
        "fit_to_native": _read_bool,
        "resize_mode": _enum(ResizeMode),
        "seed": _read_int,
        "steps": _read_int,
        "cfg_scale": _read_float,
        "sampler": _enum(Sampler),
        "batch_size": _read_int,
        "batch_count": _read_int,
        "weight": _read_float,
        "ending_step": _read_float,
        "denoise_strength": _read_float,
        "noise_source": _enum(NoiseSource),
        "second_prompt": _optional(_text),
        "second_negative_prompt": _optional(_text),
        "second_sampler": _optional(_enum(Sampler)),
        "second_ending_step": _optional(_read_float),
        "hires": _enum(Hires),
        "hires_strength": _read_float,
        "lora": _optional(_name),
        "lora_weight": _read_float,
        "layers": _read_int,
    },
    Hello: {"protocol": _read_version, "client": _name, "session": _optional(_name)},
    Welcome: {
        "protocol": _read_version,
        "server": _name,
        "session": _name,
        "model": _object(ModelInfo),
        "capabilities": _object(Capabilities),
        "limits": _object(Limits),
    },
    Submit: {
        "job": _job,
        "request": _object(GenerationParameters),
        "inputs": _layers(at_least=0),
        "result_format": _enum(PixelFormat),
        "previews": _read_bool,
    },
    Accepted: {"job": _job, "position": _at_least(0)},
    Progress: {
        "job": _job,
        "step": _at_least(0),
        "total": _at_least(0),
        "preview": _optional(_image_ref),
    },
    Result: {
        "job": _job,
        "index": _at_least(0),
        "seed": _read_int,
        "layers": _layers(at_least=1, stack=True),
    },
    Done: {"job": _job, "status": _enum(JobStatus), "error": _optional(_object(ErrorInfo))},
    Cancel: {"job": _job},
    Error: {"code": _enum(ErrorCode), "message": _text, "job": _optional(_job)},
}


def _to_wire(value: Any) -> Any:
    """Dataclasses to dicts of their fields, enums to values, tuples to lists."""
    if isinstance(value, Enum):
        return value.value
    if is_dataclass(value) and not isinstance(value, type):
        return {field.name: _to_wire(getattr(value, field.name)) for field in fields(value)}
    if isinstance(value, (tuple, list)):
        return [_to_wire(item) for item in value]
    if isinstance(value, dict):
        return {_to_wire(key): _to_wire(item) for key, item in value.items()}
    return value
