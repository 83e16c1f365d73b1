"""One-file `.safetensors` checkpoints as model sites distribute them, read with no hub.

Such a file holds the UNet, the VAE and the text encoder(s) in the original (ldm) key
naming, and nothing else: no configs, no tokenizer. The family is told from the key names
in the file's header alone; the components are built from the configs shipped in
`backend/store/configs/`, their weights converted with diffusers' single-file converters
and loaded strictly (every key used, none missing, every shape equal); the tokenizers come
from `backend.store.tokenizer`. Pickled checkpoints are refused, never opened.

Key prefixes:

| component | SD1.5 | SDXL |
|---|---|---|
| UNet | `model.diffusion_model.` | `model.diffusion_model.` |
| VAE | `first_stage_model.` | `first_stage_model.` |
| CLIP ViT-L | `cond_stage_model.transformer.` | `conditioner.embedders.0.transformer.` |
| OpenCLIP bigG | | `conditioner.embedders.1.model.` |
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch

from backend.errors import ModelError, UnsupportedModel
from backend.model_set import BaseModel
from backend.store.configs import config_path
from backend.store.tokenizer import SDXL_SECOND_PAD_TOKEN, clip_tokenizer
from protocol.methods import ModelFamily

log = logging.getLogger(__name__)

PICKLE_SUFFIXES = frozenset({".ckpt", ".pt", ".pth", ".bin", ".pkl", ".pickle"})
PICKLE_ADVICE = (
    "only .safetensors files are loaded, because pickle files can run code when opened; "
    "download the .safetensors version from the model page, or convert the file on a "
    "machine you trust (load it with torch and write it with safetensors.torch.save_file)"
)

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
SD15_CLIP_PREFIX = "cond_stage_model.transformer."
SD2_OPENCLIP_PREFIX = "cond_stage_model.model."
SDXL_CLIP_PREFIX = "conditioner.embedders.0.transformer."
SDXL_OPENCLIP_PREFIX = "conditioner.embedders.1.model."
SDXL_REFINER_PREFIX = "conditioner.embedders.0.model."
CONV_IN_KEY = UNET_PREFIX + "input_blocks.0.0.weight"
V_PREDICTION_KEYS = ("v_pred", "edm_vpred.sigma_max")


def refuse_pickle(path: Path) -> None:
    """Raise for a file name that says pickle.

    Args:
        path: A checkpoint path (it need not exist).

    Raises:
        UnsupportedModel: The suffix is one of `PICKLE_SUFFIXES`.
    """
    if path.suffix.lower() in PICKLE_SUFFIXES:
        raise UnsupportedModel(
            f"{path.name} is a pickle checkpoint ({path.suffix}); {PICKLE_ADVICE}"
        )


def _read_header(path: Path) -> tuple[set[str], list[int] | None]:
    """The tensor names of a safetensors file and the shape of its UNet's conv_in."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            keys = set(handle.keys())
            conv_in = (
                list(handle.get_slice(CONV_IN_KEY).get_shape()) if CONV_IN_KEY in keys else None
            )
    except Exception as exc:  # safetensors raises its own error type for a bad header
        raise UnsupportedModel(f"{path.name} is not a readable safetensors file ({exc})") from exc
    return keys, conv_in


