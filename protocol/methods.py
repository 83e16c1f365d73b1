"""The LayerDiffuse methods, model families, layer roles, samplers and resize modes.

These names are the contract between the Krita plugin and the backend: they travel
on the wire as their lowercase values. Each method of the original extension is
here once, with what it needs and what it returns (`MethodSpec`).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum


class ModelFamily(str, Enum):
    """The base model a method runs on. `FLUX` (since 1.2) is FLUX.1-dev with
    LayerDiffuse-Flux (`RedAIGC/Flux-version-LayerDiffuse`); a 1.1 client cannot read a
    FLUX server's `welcome`. `QWEN_LAYERED` (since 1.3) is Qwen-Image-Layered
    (`Qwen/Qwen-Image-Layered`), which splits a picture into layers (`split_layers`)."""

    SD15 = "sd15"
    SDXL = "sdxl"
    FLUX = "flux"
    QWEN_LAYERED = "qwen_layered"


class LayerRole(str, Enum):
    """What a layer is, going in or coming out.

    `MASK` (since 1.1) is an input only, and every method takes it: an image of the
    request's size whose alpha channel is the selection (its colour is ignored). It is
    never an output and has no layer prompt.

    `LAYER` (since 1.3) is `split_layers`' role: its input, the picture to split, and each
    of its outputs; a result holds `layers` of them, bottom of the stack first (the only
    role a result may hold more than once).
    """

    FOREGROUND = "foreground"
    BACKGROUND = "background"
    BLENDED = "blended"
    MASK = "mask"
    LAYER = "layer"


class Hires(str, Enum):
    """Whether a request larger than the model's native area gets a second pass (since 1.1).

    The first pass runs near the native area, the second at the request's size as an
    img2img of the first (through the transparent encoder and decoder for a layer with
    alpha), so the layer is sharp at the canvas's resolution.
    """

    AUTO = "auto"
    """On when the request's area exceeds the native area by more than 20 %."""
    ON = "on"
    """On whenever the request's area exceeds the native area."""
    OFF = "off"
    """One pass at the generation size (what 1.0 did)."""


class Method(str, Enum):
    """The ten methods of the original extension (sd-forge-layerdiffuse), our two
    one-click SDXL workflows that chain two of them (`sdxl_fg2bg`, `sdxl_bg2fg`),
    LayerDiffuse-Flux's transparent image (`flux_transparent`, since 1.2), and since 1.3
    Split into Layers (`split_layers`) and the matting fallback for checkpoints on which
    LayerDiffuse fails (`sd15_matted`, `sdxl_matted`: an opaque picture on neutral gray,
    matted to a transparent layer)."""

    SD15_TRANSPARENT = "sd15_transparent"
    SD15_JOINT = "sd15_joint"
    SD15_FG_TO_BG = "sd15_fg2bg"
    SD15_BG_TO_FG = "sd15_bg2fg"
    SDXL_TRANSPARENT_ATTN = "sdxl_transparent_attn"
    SDXL_TRANSPARENT_CONV = "sdxl_transparent_conv"
    SDXL_FG_TO_BLEND = "sdxl_fg2ble"
    SDXL_FG_BLEND_TO_BG = "sdxl_fgble2bg"
    SDXL_BG_TO_BLEND = "sdxl_bg2ble"
    SDXL_BG_BLEND_TO_FG = "sdxl_bgble2fg"
    SDXL_FG_TO_BG = "sdxl_fg2bg"
    SDXL_BG_TO_FG = "sdxl_bg2fg"
    FLUX_TRANSPARENT = "flux_transparent"
    SPLIT_LAYERS = "split_layers"
    SD15_MATTED = "sd15_matted"
    SDXL_MATTED = "sdxl_matted"


class Sampler(str, Enum):
    """Samplers, named as A1111 and Forge name them in their infotexts.

    `LCM`, `LCM_SGM_UNIFORM` and `EULER_SGM_UNIFORM` (since 1.2) are the few-step
    samplers the distilled LoRAs are made for: LCM on its distillation schedule (LCM-LoRA),
    LCM and Euler on evenly spaced timesteps from 999, A1111's "SGM Uniform" (DMD2;
    SDXL-Lightning and Hyper-SD).
    """

    DPMPP_2M_KARRAS = "dpmpp_2m_karras"
    DPMPP_2M_SDE_KARRAS = "dpmpp_2m_sde_karras"
    EULER_A = "euler_a"
    EULER = "euler"
    UNIPC = "unipc"
    DDIM = "ddim"
    LCM = "lcm"
    LCM_SGM_UNIFORM = "lcm_sgm_uniform"
    EULER_SGM_UNIFORM = "euler_sgm_uniform"

    @property
    def label(self) -> str:
        return _SAMPLER_LABELS[self]


