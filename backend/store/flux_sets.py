"""Opening FLUX.1 with LayerDiffuse-Flux: a diffusers folder or hub id, or the demo set.

The base comes as diffusers publishes FLUX.1-dev (`black-forest-labs/FLUX.1-dev`:
`transformer/`, `vae/`, `text_encoder/` CLIP, `text_encoder_2/` T5, their tokenizers and
`scheduler/`), from a local folder or the hub (offline as the SD bases: only what is
cached). LayerDiffuse-Flux's two files come through the store by catalogue name, hash
checked; the `.pth` is converted once to safetensors in the store's cache and only the
conversion is read afterwards. The LoRA is merged into the transformer when the set
opens (originals kept in host memory: its patched linears are ~24 GB in bf16).

Memory on a GPU (bf16, FLUX.1-dev's real sizes): the transformer 23.8 GB, T5-XXL 9.5 GB,
CLIP 0.25 GB, the VAE 0.17 GB and the transparent decoder 0.21 GB: about 34 GB with
everything on the card (an 80 GB card, or a 48 GB one). For a 24 GB card the plan is to
keep the text encoders on the CPU (T5 runs once per prompt) and the transformer in fp8
storage (11.9 GB); neither is implemented yet, so a 24 GB card does not run FLUX here.
"""

from __future__ import annotations

import json
import logging
from dataclasses import replace
from pathlib import Path

import torch

from backend.errors import ModelNotFound
from backend.layerdiffuse.flux_weights import (
    attach_flux_lora,
    load_flux_transparent_decoder,
    load_flux_transparent_encoder,
    load_released_pickle,
    parse_flux_lora,
    split_transparent_vae,
)
from backend.model_set import FluxBase, FluxModelSet
from backend.store.catalogue import FLUX_FILES
from backend.store.download import ModelStore, default_cache_dir
from backend.store.flux_demo import FLUX_DEMO_NAME, FluxDemoSet, build_flux_demo_set

log = logging.getLogger(__name__)

FLUX_DEV = "black-forest-labs/FLUX.1-dev"
FLUX_DEMO_VERSION = 1


def is_flux_source(source: str | Path) -> bool:
    """Whether a base model source is FLUX: a diffusers folder whose `model_index.json`
    names a Flux pipeline, or a hub id naming FLUX (`…/FLUX.1-dev`, `…/flux-…`)."""
    path = Path(source)
    index = path / "model_index.json"
    if index.is_file():
        try:
            return str(json.loads(index.read_text()).get("_class_name", "")).startswith("Flux")
        except (OSError, ValueError):
            return False
    return not path.exists() and "flux" in str(source).lower()


def open_flux_demo_set(
    cache_dir: Path | None, device: torch.device, dtype: torch.dtype
) -> FluxModelSet:
    """The tiny random FLUX set (built on first use), opened as the real model is."""
    root = (cache_dir or default_cache_dir()) / f"demo-flux-v{FLUX_DEMO_VERSION}"
    return open_flux_demo_files(build_flux_demo_set(root), root, device, dtype)


def open_flux_demo_files(
    demo: FluxDemoSet, cache_dir: Path, device: torch.device, dtype: torch.dtype
) -> FluxModelSet:
    """A built FLUX demo set through `open_flux_set`: its folder as the base, its two files
    through a store whose catalogue carries their sha256 (as the SD demo set is loaded)."""
    hashes = {
        "flux_transparent_vae": demo.transparent_vae_sha256,
        "flux_layerlora": demo.lora_sha256,
    }
    catalogue = {
        name: replace(entry, sha256=hashes[name], description="demo: " + entry.description)
        for name, entry in FLUX_FILES.items()
    }
    store = ModelStore(
        models_dir=demo.lora.parent, offline=True, catalogue=catalogue, state_dir=cache_dir
    )
    models = open_flux_set(
        demo.base_dir, store, device=device, dtype=dtype, offline=True, cache_dir=cache_dir
    )
    models.base.name = FLUX_DEMO_NAME
    models.is_demo = True
    return models


def open_flux_set(
    source: str | Path,
    store: ModelStore,
    *,
    device: torch.device,
    dtype: torch.dtype,
    offline: bool,
    cache_dir: Path | None = None,
) -> FluxModelSet:
    """FLUX.1 from a diffusers folder or hub id, with LayerDiffuse-Flux's files merged.

    Raises:
        ModelNotFound: a part of the base is missing (offline: not cached).
        ModelHashMismatch, ModelNotFound: from the store, for the two released files.
    """
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxTransformer2DModel
    from transformers import CLIPTextModel, CLIPTokenizer, T5EncoderModel, T5TokenizerFast

    where = {"local_files_only": offline}
    try:
        transformer = FluxTransformer2DModel.from_pretrained(
            source, subfolder="transformer", torch_dtype=dtype, **where
        )
        vae = AutoencoderKL.from_pretrained(source, subfolder="vae", torch_dtype=dtype, **where)
        text_encoder = CLIPTextModel.from_pretrained(
            source, subfolder="text_encoder", dtype=dtype, **where
        )
        text_encoder_2 = T5EncoderModel.from_pretrained(
            source, subfolder="text_encoder_2", dtype=dtype, **where
        )
        tokenizer = CLIPTokenizer.from_pretrained(source, subfolder="tokenizer", **where)
        tokenizer_2 = T5TokenizerFast.from_pretrained(source, subfolder="tokenizer_2", **where)
        scheduler_config = dict(
            FlowMatchEulerDiscreteScheduler.load_config(source, subfolder="scheduler", **where)
        )
    except OSError as error:
        raise ModelNotFound(f"cannot load FLUX from {source}: {error}") from error

    vae_entry = store.entry("flux_transparent_vae")
    if vae_entry.sha256 is None:  # the conversion is keyed by it: never unpickle unchecked
        raise ModelNotFound(f"{vae_entry.name}: no sha256 is known, so it is not read")
    pickle_path = store.fetch(vae_entry.name)
    converted = (cache_dir or default_cache_dir()) / "flux_transparent_vae.safetensors"
    parts = split_transparent_vae(load_released_pickle(pickle_path, vae_entry.sha256, converted))
    decoder = load_flux_transparent_decoder(parts.decoder).to(device, dtype).requires_grad_(False)
    encoder = load_flux_transparent_encoder(parts.encoder).to(device, dtype).requires_grad_(False)
    for module in (transformer, vae, text_encoder, text_encoder_2):
        module.to(device).eval().requires_grad_(False)
    shapes = {name: tuple(p.shape) for name, p in transformer.named_parameters()}
    patches = parse_flux_lora(store.load_state_dict("flux_layerlora"), shapes)
    layer_lora = attach_flux_lora(transformer, patches, 1.0, originals_on="cpu")
    base = FluxBase(
        name=str(source).rstrip("/").rsplit("/", 1)[-1],
        transformer=transformer,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        text_encoder_2=text_encoder_2,
        tokenizer_2=tokenizer_2,
        scheduler_config=scheduler_config,
    )
    log.info("loaded FLUX %s on %s as %s, LayerDiffuse-Flux merged", base.name, device, dtype)
    return FluxModelSet(
        base=base,
        decoder=decoder,
        encoder=encoder,
        layer_lora=layer_lora,
        device=device,
        dtype=dtype,
    )
