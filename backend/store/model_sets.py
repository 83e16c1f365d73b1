"""Opening a `ModelSet`: a base model and a source of LayerDiffuse files, on a device."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path

import torch

from backend.errors import ModelNotFound
from backend.model_set import AnyModelSet, ModelSet
from backend.store.catalogue import FileKind, ReleasedFile
from backend.store.checkpoints import load_base_model
from backend.store.demo import DEMO_NAMES, ensure_demo_set
from backend.store.download import ModelStore
from backend.store.flux_sets import is_flux_source, open_flux_demo_set, open_flux_set
from backend.store.known_failures import failing_family_warning
from backend.store.layered_sets import is_layered_source, open_layered_demo_set, open_layered_set
from backend.store.matting_models import matting_loader
from protocol import LoRAInfo, ModelFamily

log = logging.getLogger(__name__)

DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}


def resolve_device(device: str | None) -> torch.device:
    """ "auto"/None → CUDA when present, else Apple's MPS, else the CPU."""
    if device not in (None, "auto"):
        return torch.device(device)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def resolve_dtype(dtype: str | None, device: torch.device) -> torch.dtype:
    """ "auto"/None → float16 on GPUs (as the reference runs), float32 on the CPU."""
    if dtype not in (None, "auto"):
        return DTYPES[dtype]
    return torch.float32 if device.type == "cpu" else torch.float16


def open_model_set(
    *,
    base: str | Path | None = None,
    demo: bool = False,
    demo_family: ModelFamily = ModelFamily.SD15,
    models_dir: Path | None = None,
    offline: bool | None = None,
    device: str | None = None,
    dtype: str | None = None,
    cache_dir: Path | None = None,
    lora_files: Mapping[str, Path] | None = None,
    family: ModelFamily | None = None,
    demo_lookalike: str | None = None,
) -> AnyModelSet:
    """Load a base model and make the LayerDiffuse files available to the methods.

    Args:
        base: a diffusers folder, a hub repo id or one `.safetensors` checkpoint.
        demo: use the tiny demo set (built on first use, no download) instead.
        demo_family: which demo set (SD1.5- or SDXL-shaped).
        models_dir: a folder holding released files under their own names.
        offline: never contact the hub; None follows `HF_HUB_OFFLINE`.
        device / dtype: where and how to run; None picks (see `resolve_device`).
        cache_dir: the store's own cache folder (demo set, verified-file records).
        lora_files: LoRA files offered besides the catalogue's few-step ones, by name
            (`lora_folder`); a name of the catalogue given here takes this file.
        family: the family `base` is known to be (the CLI knows it from the method);
            None: FLUX when `flux_sets.is_flux_source` says so, else read from the files.
        demo_lookalike: with `demo`, the name of a checkpoint LayerDiffuse fails on
            (`known_failures`): the demo set is named so and warns as that checkpoint
            would, to show and test the matting fallback.

    Returns:
        A `ModelSet`, a `FluxModelSet` for FLUX, or a `LayeredModelSet` for
        Qwen-Image-Layered (by `demo_family`, `family` or the source).

    Raises:
        ModelNotFound, UnsupportedModel, ModelHashMismatch: from the store.
        ValueError: neither `base` nor `demo` given.
    """
    target = resolve_device(device)
    compute_dtype = resolve_dtype(dtype, target)
    wanted = demo_family if demo else family
    if wanted is None and base is not None and is_layered_source(base):
        wanted = ModelFamily.QWEN_LAYERED
    if wanted is ModelFamily.QWEN_LAYERED:
        if lora_files:
            raise ModelNotFound("Qwen-Image-Layered takes no LoRA")
        if dtype in (None, "auto") and target.type != "cpu":
            compute_dtype = torch.bfloat16  # as released; Qwen2.5-VL overflows in float16
        if demo:
            return open_layered_demo_set(cache_dir, target, compute_dtype)
        if base is None:
            raise ValueError("give a base model or ask for the demo set")
        return open_layered_set(base, device=target, dtype=compute_dtype, offline=offline)
    flux = demo_family is ModelFamily.FLUX if demo else family is ModelFamily.FLUX
    if not demo and family is None and base is not None:
        flux = is_flux_source(base)
    if flux:
        if lora_files:
            raise ModelNotFound("FLUX takes no LoRA besides LayerDiffuse-Flux's own")
        if demo:
            return open_flux_demo_set(cache_dir, target, compute_dtype)
        if base is None:
            raise ValueError("give a base model or ask for the demo set")
        store = ModelStore(models_dir=models_dir, offline=offline, state_dir=cache_dir)
        return open_flux_set(
            base,
            store,
            device=target,
            dtype=compute_dtype,
            offline=store.offline,
            cache_dir=cache_dir,
        )
    if demo:
        demo_set = ensure_demo_set(cache_dir, demo_family)
        store = ModelStore(
            models_dir=demo_set.models_dir,
            offline=True,
            catalogue=demo_set.catalogue,
            state_dir=cache_dir,
        )
        base_model = load_base_model(
            demo_set.base_dir, device=target, dtype=compute_dtype, offline=True
        )
        base_model.name = DEMO_NAMES[demo_family]
        warning_source = demo_lookalike
    elif base is not None:
        store = ModelStore(models_dir=models_dir, offline=offline, state_dir=cache_dir)
        base_model = load_base_model(base, device=target, dtype=compute_dtype, offline=offline)
        warning_source = base
    else:
        raise ValueError("give a base model or ask for the demo set")
    vae = base_model.vae
    if vae.dtype == torch.float16 and getattr(vae.config, "force_upcast", False):
        # SDXL's VAE overflows in float16 (its config says so); it runs in float32.
        vae.to(torch.float32)
    log.info(
        "loaded %s (%s) on %s as %s",
        base_model.name,
        base_model.family.value,
        target,
        compute_dtype,
    )
    offset_scales = {entry.name: entry.offset_scale for entry in store.catalogue.values()}
    files = dict(lora_files or {})
    offered = few_step_offer(store.catalogue, base_model.family)
    offered |= {name: LoRAInfo(name, base_model.family, name) for name in files}

    def load_lora(name: str) -> dict[str, torch.Tensor]:
        if name in files:
            return _read_lora_file(files[name])
        return store.load_state_dict(name)

    warning = None
    if warning_source is not None:
        warning = failing_family_warning(warning_source, base_model.family)
        if demo_lookalike is not None:
            base_model.name = f"{demo_lookalike} ({base_model.name})"
    return ModelSet(
        base=base_model,
        load_layer_file=store.load_state_dict,
        offset_scales=offset_scales,
        device=target,
        dtype=compute_dtype,
        is_demo=demo,
        offered_loras=offered,
        load_lora_file=load_lora,
        warning=warning,
        load_matting=matting_loader(store, demo=demo),
    )