_SAMPLER_LABELS = {
    Sampler.DPMPP_2M_KARRAS: "DPM++ 2M Karras",
    Sampler.DPMPP_2M_SDE_KARRAS: "DPM++ 2M SDE Karras",
    Sampler.EULER_A: "Euler a",
    Sampler.EULER: "Euler",
    Sampler.UNIPC: "UniPC",
    Sampler.DDIM: "DDIM",
    Sampler.LCM: "LCM",
    Sampler.LCM_SGM_UNIFORM: "LCM SGM Uniform",
    Sampler.EULER_SGM_UNIFORM: "Euler SGM Uniform",
}


class NoiseSource(str, Enum):
    """Where the starting noise of a seed is drawn (A1111's "random number generator source").

    CPU noise is the same on every machine; GPU noise is what A1111 and Forge draw by
    default on an NVIDIA card, so the original's sanity-check seeds reproduce there.
    """

    CPU = "cpu"
    GPU = "gpu"


class ResizeMode(str, Enum):
    """How an image of one aspect is fitted to another (the original's three modes)."""

    JUST_RESIZE = "just_resize"
    CROP_AND_RESIZE = "crop_and_resize"
    RESIZE_AND_FILL = "resize_and_fill"

    @property
    def label(self) -> str:
        return _RESIZE_LABELS[self]


_RESIZE_LABELS = {
    ResizeMode.JUST_RESIZE: "Just Resize",
    ResizeMode.CROP_AND_RESIZE: "Crop and Resize",
    ResizeMode.RESIZE_AND_FILL: "Resize and Fill",
}


@dataclass(frozen=True)
class MethodSpec:
    """What one method needs and returns.

    Attributes:
        family: the base model family it runs on.
        label: the original extension's UI string (also its infotext value).
        frames: images diffused together per result (SD1.5 attention sharing).
        required_inputs: layers the caller must send.
        optional_inputs: layers the caller may send: a foreground input of a method
            whose output has alpha is the source of a transparent img2img (the original
            allows img2img with the transparent encoder for exactly these methods); a
            mask, every method.
        outputs: the layers one result consists of (never a mask).
        layer_prompts: which per-layer prompts the method reads.
    """

    family: ModelFamily
    label: str
    frames: int
    required_inputs: tuple[LayerRole, ...]
    optional_inputs: tuple[LayerRole, ...]
    outputs: tuple[LayerRole, ...]
    layer_prompts: tuple[LayerRole, ...] = ()


_FG, _BG, _BLEND = LayerRole.FOREGROUND, LayerRole.BACKGROUND, LayerRole.BLENDED
_MASK, _LAYER = LayerRole.MASK, LayerRole.LAYER

