"""Diffusers -> ldm key naming, to write test checkpoints the way model sites ship them.

This is the inverse of the documented ldm -> diffusers table (diffusers'
`single_file_utils`), written out per component for the layouts the tests build: UNets
with SD1.5 or SDXL block types, the SD VAE, CLIP ViT-L and OpenCLIP. The store converts
these files back with diffusers' converters; a round trip that returns equal tensors
shows that both directions agree.
"""

from __future__ import annotations

from typing import Any

import torch

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
SD15_CLIP_PREFIX = "cond_stage_model.transformer."
SDXL_CLIP_PREFIX = "conditioner.embedders.0.transformer."
SDXL_OPENCLIP_PREFIX = "conditioner.embedders.1.model."

_RESNET = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "time_emb_proj": "emb_layers.1",
    "conv_shortcut": "skip_connection",
}
_UNET_TOP = {
    "time_embedding.linear_1": "time_embed.0",
    "time_embedding.linear_2": "time_embed.2",
    "add_embedding.linear_1": "label_emb.0.0",
    "add_embedding.linear_2": "label_emb.0.2",
    "conv_in": "input_blocks.0.0",
    "conv_norm_out": "out.0",
    "conv_out": "out.2",
}
_VAE_ATTENTION = {
    "group_norm": "norm",
    "to_q": "q",
    "to_k": "k",
    "to_v": "v",
    "to_out.0": "proj_out",
}


def _split(key: str, depth: int) -> tuple[list[str], str]:
    parts = key.split(".")
    return parts[:depth], ".".join(parts[depth:])


def _resnet_rest(rest: str) -> str:
    layer, _, parameter = rest.partition(".")
    return f"{_RESNET[layer]}.{parameter}"


def unet_key(key: str, config: dict[str, Any]) -> str:
    """Map one diffusers UNet key to its ldm name (without the `model.diffusion_model.`)."""
    per_block = int(config["layers_per_block"])
    for diffusers_name, ldm_name in _UNET_TOP.items():
        if key.startswith(diffusers_name + "."):
            return ldm_name + key[len(diffusers_name) :]
    if key.startswith("down_blocks."):
        (_, block, kind, index), rest = _split(key, 4)
        if kind == "downsamplers":
            return f"input_blocks.{(int(block) + 1) * (per_block + 1)}.0.op.{rest.split('.', 1)[1]}"
        slot = 1 + int(block) * (per_block + 1) + int(index)
        if kind == "resnets":
            return f"input_blocks.{slot}.0.{_resnet_rest(rest)}"
        return f"input_blocks.{slot}.1.{rest}"
    if key.startswith("mid_block."):
        (_, kind, index), rest = _split(key, 3)
        if kind == "resnets":
            return f"middle_block.{2 * int(index)}.{_resnet_rest(rest)}"
        return f"middle_block.1.{rest}"
    if key.startswith("up_blocks."):
        (_, block, kind, index), rest = _split(key, 4)
        first = int(block) * (per_block + 1)
        if kind == "upsamplers":
            has_attention = "CrossAttn" in config["up_block_types"][int(block)]
            return f"output_blocks.{first + per_block}.{2 if has_attention else 1}.{rest}"
        if kind == "resnets":
            return f"output_blocks.{first + int(index)}.0.{_resnet_rest(rest)}"
        return f"output_blocks.{first + int(index)}.1.{rest}"
    raise KeyError(f"no ldm name for unet key {key}")


def vae_key(key: str, config: dict[str, Any]) -> str:
    """Map one diffusers VAE key to its ldm name (without `first_stage_model.`)."""
    blocks = len(config["up_block_types"])
    key = key.replace("conv_norm_out", "norm_out")
    if key.startswith(("encoder.down_blocks.", "decoder.up_blocks.")):
        (side, _, block, kind, index), rest = _split(key, 5)
        if side == "encoder":
            prefix = f"encoder.down.{block}"
        else:
            prefix = f"decoder.up.{blocks - 1 - int(block)}"
        if kind == "resnets":
            return f"{prefix}.block.{index}.{rest.replace('conv_shortcut', 'nin_shortcut')}"
        sampler = "downsample" if side == "encoder" else "upsample"
        return f"{prefix}.{sampler}.{rest}"
    if ".mid_block.resnets." in key:
        (side, _, _, index), rest = _split(key, 4)
        return f"{side}.mid.block_{int(index) + 1}.{rest.replace('conv_shortcut', 'nin_shortcut')}"
    if ".mid_block.attentions.0." in key:
        side, rest = key.split(".mid_block.attentions.0.")
        layer, parameter = rest.rsplit(".", 1)
        return f"{side}.mid.attn_1.{_VAE_ATTENTION[layer]}.{parameter}"
    return key


