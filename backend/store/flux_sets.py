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
everything on the card (an 80 GB card, or a 48 GB one). On a smaller CUDA card (under
`WHOLE_SET_BYTES`) the set opens in its 24 GB plan (`small_card`): the text encoders stay
on the CPU (T5 runs once per prompt; ~10 GB of RAM) and the transformer is stored in fp8
(`float8_e4m3fn`, 12.0 GB, computing in the set's dtype layer by layer: diffusers'
layerwise casting; the embedders and the output head stay in full precision, `FP8_KEPT`). The
LoRA is merged in bf16 first, on the CPU, and the merged weights are what is cast, so
the layer model survives the cast as well as the base does. fp8 storage changes the
pictures slightly (tests/backend/flux/test_flux_small_card.py bounds it on the demo);
neither its quality nor its speed on a real 24 GB card has been measured yet.
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
WHOLE_SET_BYTES = 40 * 1024**3
"""Card memory from which the whole FLUX set stays on the card in the set's dtype."""
FP8_STORAGE = torch.float8_e4m3fn
"""The transformer's storage dtype in the 24 GB plan."""
FP8_KEPT = (
    "pos_embed",
    "x_embedder",
    "context_embedder",
    "time_text_embed",
    "norm_out",
    "^proj_out$",
)
"""Modules that stay in the compute dtype: the embedders and the output head (0.1 % of the
weights). The blocks' modulation linears (`norm1.linear`, 3.2 B parameters) are stored in
fp8 as the rest: diffusers' own default keeps every module named `norm*`, which leaves
15.2 GB instead of 12.0 GB (measured on the real config built on `meta`)."""


def wants_small_card_plan(device: torch.device, small_card: bool | None) -> bool:
    """`small_card` as asked, or, left to us (None), on for a CUDA card under
    `WHOLE_SET_BYTES`."""
    if small_card is not None:
        return small_card
    if device.type != "cuda":
        return False
    return torch.cuda.get_device_properties(device).total_memory < WHOLE_SET_BYTES


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
    demo: FluxDemoSet,
    cache_dir: Path,
    device: torch.device,
    dtype: torch.dtype,
    small_card: bool | None = None,
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
        demo.base_dir,
        store,
        device=device,
        dtype=dtype,
        offline=True,
        cache_dir=cache_dir,
        small_card=small_card,
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
    small_card: bool | None = None,
) -> FluxModelSet:
    """FLUX.1 from a diffusers folder or hub id, with LayerDiffuse-Flux's files merged.

    Args:
        small_card: the 24 GB plan (text encoders on the CPU, fp8 transformer); None
            decides by the card's memory (`wants_small_card_plan`).

    Raises:
        ModelNotFound: a part of the base is missing (offline: not cached).
        ModelHashMismatch, ModelNotFound: from the store, for the two released files.
    """
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxTransformer2DModel
    from diffusers.hooks import apply_layerwise_casting
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
    small = wants_small_card_plan(device, small_card)
    text_device = torch.device("cpu") if small else device
    for module, where in (
        (vae, device),
        (text_encoder, text_device),
        (text_encoder_2, text_device),
        (transformer, torch.device("cpu") if small else device),
    ):
        module.to(where).eval().requires_grad_(False)
    shapes = {name: tuple(p.shape) for name, p in transformer.named_parameters()}
    patches = parse_flux_lora(store.load_state_dict("flux_layerlora"), shapes)
    layer_lora = attach_flux_lora(transformer, patches, 1.0, originals_on="cpu")
    if small:  # merged in the set's dtype, then stored in fp8, then onto the card
        apply_layerwise_casting(
            transformer,
            storage_dtype=FP8_STORAGE,
            compute_dtype=dtype,
            skip_modules_pattern=FP8_KEPT,
        )
        transformer.to(device)
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
    plan = ", the 24 GB plan (text encoders on the CPU, fp8 transformer)" if small else ""
    log.info(
        "loaded FLUX %s on %s as %s, LayerDiffuse-Flux merged%s", base.name, device, dtype, plan
    )
    return FluxModelSet(
        base=base,
        decoder=decoder,
        encoder=encoder,
        layer_lora=layer_lora,
        device=device,
        dtype=dtype,
    )
