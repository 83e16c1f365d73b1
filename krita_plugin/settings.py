"""The plugin's settings, declared once: key, type, default, label, help and range.

They live in Krita's own settings (`kritarc`, group `layerdiffuse`), read and written
through a `SettingsStore` that the canvas package provides (`Krita.readSetting` /
`writeSetting`); nothing else reads them. Values are stored as text. A stored value that
does not parse or is out of range falls back to its default with a log line.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from typing import Any, Protocol

from .recipes import SDXL_TRANSPARENT_MODELS, Action
from .vendor import protocol

__all__ = [
    "FAMILY_AUTO",
    "SETTINGS_GROUP",
    "Settings",
    "SettingsStore",
    "choices",
    "describe",
    "load_settings",
    "save_settings",
    "shown_range",
    "shown_times",
    "tooltip",
    "unit",
    "value_range",
]

log = logging.getLogger(__name__)

SETTINGS_GROUP = "layerdiffuse"
"""The kritarc group the settings are stored under."""

FAMILY_AUTO = "auto"
"""Model family setting: take the family of the model the backend runs."""


class SettingsStore(Protocol):
    """Where settings are kept (Krita's settings inside Krita, a dict in tests)."""

    def read(self, key: str) -> str | None:
        """The stored text, or None when the key was never written."""

    def write(self, key: str, value: str) -> None:
        """Store the text under the key."""


def _spec(
    label: str,
    help: str,
    *,
    minimum: float | None = None,
    maximum: float | None = None,
    unit: str = "",
    shown_times: float = 1,
    choices: tuple[str, ...] | None = None,
) -> dict[str, Any]:
    """A setting's metadata; the docker shows its value times `shown_times` (a fraction
    as a percentage), in `unit`."""
    return {
        "label": label,
        "help": help,
        "minimum": minimum,
        "maximum": maximum,
        "unit": unit,
        "shown_times": shown_times,
        "choices": choices,
    }


_FAMILIES = (FAMILY_AUTO, *(family.value for family in protocol.ModelFamily))
_SAMPLERS = tuple(sampler.value for sampler in protocol.Sampler)
_ACTIONS = tuple(action.value for action in Action)
_SDXL_TRANSPARENT = tuple(method.value for method in SDXL_TRANSPARENT_MODELS)


@dataclass(frozen=True)
class Settings:
    """Every setting of the plugin with its default; `describe(name)` gives label and help."""

    server_url: str = field(
        default="ws://127.0.0.1:8870",
        metadata=_spec("Server", "Address of `layerdiffuse serve` (ws://host:port)"),
    )
    token: str = field(
        default="",
        metadata=_spec("Token", "The backend's token, if it was started with one"),
    )
    prompt: str = field(default="", metadata=_spec("Prompt", "What to generate"))
    negative_prompt: str = field(
        default="bad, ugly", metadata=_spec("Negative prompt", "What to avoid")
    )
    family: str = field(
        default=FAMILY_AUTO,
        metadata=_spec(
            "Model family",
            "SD1.5 or SDXL methods; Automatic follows the model the backend runs",
            choices=_FAMILIES,
        ),
    )
    method: str = field(
        default=Action.TRANSPARENT_LAYER.value,
        metadata=_spec("Make", "What the Generate button makes", choices=_ACTIONS),
    )
    speed: str = field(
        default="",
        metadata=_spec(
            "Speed",
            "Full quality (20 steps), or a few-step LoRA the backend offers (Hyper-SD, "
            "SDXL-Lightning, DMD2): picking one sets its steps, sampler and CFG; "
            "LayerDiffuse's layers are at their best at full quality",
        ),
    )
    steps: int = field(
        default=20,
        metadata=_spec("Steps", "Sampler steps", minimum=1, maximum=150, unit="steps"),
    )
    cfg_scale: float = field(
        default=7.0,
        metadata=_spec(
            "CFG", "How closely to follow the prompt (CFG scale)", minimum=1.0, maximum=30.0
        ),
    )
    seed: int = field(
        default=12345,
        metadata=_spec(
            "Seed",
            "The same seed and settings give the same picture; with Random on it shows the "
            "last seed used, so unticking Random reuses it",
            minimum=0,
            maximum=2**32 - 1,
        ),
    )
    random_seed: bool = field(
        default=True, metadata=_spec("Random", "Pick a new seed for every generation")
    )
    sampler: str = field(
        default=protocol.Sampler.DPMPP_2M_KARRAS.value,
        metadata=_spec("Sampler", "The sampling schedule", choices=_SAMPLERS),
    )
    weight: float = field(
        default=1.0,
        metadata=_spec(
            "Weight", "Strength of the SDXL layer models", minimum=0.0, maximum=2.0, unit="×"
        ),
    )
    stop_at: float = field(
        default=1.0,
        metadata=_spec(
            "Stop At",
            "The share of the steps that use the layer model; the rest run the plain model",
            minimum=0.0,
            maximum=1.0,
            unit="%",
            shown_times=100,
        ),
    )
    sdxl_transparent_model: str = field(
        default=SDXL_TRANSPARENT_MODELS[0].value,
        metadata=_spec(
            "Layer model",
            "The SDXL layer model of a transparent layer: attention injection (the "
            "original's default) or conv injection",
            choices=_SDXL_TRANSPARENT,
        ),
    )
    second_prompt: str = field(
        default="",
        metadata=_spec(
            "Step 2 prompt",
            "SDXL makes a background or a foreground in two steps (the blend, then the "
            "layer); the second step's prompt, empty for the prompt above",
        ),
    )
    second_negative_prompt: str = field(
        default="",
        metadata=_spec("Step 2 negative", "The second step's negative prompt, empty for the same"),
    )
    second_sampler: str = field(
        default="",
        metadata=_spec(
            "Step 2 sampler",
            "The second step's sampler; Default is the original recipe's UniPC",
            choices=("", *_SAMPLERS),
        ),
    )
    second_stop_at: str = field(
        default="",
        metadata=_spec(
            "Step 2 Stop At",
            "The share of the second step that uses the layer model; Default is the "
            "original recipe's: 50 % for a background, 100 % for a foreground",
            choices=("", "0", "0.25", "0.5", "0.75", "1"),
        ),
    )
    foreground_prompt: str = field(
        default="", metadata=_spec("Foreground prompt", "Added to the prompt for the foreground")
    )
    background_prompt: str = field(
        default="", metadata=_spec("Background prompt", "Added to the prompt for the background")
    )
    blended_prompt: str = field(
        default="", metadata=_spec("Blended prompt", "Added to the prompt for the blended image")
    )
    insert_blended: bool = field(
        default=False,
        metadata=_spec(
            "Also insert the blended image",
            "The layer methods also make foreground and background blended into one "
            "picture; insert it as a hidden layer too",
        ),
    )
    fit_to_native: bool = field(
        default=True,
        metadata=_spec(
            "Generate at the model's size",
            "Generate near the model's native size (512² for SD1.5, 1024² for SDXL) and "
            "scale the result to the region; off generates at the region's own size",
        ),
    )
    hires: str = field(
        default="auto",
        metadata=_spec(
            "Second pass",
            "For a work area larger than the model's (512² SD1.5, 1024² SDXL): generate at "
            "the model's size, then again at the work area's, so the layer is sharp; "
            "Automatic does it from 20 % over the model's area",
            choices=tuple(mode.value for mode in protocol.Hires),
        ),
    )
    hires_strength: float = field(
        default=0.5,
        metadata=_spec(
            "Pass strength",
            "How much of the first pass the second one redraws",
            minimum=0.0,
            maximum=1.0,
            unit="%",
            shown_times=100,
        ),
    )
    split_layers: int = field(
        default=4,
        metadata=_spec(
            "Layers",
            "How many layers Split into layers makes of the active layer (Qwen-Image-Layered; "
            "the model card's default is 4)",
            minimum=1,
            maximum=10,
            unit="layers",
        ),
    )
    split_steps: int = field(
        default=50,
        metadata=_spec(
            "Steps",
            "Sampler steps of a split (the model card's: 50)",
            minimum=1,
            maximum=150,
            unit="steps",
        ),
    )
    split_cfg: float = field(
        default=4.0,
        metadata=_spec(
            "CFG",
            "How closely a split follows the prompt (true CFG; the model card's: 4; 1 is "
            "one pass a step)",
            minimum=1.0,
            maximum=30.0,
        ),
    )
    matting_fallback: bool = field(
        default=True,
        metadata=_spec(
            "Generate on gray and matte",
            "When the backend says LayerDiffuse fails on its model (an Illustrious-XL or "
            "NoobAI-XL checkpoint, say), make transparent layers by generating on a neutral "
            "gray and matting (sd15_matted / sdxl_matted) instead of with LayerDiffuse; "
            "the layer's name says “(matted)”",
        ),
    )
    insert_results: bool = field(
        default=True,
        metadata=_spec(
            "Insert results at once",
            "Off: each result waits in the tray below the progress; click it to insert it",
        ),
    )
    settings_open: bool = field(
        default=False,
        metadata=_spec("Settings", "Whether the docker's Settings section is open"),
    )
    connection_open: bool = field(
        default=False,
        metadata=_spec("Connection", "Whether the docker's Connection section is open"),
    )


_FIELDS = {spec.name: spec for spec in dataclasses.fields(Settings)}


def describe(name: str) -> tuple[str, str]:
    """The label and help text of a setting."""
    metadata = _FIELDS[name].metadata
    return metadata["label"], metadata["help"]


def choices(name: str) -> tuple[str, ...]:
    """The values a choice setting takes."""
    return _FIELDS[name].metadata["choices"]


def tooltip(name: str) -> str:
    """The help text of a setting with its range and unit, e.g. "Sampler steps (1–150 steps)"."""
    metadata = _FIELDS[name].metadata
    text = metadata["help"]
    if metadata["minimum"] is not None and metadata["maximum"] is not None:
        low, high = (_number(value) for value in shown_range(name))
        unit = f" {metadata['unit']}" if metadata["unit"] else ""
        text += f" ({low}–{high}{unit})"
    return text


def unit(name: str) -> str:
    """The unit the docker shows a setting's value in ("" for none)."""
    return _FIELDS[name].metadata["unit"]


def shown_times(name: str) -> float:
    """The factor between a setting's stored value and the value the docker shows."""
    return _FIELDS[name].metadata["shown_times"]


def shown_range(name: str) -> tuple[float, float]:
    """A numeric setting's range as the docker shows it (e.g. Stop At as 0–100 %)."""
    low, high = value_range(name)
    return low * shown_times(name), high * shown_times(name)


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


def value_range(name: str) -> tuple[float, float]:
    """The smallest and largest value of a numeric setting."""
    metadata = _FIELDS[name].metadata
    return metadata["minimum"], metadata["maximum"]


def _parse(name: str, text: str) -> Any:
    spec = _FIELDS[name]
    kind = (
        spec.type
        if isinstance(spec.type, type)
        else {"str": str, "int": int, "float": float, "bool": bool}[spec.type]
    )
    metadata = spec.metadata
    value: Any
    if kind is bool:
        if text not in ("true", "false"):
            raise ValueError(f"expected true or false, got {text!r}")
        value = text == "true"
    elif kind is int:
        value = int(text)
    elif kind is float:
        value = float(text)
        if value != value:  # NaN
            raise ValueError("not a number")
    else:
        value = text
    if metadata["minimum"] is not None and value < metadata["minimum"]:
        raise ValueError(f"{value} is below {metadata['minimum']}")
    if metadata["maximum"] is not None and value > metadata["maximum"]:
        raise ValueError(f"{value} is above {metadata['maximum']}")
    if metadata["choices"] is not None and value not in metadata["choices"]:
        raise ValueError(f"{value!r} is not one of {', '.join(metadata['choices'])}")
    return value


def _format(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def load_settings(store: SettingsStore) -> Settings:
    """Read every setting; a missing one takes its default, a bad one too (logged)."""
    values: dict[str, Any] = {}
    for name in _FIELDS:
        text = store.read(name)
        if text is None:
            continue
        try:
            values[name] = _parse(name, text)
        except ValueError as error:
            log.warning("setting %s: %s; using the default", name, error)
    return Settings(**values)


def save_settings(
    store: SettingsStore, settings: Settings, previous: Settings | None = None
) -> None:
    """Write the settings (only those that differ from `previous`, when given)."""
    for name in _FIELDS:
        value = getattr(settings, name)
        if previous is None or getattr(previous, name) != value:
            store.write(name, _format(value))