def few_step_offer(
    catalogue: Mapping[str, ReleasedFile], family: ModelFamily
) -> dict[str, LoRAInfo]:
    """The catalogue's few-step LoRAs of `family`, as `welcome` offers them."""
    offer = {}
    for entry in catalogue.values():
        settings = entry.few_step
        if entry.kind is not FileKind.FEW_STEP_LORA or entry.family is not family or not settings:
            continue
        label = settings.label if entry.licence is None else f"{settings.label} ({entry.licence})"
        offer[entry.name] = LoRAInfo(
            name=entry.name,
            family=family,
            label=label,
            sampler=settings.sampler,
            steps=settings.steps,
            cfg_scale=settings.cfg_scale,
            weight=settings.weight,
        )
    return offer


def lora_folder(folder: Path) -> dict[str, Path]:
    """Every `.safetensors` file of a folder, by its stem (what a request names).

    Raises:
        ModelNotFound: the folder does not exist.
    """
    if not folder.is_dir():
        raise ModelNotFound(f"the LoRA folder {folder} does not exist")
    return {path.stem: path for path in sorted(folder.glob("*.safetensors")) if path.is_file()}


def _read_lora_file(path: Path) -> dict[str, torch.Tensor]:
    """A LoRA file's tensors; only safetensors are read (a pickle can run code)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if path.suffix != ".safetensors":
        raise ModelNotFound(f"{path}: only .safetensors LoRA files are read")
    if not path.is_file():
        raise ModelNotFound(f"the LoRA file {path} does not exist")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError) as error:
        raise ModelNotFound(f"{path} is not a readable safetensors file: {error}") from error
