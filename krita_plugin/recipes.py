"""Which LayerDiffuse methods each action runs, and where their layers go (pure).

- transparent layer: `sd15_transparent` / `sdxl_transparent_attn` (or `_conv`, the
  docker's choice); reads nothing;
  inserts the foreground above the active layer.
- background: `sd15_fg2bg` / `sdxl_fg2bg` (the backend's one-click `sdxl_fg2ble` then
  `sdxl_fgble2bg`, each step with its own prompt, sampler and Stop At); reads the active
  layer (the foreground); inserts the background directly below it.
- foreground: `sd15_bg2fg` / `sdxl_bg2fg` (`sdxl_bg2ble` then `sdxl_bgble2fg`); reads the
  scene up to and including the active layer (the background); inserts the foreground
  directly above it.
- together: `sd15_joint` (SD1.5 only); reads nothing; inserts the background, then the
  foreground, above the active layer.
- split into layers: `split_layers` (Qwen-Image-Layered only); reads the active layer;
  inserts its N layers, bottom first, in one new group directly above it.
- a transparent layer on a checkpoint the backend says LayerDiffuse fails on runs the
  family's matted method instead (`sd15_matted` / `sdxl_matted`: generated on gray and
  matted), unless the painter turned that off.

"Together" reads no layer, so like the transparent layer its results go above the active
layer: the background directly above it, the foreground above the background (putting
the background *below* the active layer would sandwich the painter's layer between two
generated ones that belong together). With "insert blended" on, the blended image is
inserted too, hidden, next to the other results.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from .errors import MethodUnavailable
from .placement import InputSource, Placement
from .vendor import protocol

__all__ = [
    "KRITA_ACTIONS",
    "MATTED_METHODS",
    "SDXL_TRANSPARENT_MODELS",
    "Action",
    "OutputLayer",
    "Recipe",
    "recipe_for",
    "step_inputs",
]

Method = protocol.Method
LayerRole = protocol.LayerRole
ModelFamily = protocol.ModelFamily

_FG, _BG, _BLEND = LayerRole.FOREGROUND, LayerRole.BACKGROUND, LayerRole.BLENDED
_LAYER = LayerRole.LAYER
_ABOVE, _BELOW = Placement.ABOVE, Placement.BELOW


class Action(Enum):
    """What the painter asked for (an action, or the docker's method choice)."""

    TRANSPARENT_LAYER = "transparent_layer"
    BACKGROUND = "background"
    FOREGROUND = "foreground"
    TOGETHER = "together"
    SPLIT_LAYERS = "split_layers"

    @property
    def label(self) -> str:
        return _LABELS[self]


KRITA_ACTIONS: tuple[tuple[str, str, Action | None], ...] = (
    ("layerdiffuse_generate_layer", "Generate Transparent Layer", Action.TRANSPARENT_LAYER),
    ("layerdiffuse_generate_background", "Generate Background for Layer", Action.BACKGROUND),
    ("layerdiffuse_generate_foreground", "Generate Foreground into Scene", Action.FOREGROUND),
    ("layerdiffuse_split_layers", "Split into Layers", Action.SPLIT_LAYERS),
    ("layerdiffuse_cancel", "Cancel Generation", None),
)
"""Krita's actions: id, menu text (as in `layerdiffuse.action`), what they do (None: cancel)."""

_LABELS = {
    Action.TRANSPARENT_LAYER: "Transparent layer from the prompt",
    Action.BACKGROUND: "Background for the active layer",
    Action.FOREGROUND: "Foreground into the scene",
    Action.TOGETHER: "Foreground and background together",
    Action.SPLIT_LAYERS: "Split into layers",
}


@dataclass(frozen=True)
class OutputLayer:
    """A layer a recipe inserts: its role, its place, and whether it starts visible."""

    role: protocol.LayerRole
    placement: Placement
    visible: bool = True


@dataclass(frozen=True)
class Recipe:
    """How one action runs on one model family.

    Attributes:
        action: the action.
        family: the model family its methods belong to.
        source: what it reads from the document.
        captured_role: the role the read pixels play (None when nothing is read).
        method: the method it runs (SDXL's layer actions use the backend's one-click
            workflows: two methods in one job).
        outputs: the layers inserted, bottom to top within each placement.
    """

    action: Action
    family: protocol.ModelFamily
    source: InputSource
    captured_role: protocol.LayerRole | None
    method: protocol.Method
    outputs: tuple[OutputLayer, ...]

    def check_offered(self, offered: tuple[protocol.Method, ...]) -> None:
        """Raise MethodUnavailable unless the backend offers the recipe's method."""
        if self.method not in offered:
            have = ", ".join(method.value for method in offered) or "none"
            raise MethodUnavailable(
                f"The backend does not offer {self.method.value}, which “{self.action.label}” "
                "needs with "
                f"{_family_label(self.family)} (it offers: {have}). Start it with an "
                f"{_family_label(self.family)} model, or pick the other model family."
            )


SDXL_TRANSPARENT_MODELS = (Method.SDXL_TRANSPARENT_ATTN, Method.SDXL_TRANSPARENT_CONV)
"""The two SDXL transparent models the original offers: attention or conv injection."""

MATTED_METHODS = {ModelFamily.SD15: Method.SD15_MATTED, ModelFamily.SDXL: Method.SDXL_MATTED}
"""The fallback of each SD family where LayerDiffuse fails: generate on gray, matte."""


def recipe_for(
    action: Action,
    family: protocol.ModelFamily,
    insert_blended: bool = False,
    sdxl_transparent: protocol.Method = Method.SDXL_TRANSPARENT_ATTN,
    matted: bool = False,
) -> Recipe:
    """The recipe of an action on a model family.

    Args:
        action: what the painter asked for.
        family: the model family to run on.
        insert_blended: also insert the blended image the layer methods make (hidden).
        sdxl_transparent: the SDXL transparent layer's method (one of
            `SDXL_TRANSPARENT_MODELS`).
        matted: a transparent layer by the matting fallback (SD1.5 and SDXL).

    Raises:
        MethodUnavailable: the family has no method for the action (together on SDXL;
            anything but a transparent layer on FLUX; anything but a split on
            Qwen-Image-Layered, and a split on any other).
    """
    sd15 = family is ModelFamily.SD15
    if action is Action.SPLIT_LAYERS or family is ModelFamily.QWEN_LAYERED:
        return _split_recipe(action, family)
    blended = (OutputLayer(_BLEND, _BELOW, visible=False),) if insert_blended else ()
    if family is ModelFamily.FLUX:
        if action is not Action.TRANSPARENT_LAYER:
            raise MethodUnavailable(
                f"“{action.label}” needs an SD1.5 or SDXL model: LayerDiffuse-Flux makes "
                "transparent layers only. Use Transparent layer, or start the backend with "
                "an SD1.5 or SDXL model."
            )
        return Recipe(
            action,
            family,
            InputSource.NOTHING,
            None,
            Method.FLUX_TRANSPARENT,
            (OutputLayer(_FG, _ABOVE),),
        )
    if action is Action.TRANSPARENT_LAYER:
        if sdxl_transparent not in SDXL_TRANSPARENT_MODELS:
            raise ValueError(f"{sdxl_transparent} is not an SDXL transparent method")
        method = Method.SD15_TRANSPARENT if sd15 else sdxl_transparent
        if matted:
            method = MATTED_METHODS[family]
        return Recipe(
            action, family, InputSource.NOTHING, None, method, (OutputLayer(_FG, _ABOVE),)
        )
    if action is Action.BACKGROUND:
        method = Method.SD15_FG_TO_BG if sd15 else Method.SDXL_FG_TO_BG
        outputs = (OutputLayer(_BG, _BELOW), *blended)
        return Recipe(action, family, InputSource.ACTIVE_LAYER, _FG, method, outputs)
    if action is Action.FOREGROUND:
        method = Method.SD15_BG_TO_FG if sd15 else Method.SDXL_BG_TO_FG
        above = (OutputLayer(_BLEND, _ABOVE, visible=False),) if insert_blended else ()
        outputs = (*above, OutputLayer(_FG, _ABOVE))
        return Recipe(action, family, InputSource.SCENE, _BG, method, outputs)
    if not sd15:
        raise MethodUnavailable(
            "Generating foreground and background together needs an SD1.5 model "
            "(LayerDiffuse has no SDXL method for it). Use the background or foreground "
            "action instead, or start the backend with an SD1.5 model."
        )
    top = (OutputLayer(_BLEND, _ABOVE, visible=False),) if insert_blended else ()
    outputs = (OutputLayer(_BG, _ABOVE), OutputLayer(_FG, _ABOVE), *top)
    return Recipe(action, family, InputSource.NOTHING, None, Method.SD15_JOINT, outputs)


def _split_recipe(action: Action, family: protocol.ModelFamily) -> Recipe:
    """Split into Layers, which only Qwen-Image-Layered does (and all it does)."""
    if family is not ModelFamily.QWEN_LAYERED:
        raise MethodUnavailable(
            "Splitting a layer into layers needs a Qwen-Image-Layered backend (`layerdiffuse "
            "serve --base Qwen/Qwen-Image-Layered`, a large-GPU model); this one runs "
            f"{_family_label(family)}."
        )
    if action is not Action.SPLIT_LAYERS:
        raise MethodUnavailable(
            f"“{action.label}” needs an SD1.5 or SDXL model: this backend runs "
            "Qwen-Image-Layered, which splits a layer into layers. Use Split into layers, "
            "or start the backend with an SD1.5 or SDXL model."
        )
    return Recipe(
        action,
        family,
        InputSource.ACTIVE_LAYER,
        _LAYER,
        Method.SPLIT_LAYERS,
        (OutputLayer(_LAYER, _ABOVE),),
    )


def step_inputs(
    method: protocol.Method,
) -> tuple[protocol.LayerRole, ...]:
    """The input roles a method needs (from the protocol's method table)."""
    return protocol.METHOD_SPECS[method].required_inputs


def _family_label(family: protocol.ModelFamily) -> str:
    return FAMILY_LABELS[family]


FAMILY_LABELS = {
    ModelFamily.SD15: "SD1.5",
    ModelFamily.SDXL: "SDXL",
    ModelFamily.FLUX: "FLUX",
    ModelFamily.QWEN_LAYERED: "Qwen-Image-Layered",
}
"""How the docker and its messages name each model family."""