def detect_family(path: str | Path) -> ModelFamily:
    """Tell SD1.5 from SDXL by the key names in a checkpoint's header; no tensor is loaded.

    Args:
        path: A `.safetensors` checkpoint in ldm key naming.

    Returns:
        The family.

    Raises:
        UnsupportedModel: A pickle file, an unreadable file, or a layout other than a
            standard 4-channel epsilon-prediction SD1.5 or SDXL-base checkpoint (SD2.x,
            v-prediction, SDXL refiner, inpainting, a LoRA or a lone component).
    """
    path = Path(path)
    refuse_pickle(path)
    keys, conv_in = _read_header(path)

    def has(prefix: str) -> bool:
        return any(key.startswith(prefix) for key in keys)

    name = path.name
    if any(key in keys for key in V_PREDICTION_KEYS):
        raise UnsupportedModel(
            f"{name} is a v-prediction model; layerdiffuse was trained on epsilon-prediction "
            "sd1.5 and sdxl models"
        )
    if not has(UNET_PREFIX):
        raise UnsupportedModel(
            f"{name} holds no stable diffusion unet (no model.diffusion_model.* keys); a full "
            "sd1.5 or sdxl checkpoint is needed, not a lora, vae or embedding"
        )
    if has(SD2_OPENCLIP_PREFIX):
        raise UnsupportedModel(
            f"{name} is a stable diffusion 2.x checkpoint (open clip text encoder under "
            "cond_stage_model.model); layerdiffuse supports sd1.5 and sdxl"
        )
    if has(SDXL_REFINER_PREFIX) and not has(SDXL_CLIP_PREFIX):
        raise UnsupportedModel(f"{name} is an sdxl refiner; layerdiffuse needs an sdxl base model")
    if has(SDXL_CLIP_PREFIX) and has(SDXL_OPENCLIP_PREFIX):
        family = ModelFamily.SDXL
    elif has(SD15_CLIP_PREFIX):
        family = ModelFamily.SD15
    else:
        raise UnsupportedModel(
            f"{name} has a unet but no known text encoder keys; it is neither an sd1.5 nor "
            "an sdxl checkpoint"
        )
    if not has(VAE_PREFIX):
        raise UnsupportedModel(
            f"{name} holds no vae (first_stage_model.*); use a checkpoint with its vae baked in"
        )
    if conv_in is not None and len(conv_in) == 4 and conv_in[1] != 4:
        raise UnsupportedModel(
            f"{name} has a unet with {conv_in[1]} input channels (an inpainting or "
            "instruction model); layerdiffuse needs a standard 4-channel model"
        )
    return family


def read_config(path: Path) -> dict[str, Any]:
    """Read one JSON config file.

    Args:
        path: The file.

    Returns:
        Its object.

    Raises:
        ModelError: The file is missing or not a JSON object.
    """
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelError(f"cannot read config {path} ({exc})") from exc
    if not isinstance(data, dict):
        raise ModelError(f"config {path} is not a json object")
    return data


