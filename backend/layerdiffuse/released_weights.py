"""Building the library's modules from the released files' state dicts.

The architecture is read off the tensors' shapes, so the released files and the
demo set's tiny files in the same format load through the same code, strictly.
Only safetensors are read; nothing here knows a file name or a download.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors.torch import load_file

from .transparent_vae_decoder import TransparentVAEDecoder
from .transparent_vae_encoder import TransparentVAEEncoder


def load_safetensors(
    path: str | Path, device: str | torch.device = "cpu"
) -> dict[str, torch.Tensor]:
    """Read a `.safetensors` file; anything else is refused (pickles are never loaded).

    Raises:
        ValueError: the path is not a `.safetensors` file.
    """
    path = Path(path)
    if path.suffix != ".safetensors":
        raise ValueError(f"{path.name}: only .safetensors files are loaded, never pickles")
    return load_file(str(path), device=str(device))


def load_transparent_decoder(state_dict: Mapping[str, torch.Tensor]) -> TransparentVAEDecoder:
    """A `TransparentVAEDecoder` with the shapes of `state_dict`, loaded strictly.

    Raises:
        ValueError: the tensors are not a transparent decoder's.
    """
    channels, layers = decoder_layout(state_dict)
    with torch.device("meta"):  # no random init: the file's tensors become the parameters
        decoder = TransparentVAEDecoder(block_out_channels=channels, layers_per_block=layers)
    load_strict(decoder, state_dict, "transparent decoder")
    return decoder.eval()


def decoder_layout(state_dict: Mapping[str, torch.Tensor]) -> tuple[list[int], int]:
    """A transparent decoder's block widths and ResBlocks per level, read from its keys
    (SD's and FLUX's decoders are laid out alike).

    Raises:
        ValueError: the tensors are not a transparent decoder's.
    """
    try:
        levels = 1 + max(
            int(key.split(".")[1]) for key in state_dict if key.startswith("down_blocks.")
        )
        channels = [
            state_dict[f"down_blocks.{i}.resnets.0.conv1.weight"].shape[0] for i in range(levels)
        ]
        layers = 1 + max(
            int(key.split(".")[3]) for key in state_dict if key.startswith("down_blocks.0.resnets.")
        )
    except (ValueError, KeyError) as error:
        raise ValueError(f"not a transparent decoder state dict: {error}") from error
    return channels, layers


def load_transparent_encoder(state_dict: Mapping[str, torch.Tensor]) -> TransparentVAEEncoder:
    """A `TransparentVAEEncoder` with the shapes of `state_dict`, loaded strictly.

    Raises:
        ValueError: the tensors are not a transparent encoder's.
    """
    try:
        # Convs at blocks.0, 2, …; each level has two, the last conv is the output.
        widths = [state_dict[f"blocks.{4 * level}.weight"].shape[0] for level in range(4)]
    except KeyError as error:
        raise ValueError(f"not a transparent encoder state dict: missing {error}") from error
    with torch.device("meta"):
        encoder = TransparentVAEEncoder(channels=widths)
    load_strict(encoder, state_dict, "transparent encoder")
    return encoder.eval()


def load_strict(module: torch.nn.Module, state_dict: Mapping[str, torch.Tensor], what: str) -> None:
    """Load `state_dict` into `module` (built on `meta`) strictly, its tensors assigned.

    Raises:
        ValueError: a key missing or unexpected, or a shape that differs.
    """
    try:
        module.load_state_dict(dict(state_dict), strict=True, assign=True)
    except RuntimeError as error:
        raise ValueError(f"the file is not a {what} of the released format: {error}") from error