def unet_to_ldm(state: dict[str, torch.Tensor], config: dict[str, Any]) -> dict[str, torch.Tensor]:
    """A diffusers UNet state dict in ldm naming, with the checkpoint prefix."""
    return {UNET_PREFIX + unet_key(key, config): value for key, value in state.items()}


def vae_to_ldm(state: dict[str, torch.Tensor], config: dict[str, Any]) -> dict[str, torch.Tensor]:
    """A diffusers VAE state dict in ldm naming; attention projections become 1x1 convs."""
    converted = {}
    for key, value in state.items():
        ldm = vae_key(key, config)
        if ".mid.attn_1." in ldm and ldm.endswith(".weight") and value.dim() == 2:
            value = value[:, :, None, None]
        converted[VAE_PREFIX + ldm] = value
    return converted


def text_model_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """CLIP keys as checkpoints have them, `text_model.` first.

    transformers 5 names `CLIPTextModel`'s parameters without that prefix.
    """
    return {
        key if key.startswith(("text_model.", "text_projection")) else "text_model." + key: value
        for key, value in state.items()
    }


def clip_to_ldm(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """A transformers CLIPTextModel state dict under an ldm prefix, with position ids.

    Checkpoints made with older transformers carry `position_ids` as a tensor; the store
    must drop it, so it is written here too.
    """
    state = text_model_keys(state)
    converted = {prefix + key: value for key, value in state.items()}
    length = state["text_model.embeddings.position_embedding.weight"].shape[0]
    converted[prefix + "text_model.embeddings.position_ids"] = torch.arange(length)[None]
    return converted


def open_clip_to_ldm(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """A CLIPTextModelWithProjection state dict in OpenCLIP naming.

    q, k and v projections are concatenated into `in_proj`, the projection is transposed.
    """
    renames = {
        "text_model.embeddings.token_embedding.weight": "token_embedding.weight",
        "text_model.embeddings.position_embedding.weight": "positional_embedding",
        "text_model.final_layer_norm.weight": "ln_final.weight",
        "text_model.final_layer_norm.bias": "ln_final.bias",
    }
    layer_renames = {
        "self_attn.out_proj": "attn.out_proj",
        "layer_norm1": "ln_1",
        "layer_norm2": "ln_2",
        "mlp.fc1": "mlp.c_fc",
        "mlp.fc2": "mlp.c_proj",
    }
    state = text_model_keys(state)
    converted = {prefix + "text_projection": state["text_projection.weight"].T.contiguous()}
    for key, value in state.items():
        if key in renames:
            converted[prefix + renames[key]] = value
        elif key.startswith("text_model.encoder.layers."):
            (_, _, _, index), rest = _split(key, 4)
            if ".q_proj." in key or ".k_proj." in key or ".v_proj." in key:
                if ".q_proj." not in key:
                    continue
                parameter = rest.rsplit(".", 1)[1]
                stacked = [
                    state[key.replace(".q_proj.", f".{name}_proj.")] for name in ("q", "k", "v")
                ]
                converted[f"{prefix}transformer.resblocks.{index}.attn.in_proj_{parameter}"] = (
                    torch.cat(stacked)
                )
                continue
            layer, parameter = rest.rsplit(".", 1)
            name = f"transformer.resblocks.{index}.{layer_renames[layer]}.{parameter}"
            converted[prefix + name] = value
        elif key != "text_projection.weight":
            raise KeyError(f"no open clip name for {key}")
    return converted
