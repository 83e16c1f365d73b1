"""FLUX.1 LayerDiffuse's released files: the `.pth` made safe, and the LoRA merged reversibly.

`TransparentVAE.pth` is a pickle (bf16 tensors in an `OrderedDict`). It is read once,
only after its sha256 matched the expected value, with `torch.load(weights_only=True)`
(which refuses any class but tensors and plain containers), checked to hold tensors
only, and written as a `.safetensors` file carrying the source's sha256 in its metadata.
From then on only that file is read. Nothing here ever unpickles without
`weights_only=True`.

`layerlora.safetensors` (1.23 GB) is a LoRA for `FluxTransformer2DModel`. Two key
layouts are read, each into per-parameter patches keyed by the diffusers parameter name:

- kohya / sd-scripts, on BFL's module names: `lora_unet_<module>.lora_down.weight`
  (rank, in), `.lora_up.weight` (out, rank), `.alpha` (scalar; scale `alpha / rank`,
  rank when absent). Fused BFL modules are split over the diffusers parameters they
  became (`double_blocks_N_img_attn_qkv` → `attn.to_q/to_k/to_v`, `single_blocks_N_linear1`
  → `attn.to_q/to_k/to_v` + `proj_mlp`): each part takes its rows of `lora_up` and the
  whole `lora_down`, which is exactly the fused update restricted to those rows;
  `final_layer_adaLN_modulation_1` has its (shift, scale) halves swapped to diffusers'
  (scale, shift). The mapping is diffusers' own (`lora_conversion_utils`,
  `_convert_kohya_flux_lora_to_diffusers`).
- diffusers / PEFT: `transformer.<module>.lora_A.weight` (down), `.lora_B.weight` (up),
  optional `.alpha`; scale 1 without it.

The released file's size, 1.23 GB, is what the kohya layout on every linear layer of the
57 blocks at rank 128 in bf16 weighs (`flux_lora_key_shapes`: 612,630,528 parameters,
1,225,261,056 bytes); no diffusers-layout target set at a usual rank comes near. Its
header could not be read here: the layout is an inference, and both are accepted.

Merging is the SDXL handle's (`weight_patches`): in float32, `W + weight·scale·(up @ down)`,
cast back, as new parameters swapped in; the originals are kept and put back by `detach`,
bit-exact. `originals_on="cpu"` keeps them in host memory (FLUX.1-dev's patched linears
are ~11.9 B parameters, 23.8 GB in bf16).
"""

from __future__ import annotations

import hashlib
import math
import os
import pickle
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from .flux_transparent_vae import FluxTransparentVAEDecoder, FluxTransparentVAEEncoder
from .released_weights import decoder_layout, load_strict
from .sdxl_keys import LoRAPatch
from .weight_patches import OriginalsPlace, ParameterSwap, merged_tensor

SOURCE_SHA256_KEY = "source_sha256"
"""Metadata key of a converted `.safetensors` file: the sha256 of the `.pth` it came from."""

TRANSPARENT_VAE_PARTS = ("decoder", "encoder", "sd_vae")
"""The prefixes of `TransparentVAE.pth`'s keys: the two LayerDiffuse models and the VAE copy."""

_HASH_CHUNK_BYTES = 8 * 1024 * 1024


# --- TransparentVAE.pth -------------------------------------------------------------------