METHOD_SPECS: dict[Method, MethodSpec] = {
    Method.SD15_TRANSPARENT: MethodSpec(
        ModelFamily.SD15,
        "(SD1.5) Only Generate Transparent Image (Attention Injection)",
        frames=1,
        required_inputs=(),
        optional_inputs=(_FG, _MASK),
        outputs=(_FG,),
    ),
    Method.SD15_JOINT: MethodSpec(
        ModelFamily.SD15,
        "(SD1.5) Generate Everything Together (need batch size 3)",
        frames=3,
        required_inputs=(),
        optional_inputs=(_FG, _MASK),
        outputs=(_FG, _BG, _BLEND),
        layer_prompts=(_FG, _BG, _BLEND),
    ),
    Method.SD15_FG_TO_BG: MethodSpec(
        ModelFamily.SD15,
        "(SD1.5) From Foreground to Background (need batch size 2)",
        frames=2,
        required_inputs=(_FG,),
        optional_inputs=(_MASK,),
        outputs=(_BG, _BLEND),
        layer_prompts=(_BG, _BLEND),
    ),
    Method.SD15_BG_TO_FG: MethodSpec(
        ModelFamily.SD15,
        "(SD1.5) From Background to Foreground (need batch size 2)",
        frames=2,
        required_inputs=(_BG,),
        optional_inputs=(_FG, _MASK),
        outputs=(_FG, _BLEND),
        layer_prompts=(_FG, _BLEND),
    ),
    Method.SDXL_TRANSPARENT_ATTN: MethodSpec(
        ModelFamily.SDXL,
        "(SDXL) Only Generate Transparent Image (Attention Injection)",
        frames=1,
        required_inputs=(),
        optional_inputs=(_FG, _MASK),
        outputs=(_FG,),
    ),
    Method.SDXL_TRANSPARENT_CONV: MethodSpec(
        ModelFamily.SDXL,
        "(SDXL) Only Generate Transparent Image (Conv Injection)",
        frames=1,
        required_inputs=(),
        optional_inputs=(_FG, _MASK),
        outputs=(_FG,),
    ),
    Method.SDXL_FG_TO_BLEND: MethodSpec(
        ModelFamily.SDXL,
        "(SDXL) From Foreground to Blending",
        frames=1,
        required_inputs=(_FG,),
        optional_inputs=(_MASK,),
        outputs=(_BLEND,),
    ),
    Method.SDXL_FG_BLEND_TO_BG: MethodSpec(
        ModelFamily.SDXL,
        "(SDXL) From Foreground and Blending to Background",
        frames=1,
        required_inputs=(_FG, _BLEND),
        optional_inputs=(_MASK,),
        outputs=(_BG,),
    ),
    Method.SDXL_BG_TO_BLEND: MethodSpec(
        ModelFamily.SDXL,
        "(SDXL) From Background to Blending",
        frames=1,
        required_inputs=(_BG,),
        optional_inputs=(_MASK,),
        outputs=(_BLEND,),
    ),
    Method.SDXL_BG_BLEND_TO_FG: MethodSpec(
        ModelFamily.SDXL,
        "(SDXL) From Background and Blending to Foreground",
        frames=1,
        required_inputs=(_BG, _BLEND),
        optional_inputs=(_FG, _MASK),
        outputs=(_FG,),
    ),
    # One click: foreground → blending → background, and background → blending → foreground.
    Method.SDXL_FG_TO_BG: MethodSpec(
        ModelFamily.SDXL,
        "(SDXL) From Foreground to Background (Blending, then Background)",
        frames=1,
        required_inputs=(_FG,),
        optional_inputs=(_MASK,),
        outputs=(_BG, _BLEND),
    ),
    Method.SDXL_BG_TO_FG: MethodSpec(
        ModelFamily.SDXL,
        "(SDXL) From Background to Foreground (Blending, then Foreground)",
        frames=1,
        required_inputs=(_BG,),
        optional_inputs=(_MASK,),
        outputs=(_FG, _BLEND),
    ),
    Method.FLUX_TRANSPARENT: MethodSpec(
        ModelFamily.FLUX,
        "(FLUX.1) Only Generate Transparent Image (LayerDiffuse-Flux LoRA)",
        frames=1,
        required_inputs=(),
        optional_inputs=(_FG, _MASK),
        outputs=(_FG,),
    ),
    Method.SPLIT_LAYERS: MethodSpec(
        ModelFamily.QWEN_LAYERED,
        "Split into Layers (Qwen-Image-Layered)",
        frames=1,
        required_inputs=(_LAYER,),
        optional_inputs=(_MASK,),
        outputs=(_LAYER,),
    ),
    # The fallback: no layer model, so the base model's own look (and tint) survives.
    Method.SD15_MATTED: MethodSpec(
        ModelFamily.SD15,
        "(SD1.5) Generate on Gray and Matte (fallback where LayerDiffuse fails)",
        frames=1,
        required_inputs=(),
        optional_inputs=(_MASK,),
        outputs=(_FG,),
    ),
    Method.SDXL_MATTED: MethodSpec(
        ModelFamily.SDXL,
        "(SDXL) Generate on Gray and Matte (fallback where LayerDiffuse fails)",
        frames=1,
        required_inputs=(),
        optional_inputs=(_MASK,),
        outputs=(_FG,),
    ),
}