def _text_encoder_state(checkpoint: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    from diffusers.loaders.single_file_utils import convert_ldm_clip_checkpoint

    return {
        key: tensor
        for key, tensor in convert_ldm_clip_checkpoint(checkpoint).items()
        # a non-persistent buffer in current transformers, rebuilt after loading
        if not key.endswith("position_ids")
    }


def _match_text_model_prefix(
    state: dict[str, torch.Tensor], model: torch.nn.Module
) -> dict[str, torch.Tensor]:
    """Name CLIP keys as this transformers version does, with or without `text_model.`.

    Checkpoints say `text_model.encoder...`; transformers 5 names `CLIPTextModel`'s own
    parameters `encoder...` (and renames on `from_pretrained`, which is not used here).
    """
    expected = set(model.state_dict().keys())
    prefix = "text_model."
    matched: dict[str, torch.Tensor] = {}
    for key, tensor in state.items():
        if key not in expected and key.startswith(prefix) and key[len(prefix) :] in expected:
            key = key[len(prefix) :]
        elif key not in expected and prefix + key in expected:
            key = prefix + key
        matched[key] = tensor
    return matched


def _fill_position_ids(model: torch.nn.Module, component: str, device: torch.device | str) -> None:
    """Give CLIP's non-persistent position ids a value after a meta-device build."""
    for name, buffer in list(model.named_buffers()):
        if not buffer.is_meta:
            continue
        if not name.endswith("position_ids"):
            raise ModelError(f"the {component} has no value for buffer {name} after loading")
        owner_name, _, attribute = name.rpartition(".")
        length = buffer.shape[-1]
        positions = torch.arange(length, device=device).expand((1, length)).contiguous()
        setattr(model.get_submodule(owner_name), attribute, positions)


def assemble(
    model: torch.nn.Module,
    state: dict[str, torch.Tensor],
    *,
    component: str,
    source: str,
    device: torch.device | str,
    dtype: torch.dtype,
) -> None:
    """Put converted weights into a model built on the meta device, strictly.

    Each tensor is moved to `device` and floating-point ones cast to `dtype` before it
    becomes the model's parameter, so no full-size copy in another dtype is made.

    Args:
        model: The component, built under `torch.device("meta")`; filled in place, left
            in eval mode without gradients.
        state: Its full state dict, diffusers/transformers key naming.
        component: Its name in messages, e.g. `unet`.
        source: The checkpoint's name in messages.
        device: Where the weights go.
        dtype: The dtype of floating-point weights.

    Raises:
        UnsupportedModel: A key is missing or left over, or a shape differs.
    """
    state = {
        key: tensor.to(device=device, dtype=dtype if tensor.is_floating_point() else None)
        for key, tensor in state.items()
    }
    try:
        result = model.load_state_dict(state, strict=False, assign=True)
    except RuntimeError as exc:
        detail = " ".join(str(exc).split())[:300]
        raise UnsupportedModel(
            f"the {component} weights of {source} do not fit its architecture: {detail}"
        ) from exc
    missing, unexpected = sorted(result.missing_keys), sorted(result.unexpected_keys)
    if missing or unexpected:
        raise UnsupportedModel(
            f"the {component} weights of {source} do not match the expected layout: "
            f"{len(missing)} missing (first: {missing[:3]}), "
            f"{len(unexpected)} unexpected (first: {unexpected[:3]})"
        )
    _fill_position_ids(model, component, device)
    model.eval()
    model.requires_grad_(False)


def load_single_file(
    path: Path,
    *,
    device: torch.device | str,
    dtype: torch.dtype,
    config_root: Path | None = None,
) -> BaseModel:
    """Build a base model from one ldm-keyed `.safetensors` checkpoint, with no network.

    Args:
        path: The checkpoint.
        device: Where the components go.
        dtype: Their parameter dtype.
        config_root: A folder laid out like the shipped configs (`sd15/unet/config.json`,
            ...) to use in their place.

    Returns:
        The model, named after the file's stem.

    Raises:
        UnsupportedModel: See `detect_family`; or the weights do not fit the configs.
    """
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from diffusers.loaders.single_file_utils import (
        convert_ldm_unet_checkpoint,
        convert_ldm_vae_checkpoint,
        convert_open_clip_checkpoint,
    )
    from safetensors.torch import load_file
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    family = detect_family(path)

    def config(component: str) -> dict[str, Any]:
        return read_config(config_path(family, component, root=config_root))

    unet_config = config("unet")
    vae_config = config("vae")
    text_config = CLIPTextConfig.from_dict(config("text_encoder"))
    log.info("loading %s checkpoint %s", family.value, path)
    checkpoint = load_file(str(path))
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(unet_config)
        vae = AutoencoderKL.from_config(vae_config)
        text_encoder = CLIPTextModel(text_config)
        text_encoder_2 = None
        if family is ModelFamily.SDXL:
            config_2 = CLIPTextConfig.from_dict(config("text_encoder_2"))
            text_encoder_2 = CLIPTextModelWithProjection(config_2)
    try:
        states = {
            "unet": convert_ldm_unet_checkpoint(checkpoint, unet_config),
            "vae": convert_ldm_vae_checkpoint(checkpoint, vae_config),
            "text encoder": _text_encoder_state(checkpoint),
        }
        if text_encoder_2 is not None:
            states["second text encoder"] = convert_open_clip_checkpoint(
                text_encoder_2, checkpoint, prefix=SDXL_OPENCLIP_PREFIX
            )
    except (KeyError, IndexError, ValueError) as exc:
        raise UnsupportedModel(
            f"{path.name} does not convert as an {family.value} checkpoint "
            f"({type(exc).__name__}: {exc})"
        ) from exc
    del checkpoint
    models: dict[str, torch.nn.Module | None] = {
        "unet": unet,
        "vae": vae,
        "text encoder": text_encoder,
        "second text encoder": text_encoder_2,
    }
    for component, state in states.items():
        model = models[component]
        assert model is not None
        if "text encoder" in component:
            state = _match_text_model_prefix(state, model)
        assemble(model, state, component=component, source=path.name, device=device, dtype=dtype)
    return BaseModel(
        family=family,
        name=path.stem,
        unet=unet,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=clip_tokenizer(),
        scheduler_config=config("scheduler"),
        text_encoder_2=text_encoder_2,
        tokenizer_2=clip_tokenizer(pad_token=SDXL_SECOND_PAD_TOKEN) if text_encoder_2 else None,
    )