def file_sha256(path: Path) -> str:
    """The lowercase hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        while chunk := stream.read(_HASH_CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def convert_pickle_to_safetensors(
    pickle_path: str | Path, expected_sha256: str, safetensors_path: str | Path
) -> Path:
    """Check a released `.pth` against its sha256, read its tensors safely, save safetensors.

    Args:
        pickle_path: the `.pth` file.
        expected_sha256: its lowercase hex sha256 (from the catalogue); checked before
            a byte of it is unpickled.
        safetensors_path: where to write; replaced atomically, parents created.

    Returns:
        `safetensors_path`.

    Raises:
        ValueError: the sha256 differs, the pickle holds anything but tensors (refused
            by `weights_only` or found after), or it is not a flat name → tensor mapping.
    """
    source, target = Path(pickle_path), Path(safetensors_path)
    expected = expected_sha256.lower()
    actual = file_sha256(source)
    if actual != expected:
        raise ValueError(
            f"{source.name}: sha256 {actual} does not match the expected {expected}; "
            "the file was not unpickled"
        )
    try:
        loaded = torch.load(source, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        first_line = str(error).strip().splitlines()[0]
        raise ValueError(
            f"{source.name}: refused, the pickle holds objects other than tensors ({first_line})"
        ) from error
    if not isinstance(loaded, Mapping):
        raise ValueError(
            f"{source.name}: refused, expected a mapping of names to tensors, "
            f"got {type(loaded).__name__}"
        )
    tensors: dict[str, torch.Tensor] = {}
    for key, value in loaded.items():
        if not isinstance(key, str) or not isinstance(value, torch.Tensor):
            raise ValueError(
                f"{source.name}: refused, entry {key!r} is a {type(value).__name__}, not a tensor"
            )
        tensors[key] = value.detach().contiguous().clone()  # no shared storage in safetensors
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = target.with_name(f"{target.name}.{os.getpid()}.tmp")
    save_file(tensors, str(temporary), metadata={SOURCE_SHA256_KEY: expected})
    os.replace(temporary, target)
    return target


def load_released_pickle(
    pickle_path: str | Path | None,
    expected_sha256: str,
    safetensors_path: str | Path,
    device: str | torch.device = "cpu",
) -> dict[str, torch.Tensor]:
    """The tensors of a released `.pth`, read from its safetensors conversion.

    The conversion at `safetensors_path` is used when its metadata names
    `expected_sha256` as its source; otherwise the `.pth` is converted first
    (`convert_pickle_to_safetensors`).

    Args:
        pickle_path: the `.pth`; may be None when the conversion already exists.
        expected_sha256: the `.pth`'s sha256.
        safetensors_path: the conversion's path (in the store's cache).
        device: where the tensors go.

    Raises:
        ValueError: as `convert_pickle_to_safetensors`, or no conversion and no `.pth`.
    """
    target = Path(safetensors_path)
    if _converted_from(target) != expected_sha256.lower():
        if pickle_path is None:
            raise ValueError(
                f"{target.name}: no conversion of the source with sha256 {expected_sha256} "
                "and no .pth to convert"
            )
        convert_pickle_to_safetensors(pickle_path, expected_sha256, target)
    return load_file(str(target), device=str(device))


def _converted_from(path: Path) -> str | None:
    if not path.is_file():
        return None
    with safe_open(str(path), framework="pt") as handle:
        return (handle.metadata() or {}).get(SOURCE_SHA256_KEY)


@dataclass(frozen=True)
class TransparentVAEParts:
    """`TransparentVAE.pth`'s tensors by part, prefixes removed.

    Attributes:
        decoder: the `FluxTransparentVAEDecoder` state dict.
        encoder: the `FluxTransparentVAEEncoder` state dict.
        vae: the FLUX VAE copy the release carries (`sd_vae.*`, diffusers names); may be
            empty. The pipeline's own VAE is used; this is only kept to compare.
    """

    decoder: dict[str, torch.Tensor]
    encoder: dict[str, torch.Tensor]
    vae: dict[str, torch.Tensor]


def split_transparent_vae(state_dict: Mapping[str, torch.Tensor]) -> TransparentVAEParts:
    """Split `TransparentVAE.pth`'s keys by their prefix.

    Raises:
        ValueError: a key outside `decoder.`, `encoder.`, `sd_vae.`, or no decoder or
            no encoder.
    """
    parts: dict[str, dict[str, torch.Tensor]] = {name: {} for name in TRANSPARENT_VAE_PARTS}
    for key, value in state_dict.items():
        prefix, _, rest = key.partition(".")
        if prefix not in parts or not rest:
            raise ValueError(f"unknown key {key!r}: expected decoder.*, encoder.* or sd_vae.*")
        parts[prefix][rest] = value
    for name in ("decoder", "encoder"):
        if not parts[name]:
            raise ValueError(f"the file holds no {name}.* tensors")
    return TransparentVAEParts(parts["decoder"], parts["encoder"], parts["sd_vae"])


def load_flux_transparent_decoder(
    state_dict: Mapping[str, torch.Tensor],
) -> FluxTransparentVAEDecoder:
    """A `FluxTransparentVAEDecoder` with the shapes of `state_dict`, loaded strictly.

    Raises:
        ValueError: the tensors are not a transparent decoder's.
    """
    channels, layers = decoder_layout(state_dict)
    if "latent_conv_in.weight" not in state_dict:
        raise ValueError("not a transparent decoder state dict: no latent_conv_in.weight")
    latent_channels = state_dict["latent_conv_in.weight"].shape[1]
    with torch.device("meta"):  # no random init: the file's tensors become the parameters
        decoder = FluxTransparentVAEDecoder(channels, layers, latent_channels)
    load_strict(decoder, state_dict, "transparent decoder")
    return decoder.eval()


def load_flux_transparent_encoder(
    state_dict: Mapping[str, torch.Tensor],
) -> FluxTransparentVAEEncoder:
    """A `FluxTransparentVAEEncoder` with the shapes of `state_dict`, loaded strictly.

    Raises:
        ValueError: the tensors are not a transparent encoder's.
    """
    try:
        widths = [state_dict[f"blocks.{4 * level}.weight"].shape[0] for level in range(4)]
        latent_channels = state_dict["blocks.16.weight"].shape[0]
    except KeyError as error:
        raise ValueError(f"not a transparent encoder state dict: missing {error}") from error
    with torch.device("meta"):
        encoder = FluxTransparentVAEEncoder(widths, latent_channels)
    load_strict(encoder, state_dict, "transparent encoder")
    return encoder.eval()


# --- layerlora.safetensors -----------------------------------------------------------------


@dataclass(frozen=True)
class FluxLoRAPatch:
    """One parameter's low-rank update: `W += weight · scale · (up @ down)`.

    Attributes:
        up: (out, rank).
        down: (rank, in).
        scale: `alpha / rank` (1 without alpha).
    """

    up: torch.Tensor
    down: torch.Tensor
    scale: float


# BFL module (kohya name, after the block index) → diffusers modules it was split into,
# with their output rows. `None` rows: the whole output.
_DOUBLE_MODULES: dict[str, tuple[tuple[str, ...], bool]] = {
    "img_attn_qkv": (("attn.to_q", "attn.to_k", "attn.to_v"), True),
    "img_attn_proj": (("attn.to_out.0",), False),
    "img_mlp_0": (("ff.net.0.proj",), False),
    "img_mlp_2": (("ff.net.2",), False),
    "img_mod_lin": (("norm1.linear",), False),
    "txt_attn_qkv": (("attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj"), True),
    "txt_attn_proj": (("attn.to_add_out",), False),
    "txt_mlp_0": (("ff_context.net.0.proj",), False),
    "txt_mlp_2": (("ff_context.net.2",), False),
    "txt_mod_lin": (("norm1_context.linear",), False),
}
_SINGLE_MODULES: dict[str, tuple[tuple[str, ...], bool]] = {
    "linear1": (("attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp"), True),
    "linear2": (("proj_out",), False),
    "modulation_lin": (("norm.linear",), False),
}
_TOP_MODULES: dict[str, str] = {
    "img_in": "x_embedder",
    "txt_in": "context_embedder",
    "time_in_in_layer": "time_text_embed.timestep_embedder.linear_1",
    "time_in_out_layer": "time_text_embed.timestep_embedder.linear_2",
    "vector_in_in_layer": "time_text_embed.text_embedder.linear_1",
    "vector_in_out_layer": "time_text_embed.text_embedder.linear_2",
    "guidance_in_in_layer": "time_text_embed.guidance_embedder.linear_1",
    "guidance_in_out_layer": "time_text_embed.guidance_embedder.linear_2",
    "final_layer_linear": "proj_out",
    "final_layer_adaLN_modulation_1": "norm_out.linear",  # (shift, scale) → (scale, shift)
}
_SWAPPED_HALVES = "final_layer_adaLN_modulation_1"
_KOHYA_PREFIX = "lora_unet_"
_DIFFUSERS_PREFIX = "transformer."
_KOHYA_SUFFIXES = (".lora_down.weight", ".lora_up.weight", ".alpha")
_DIFFUSERS_SUFFIXES = (".lora_A.weight", ".lora_B.weight", ".alpha")
_BLOCK_NAME = re.compile(r"(double|single)_blocks_(\d+)_(.+)")


def flux_block_counts(parameter_names: Mapping[str, object] | set[str]) -> tuple[int, int]:
    """(double blocks, single blocks) of a `FluxTransformer2DModel`, from its parameter names."""
    doubles, singles = set(), set()
    for name in parameter_names:
        head, _, rest = name.partition(".")
        if head == "transformer_blocks":
            doubles.add(int(rest.split(".")[0]))
        elif head == "single_transformer_blocks":
            singles.add(int(rest.split(".")[0]))
    return len(doubles), len(singles)


def _kohya_targets(
    module: str, doubles: int, singles: int
) -> tuple[tuple[str, ...], bool, bool] | None:
    """Diffusers modules of one kohya module name, whether split by rows, whether swapped."""
    if module in _TOP_MODULES:
        return (_TOP_MODULES[module],), False, module == _SWAPPED_HALVES
    match = _BLOCK_NAME.fullmatch(module)
    if match is None:
        return None
    kind, index, rest = match.group(1), int(match.group(2)), match.group(3)
    table, count, prefix = (
        (_DOUBLE_MODULES, doubles, "transformer_blocks")
        if kind == "double"
        else (_SINGLE_MODULES, singles, "single_transformer_blocks")
    )
    if rest not in table or index >= count:
        return None
    names, split = table[rest]
    return tuple(f"{prefix}.{index}.{name}" for name in names), split, False


def parse_flux_lora(
    state_dict: Mapping[str, torch.Tensor], parameter_shapes: Mapping[str, tuple[int, ...]]
) -> dict[str, FluxLoRAPatch]:
    """Read a FLUX transformer LoRA (kohya or diffusers layout) into per-parameter patches.

    Args:
        state_dict: the LoRA file's tensors.
        parameter_shapes: the transformer's parameter name → shape (any device, `meta`
            included), e.g. `{n: tuple(p.shape) for n, p in transformer.named_parameters()}`.

    Returns:
        diffusers parameter name (`….weight`) → patch; every shape checked.

    Raises:
        ValueError: an empty file, an unknown key or module, a module missing its up or
            down tensor, or shapes that do not fit the parameter.
    """
    if not state_dict:
        raise ValueError("the LoRA file is empty")
    kohya = all(key.startswith(_KOHYA_PREFIX) for key in state_dict)
    diffusers = all(key.startswith(_DIFFUSERS_PREFIX) for key in state_dict)
    if not (kohya or diffusers):
        odd = sorted(k for k in state_dict if not k.startswith((_KOHYA_PREFIX, _DIFFUSERS_PREFIX)))
        example = odd[0] if odd else sorted(state_dict)[0]
        raise ValueError(
            f"unknown key {example!r}: expected every key to start with {_KOHYA_PREFIX!r} "
            f"(kohya) or {_DIFFUSERS_PREFIX!r} (diffusers)"
        )
    prefix, suffixes = (
        (_KOHYA_PREFIX, _KOHYA_SUFFIXES) if kohya else (_DIFFUSERS_PREFIX, _DIFFUSERS_SUFFIXES)
    )
    modules = _group_by_module(state_dict, prefix, suffixes)
    doubles, singles = flux_block_counts(set(parameter_shapes))
    patches: dict[str, FluxLoRAPatch] = {}
    for module, (down, up, alpha) in sorted(modules.items()):
        if kohya:
            found = _kohya_targets(module, doubles, singles)
            if found is None:
                raise ValueError(
                    f"unknown LoRA module {prefix}{module}: not a FLUX transformer layer"
                )
            targets, split, swapped = found
        else:
            targets, split, swapped = (module,), False, False
        weights = [f"{target}.weight" for target in targets]
        for name in weights:
            if name not in parameter_shapes:
                raise ValueError(f"LoRA module {prefix}{module}: the transformer has no {name}")
        rank = down.shape[0]
        # kohya's missing alpha means alpha = rank; PEFT's files store none (alpha = rank)
        scale = 1.0 if alpha is None else alpha / rank
        rows = [parameter_shapes[name][0] for name in weights]
        in_features = parameter_shapes[weights[0]][1]
        if (
            up.ndim != 2
            or down.ndim != 2
            or up.shape != (sum(rows), rank)
            or down.shape[1] != in_features
            or any(parameter_shapes[name][1] != in_features for name in weights)
        ):
            expected = f"up ({sum(rows)}, {rank}) and down ({rank}, {in_features})"
            raise ValueError(
                f"LoRA module {prefix}{module}: up {tuple(up.shape)} and down "
                f"{tuple(down.shape)} do not fit {', '.join(weights)} (expected {expected})"
            )
        if swapped:
            shift, scale_rows = up.chunk(2, dim=0)
            up = torch.cat([scale_rows, shift])
        parts = up.split(rows, dim=0) if split else (up,)
        for name, part in zip(weights, parts, strict=True):
            patches[name] = FluxLoRAPatch(up=part, down=down, scale=scale)
    return patches


def _group_by_module(
    state_dict: Mapping[str, torch.Tensor], prefix: str, suffixes: tuple[str, str, str]
) -> dict[str, tuple[torch.Tensor, torch.Tensor, float | None]]:
    """module name → (down, up, alpha or None), for keys `<prefix><module><suffix>`."""
    down_suffix, up_suffix, alpha_suffix = suffixes
    grouped: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in state_dict.items():
        for suffix in suffixes:
            if key.endswith(suffix):
                module = key[len(prefix) : -len(suffix)]
                grouped.setdefault(module, {})[suffix] = value
                break
        else:
            raise ValueError(f"unknown key {key!r}: expected a suffix of {', '.join(suffixes)}")
    modules = {}
    for module, tensors in grouped.items():
        for needed in (down_suffix, up_suffix):
            if needed not in tensors:
                raise ValueError(f"LoRA module {prefix}{module} has no {needed[1:]} tensor")
        alpha = tensors.get(alpha_suffix)
        modules[module] = (
            tensors[down_suffix],
            tensors[up_suffix],
            None if alpha is None else float(alpha.item()),
        )
    return modules


def flux_lora_key_shapes(
    parameter_shapes: Mapping[str, tuple[int, ...]], rank: int = 128
) -> dict[str, tuple[int, ...]]:
    """The assumed released layout: kohya keys on every linear layer of every block.

    Per double block: img/txt `attn_qkv`, `attn_proj`, `mlp_0`, `mlp_2`, `mod_lin`; per
    single block: `linear1`, `linear2`, `modulation_lin`; each with `lora_down`,
    `lora_up` and a scalar `alpha`.

    Args:
        parameter_shapes: the transformer's parameter name → shape.
        rank: the LoRA rank (128 makes the release's 1.23 GB in bf16).

    Returns:
        key → shape (`alpha` is `()`).
    """
    doubles, singles = flux_block_counts(set(parameter_shapes))
    shapes: dict[str, tuple[int, ...]] = {}
    layout = [("double", doubles, _DOUBLE_MODULES), ("single", singles, _SINGLE_MODULES)]
    for kind, count, table in layout:
        for index in range(count):
            for rest in table:
                module = f"{kind}_blocks_{index}_{rest}"
                targets, _, _ = _kohya_targets(module, doubles, singles)  # type: ignore[misc]
                weights = [parameter_shapes[f"{target}.weight"] for target in targets]
                out = sum(shape[0] for shape in weights)
                key = _KOHYA_PREFIX + module
                shapes[f"{key}.lora_down.weight"] = (rank, weights[0][1])
                shapes[f"{key}.lora_up.weight"] = (out, rank)
                shapes[f"{key}.alpha"] = ()
    return shapes


class FluxLoRAHandle:
    """A LoRA merged into a FLUX transformer; `set_active` and `detach` swap tensors back.

    Attributes:
        transformer: the patched transformer.
        patched_names: the diffusers parameter names the LoRA changes.
    """

    def __init__(
        self,
        transformer: nn.Module,
        swaps: list[ParameterSwap],
        on_cpu: bool,
        names: tuple[str, ...],
    ) -> None:
        self.transformer = transformer
        self.patched_names = names
        self._swaps = swaps
        self._on_cpu = on_cpu
        self._active = True
        self._detached = False

    @property
    def active(self) -> bool:
        """Whether the transformer currently computes with the merged weights."""
        return self._active

    @torch.no_grad()
    def set_active(self, active: bool) -> None:
        """Swap in the merged weights (True) or the originals (False).

        Raises:
            RuntimeError: the handle was detached.
        """
        if self._detached:
            raise RuntimeError("the LoRA was detached")
        if active == self._active:
            return
        for swap in self._swaps:
            swap.install(active, self._on_cpu)
        self._active = active

    def detach(self) -> None:
        """Put the original parameters back; the transformer is as it was attached."""
        if self._detached:
            return
        self.set_active(False)
        self._swaps = []
        self._detached = True


@torch.no_grad()
def attach_flux_lora(
    transformer: nn.Module,
    patches: Mapping[str, FluxLoRAPatch],
    weight: float = 1.0,
    *,
    originals_on: OriginalsPlace = "device",
) -> FluxLoRAHandle:
    """Merge parsed LoRA patches into a transformer, keeping the originals to swap back.

    Args:
        transformer: the `FluxTransformer2DModel`, on its final device and dtype.
        patches: from `parse_flux_lora` for this transformer.
        weight: the LoRA strength (1 in the release's demo).
        originals_on: where the unpatched tensors wait, "device" or "cpu".

    Returns:
        The handle, active.

    Raises:
        ValueError: a patch names no parameter, or a bad `originals_on`.
    """
    if originals_on not in ("device", "cpu"):
        raise ValueError(f"originals_on {originals_on!r} is not 'device' or 'cpu'")
    parameters = dict(transformer.named_parameters())
    for name in patches:
        if name not in parameters:
            raise ValueError(f"the transformer has no parameter {name}")
    on_cpu = originals_on == "cpu"
    swaps: list[ParameterSwap] = []
    try:
        for name, patch in patches.items():
            original = parameters[name]
            merged = nn.Parameter(_merged(original, patch, weight), original.requires_grad)
            module_name, _, attribute = name.rpartition(".")
            module = transformer.get_submodule(module_name)
            swaps.append(ParameterSwap(module, attribute, original, merged, original.device))
            swaps[-1].install(True, on_cpu)
    except BaseException:  # out of memory midway: leave the transformer as it was
        for swap in swaps:
            swap.install(False, on_cpu)
        raise
    return FluxLoRAHandle(transformer, swaps, on_cpu, tuple(sorted(patches)))


def _merged(base: torch.Tensor, patch: FluxLoRAPatch, weight: float) -> torch.Tensor:
    """`base + weight·scale·(up @ down)` in float32, cast back (`weight_patches`' merge)."""
    return merged_tensor(base, LoRAPatch(up=patch.up, down=patch.down), weight * patch.scale)


def lora_parameter_count(shapes: Mapping[str, tuple[int, ...]]) -> int:
    """Parameters of a key → shape table (alphas count 1 each)."""
    return sum(math.prod(shape) for shape in shapes.values())
