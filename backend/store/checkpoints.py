"""Base models from wherever users keep them: a diffusers folder, a hub repo id, one file.

`load_base_model` takes

- a local diffusers pipeline folder (it has `model_index.json`), loaded component by
  component from safetensors weights only;
- a Hugging Face repo id (`org/name`), whose diffusers files are fetched into (or, offline,
  found in) the Hugging Face cache and then loaded like a local folder;
- one `.safetensors` checkpoint in ldm key naming, as model sites distribute them,
  converted with the shipped configs and no network at all (`backend.store.single_file`).

Pickle files (`.ckpt`, `.pt`, `.pth`, `.bin`) are never loaded.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import huggingface_hub
import torch
from huggingface_hub import constants as hub_constants
from huggingface_hub.utils import EntryNotFoundError, LocalEntryNotFoundError

from backend.errors import ModelNotFound, UnsupportedModel
from backend.model_set import BaseModel
from backend.store.configs import config_path
from backend.store.hub_errors import describe_hub_error, is_hub_error, resolve_offline
from backend.store.single_file import (
    PICKLE_ADVICE,
    PICKLE_SUFFIXES,
    detect_family,
    load_single_file,
    read_config,
    refuse_pickle,
)
from backend.store.tokenizer import END_TOKEN, SDXL_SECOND_PAD_TOKEN, clip_tokenizer
from protocol.methods import ModelFamily

if TYPE_CHECKING:
    from transformers import CLIPTokenizer

__all__ = ["detect_family", "load_base_model"]

log = logging.getLogger(__name__)

_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*$")
_PIPELINES = {
    "StableDiffusionPipeline": ModelFamily.SD15,
    "StableDiffusionXLPipeline": ModelFamily.SDXL,
}
# component -> weight file stem, per family
_WEIGHTS = {
    ModelFamily.SD15: {
        "unet": "diffusion_pytorch_model",
        "vae": "diffusion_pytorch_model",
        "text_encoder": "model",
    },
    ModelFamily.SDXL: {
        "unet": "diffusion_pytorch_model",
        "vae": "diffusion_pytorch_model",
        "text_encoder": "model",
        "text_encoder_2": "model",
    },
}
_TOKENIZER_FILES = ("vocab.json", "merges.txt", "special_tokens_map.json", "tokenizer_config.json")


def load_base_model(
    source: str | Path,
    *,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    offline: bool | None = None,
    config_root: Path | None = None,
) -> BaseModel:
    """Load an SD1.5 or SDXL base model from a folder, a hub repo id or one checkpoint file.

    Args:
        source: A diffusers folder, a Hugging Face repo id (`org/name`), or a
            `.safetensors` checkpoint file.
        device: Where the components go.
        dtype: Their parameter dtype.
        offline: For repo ids: True uses only the Hugging Face cache; None follows
            `HF_HUB_OFFLINE`. Folders and files never use the network.
        config_root: For checkpoint files: a folder with `sd15/` and `sdxl/` configs in
            place of the shipped ones.

    Returns:
        The loaded model, in eval mode without gradients.

    Raises:
        UnsupportedModel: A pickle file, a pipeline or checkpoint other than a standard
            SD1.5 or SDXL-base one, or weights only in pickle form.
        ModelNotFound: No such file or folder, and the repo id cannot be fetched now.
    """
    path = Path(source).expanduser()
    refuse_pickle(path)
    if path.is_dir():
        model = _load_diffusers_folder(path, name=path.name, device=device, dtype=dtype)
    elif path.is_file():
        if path.suffix.lower() != ".safetensors":
            raise UnsupportedModel(
                f"{path.name} is not a .safetensors checkpoint; pass a .safetensors file, "
                "a diffusers folder or a hugging face repo id"
            )
        model = load_single_file(path, device=device, dtype=dtype, config_root=config_root)
    elif isinstance(source, str) and _REPO_ID.match(source) and not source.endswith(".safetensors"):
        folder = _fetch_repo(source, offline=resolve_offline(offline))
        model = _load_diffusers_folder(folder, name=source, device=device, dtype=dtype)
    else:
        raise ModelNotFound(
            f"base model {str(source)!r} not found: no such file or folder, and not a hugging "
            "face repo id like 'org/name'"
        )
    log.info("loaded %s base model %s", model.family.value, model.name)
    return model


def _family_of_folder(folder: Path) -> ModelFamily:
    index_path = folder / "model_index.json"
    if not index_path.is_file():
        raise UnsupportedModel(
            f"{folder} has no model_index.json, so it is not a diffusers pipeline folder; "
            "pass a diffusers folder, a hugging face repo id or a .safetensors checkpoint"
        )
    class_name = read_config(index_path).get("_class_name")
    family = _PIPELINES.get(str(class_name))
    if family is None:
        raise UnsupportedModel(
            f"{folder} holds a {class_name} pipeline; layerdiffuse loads "
            "StableDiffusionPipeline (sd1.5) and StableDiffusionXLPipeline (sdxl base) folders"
        )
    unet_config = read_config(folder / "unet" / "config.json")
    if family is ModelFamily.SD15 and unet_config.get("cross_attention_dim") == 1024:
        raise UnsupportedModel(
            f"{folder} is a stable diffusion 2.x pipeline; layerdiffuse supports sd1.5 and sdxl"
        )
    if unet_config.get("in_channels", 4) != 4:
        raise UnsupportedModel(
            f"{folder} has a unet with {unet_config.get('in_channels')} input channels (an "
            "inpainting or instruction model); layerdiffuse needs a standard 4-channel model"
        )
    scheduler_path = folder / "scheduler" / "scheduler_config.json"
    if scheduler_path.is_file() and (
        read_config(scheduler_path).get("prediction_type") == "v_prediction"
    ):
        raise UnsupportedModel(
            f"{folder} is a v-prediction model; layerdiffuse was trained on epsilon-prediction "
            "sd1.5 and sdxl models"
        )
    return family


def _weights_variant(folder: Path, component: str, stem: str) -> str | None:
    """None for `stem.safetensors`, `fp16` for `stem.fp16.safetensors`; refuse pickles."""
    directory = folder / component
    for variant, infix in ((None, ""), ("fp16", ".fp16")):
        single = directory / f"{stem}{infix}.safetensors"
        sharded = directory / f"{stem}{infix}.safetensors.index.json"
        if single.is_file() or sharded.is_file():
            return variant
    found = sorted(directory.iterdir()) if directory.is_dir() else []
    pickles = [path.name for path in found if path.suffix.lower() in PICKLE_SUFFIXES]
    if pickles:
        raise UnsupportedModel(
            f"{directory} holds only pickle weights ({', '.join(pickles)}); {PICKLE_ADVICE}"
        )
    raise UnsupportedModel(
        f"{directory} holds no {stem}.safetensors; the folder is not a complete diffusers pipeline"
    )


def _folder_tokenizer(folder: Path, pad_token: str) -> CLIPTokenizer:
    from transformers import CLIPTokenizer

    if (folder / "vocab.json").is_file() and (folder / "merges.txt").is_file():
        return CLIPTokenizer.from_pretrained(str(folder), local_files_only=True)
    log.info("no tokenizer files in %s; using the built-in clip tokenizer", folder)
    return clip_tokenizer(pad_token=pad_token)


def _load_diffusers_folder(
    folder: Path, *, name: str, device: torch.device | str, dtype: torch.dtype
) -> BaseModel:
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from diffusers.utils import is_accelerate_available
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    family = _family_of_folder(folder)
    variants = {
        component: _weights_variant(folder, component, stem)
        for component, stem in _WEIGHTS[family].items()
    }
    log.info("loading %s diffusers folder %s", family.value, folder)
    classes = {
        "unet": UNet2DConditionModel,
        "vae": AutoencoderKL,
        "text_encoder": CLIPTextModel,
        "text_encoder_2": CLIPTextModelWithProjection,
    }
    models = {}
    for component, variant in variants.items():
        options: dict[str, Any] = {
            "use_safetensors": True,
            "variant": variant,
            "local_files_only": True,
        }
        diffusers_model = component in ("unet", "vae")
        if diffusers_model:
            # diffusers casts while loading; its `.to(dtype=...)` warns about fp32 modules
            options |= {"torch_dtype": dtype, "low_cpu_mem_usage": is_accelerate_available()}
        model = classes[component].from_pretrained(str(folder), subfolder=component, **options)
        if diffusers_model:
            model.to(device=device)
        else:
            model.to(device=device, dtype=dtype)
        model.eval()
        model.requires_grad_(False)
        models[component] = model
    scheduler_path = folder / "scheduler" / "scheduler_config.json"
    if not scheduler_path.is_file():
        scheduler_path = config_path(family, "scheduler")
    sdxl = family is ModelFamily.SDXL
    return BaseModel(
        family=family,
        name=name,
        unet=models["unet"],
        vae=models["vae"],
        text_encoder=models["text_encoder"],
        tokenizer=_folder_tokenizer(folder / "tokenizer", END_TOKEN),
        scheduler_config=read_config(scheduler_path),
        text_encoder_2=models.get("text_encoder_2"),
        tokenizer_2=(
            _folder_tokenizer(folder / "tokenizer_2", SDXL_SECOND_PAD_TOKEN) if sdxl else None
        ),
    )


class _RepoFetcher:
    """Fetches single files of one hub repo into the Hugging Face cache."""

    def __init__(self, repo_id: str, *, offline: bool) -> None:
        self.repo_id = repo_id
        self.offline = offline

    def get(self, filename: str, *, required: bool = True) -> Path | None:
        try:
            return Path(
                str(
                    huggingface_hub.hf_hub_download(
                        self.repo_id, filename, local_files_only=self.offline
                    )
                )
            )
        except Exception as exc:
            if not is_hub_error(exc):
                raise
            # offline, a missing cache entry means "not there"; online it means the hub
            # could not be reached, which is an error even for optional files
            absent = isinstance(exc, EntryNotFoundError) and (
                self.offline or not isinstance(exc, LocalEntryNotFoundError)
            )
            if absent and not required:
                return None
            raise self._not_found(filename, exc) from exc

    def get_weights(self, component: str, stem: str) -> Path:
        for infix in ("", ".fp16"):
            path = self.get(f"{component}/{stem}{infix}.safetensors", required=False)
            if path is not None:
                return path
        raise self._not_found(f"{component}/{stem}.safetensors", None)

    def _not_found(self, filename: str, exc: BaseException | None) -> ModelNotFound:
        if self.offline:
            return ModelNotFound(
                f"{self.repo_id!r} is no local file or folder, and as a hugging face repo its "
                f"{filename} is not in the cache {hub_constants.HF_HUB_CACHE} while downloads "
                "are off (offline mode); load it once on a connected machine, or pass a local "
                "diffusers folder or a .safetensors checkpoint, or unset HF_HUB_OFFLINE"
            )
        reason = describe_hub_error(exc) if exc is not None else "no safetensors weights there"
        return ModelNotFound(
            f"{self.repo_id!r} is no local file or folder, and as a hugging face repo its "
            f"{filename} could not be fetched: {reason}; check the name and the network, or "
            "pass a local diffusers folder or a .safetensors checkpoint"
        )


def _fetch_repo(repo_id: str, *, offline: bool) -> Path:
    """Bring the diffusers files of a hub repo into the cache; return its snapshot folder."""
    fetcher = _RepoFetcher(repo_id, offline=offline)
    index_path = fetcher.get("model_index.json")
    assert index_path is not None
    family = _PIPELINES.get(str(read_config(index_path).get("_class_name")))
    if family is None:
        return index_path.parent  # the folder loader says what it is
    for component, stem in _WEIGHTS[family].items():
        fetcher.get(f"{component}/config.json")
        fetcher.get_weights(component, stem)
    fetcher.get("scheduler/scheduler_config.json", required=False)
    tokenizers = ["tokenizer", "tokenizer_2"] if family is ModelFamily.SDXL else ["tokenizer"]
    for tokenizer in tokenizers:
        for filename in _TOKENIZER_FILES:
            fetcher.get(f"{tokenizer}/{filename}", required=False)
    return index_path.parent
