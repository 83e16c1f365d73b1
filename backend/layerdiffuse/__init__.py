"""LayerDiffuse on diffusers: the released models as PyTorch modules, importable on their own.

    from backend.layerdiffuse import TransparentVAEDecoder, TransparentVAEEncoder, pad_rgb

Everything loads the released files of `LayerDiffusion/layerdiffusion-v1` unchanged
(`strict=True`); nothing here downloads or knows a file name.
"""

from __future__ import annotations

from .alpha import (
    checkerboard,
    checkerboard_preview,
    decoder_output_to_rgba,
    encoder_input,
    pad_rgb,
)
from .attention_sharing import (
    SD15_ATTENTION_UNITS,
    LayerModelLayout,
    SD15LayerHandle,
    attach_sd15_layer_model,
    build_sd15_layer_model,
    read_layout,
)
from .group_norm import group_norm_by_reduction, use_reduction_group_norm
from .released_weights import load_safetensors, load_transparent_decoder, load_transparent_encoder
from .sdxl_keys import (
    RELEASED_SDXL_FILES,
    DiffPatch,
    LoRAPatch,
    SDXLUNetLayout,
    diffusers_to_ldm_name,
    ldm_name_table,
    parse_frozen_patches,
    read_unet_layout,
    released_key_shapes,
)
from .tiling import TileGrid, Tiling, tile_spans, tile_weights, tiled_map
from .transparent_vae_decoder import TTA_VIEWS, TransparentVAEDecoder
from .transparent_vae_encoder import TransparentVAEEncoder
from .weight_patches import (
    ConcatConvIn,
    OriginalsPlace,
    ParameterSwap,
    SDXLLayerHandle,
    SDXLLayerKind,
    attach_sdxl_layer_model,
    check_patch_shapes,
    merged_tensor,
)

__all__ = [
    "RELEASED_SDXL_FILES",
    "SD15_ATTENTION_UNITS",
    "TTA_VIEWS",
    "ConcatConvIn",
    "DiffPatch",
    "LayerModelLayout",
    "LoRAPatch",
    "OriginalsPlace",
    "ParameterSwap",
    "SD15LayerHandle",
    "SDXLLayerHandle",
    "SDXLLayerKind",
    "SDXLUNetLayout",
    "TileGrid",
    "Tiling",
    "TransparentVAEDecoder",
    "TransparentVAEEncoder",
    "attach_sd15_layer_model",
    "attach_sdxl_layer_model",
    "build_sd15_layer_model",
    "check_patch_shapes",
    "checkerboard",
    "checkerboard_preview",
    "decoder_output_to_rgba",
    "diffusers_to_ldm_name",
    "encoder_input",
    "group_norm_by_reduction",
    "ldm_name_table",
    "load_safetensors",
    "load_transparent_decoder",
    "load_transparent_encoder",
    "merged_tensor",
    "pad_rgb",
    "parse_frozen_patches",
    "read_layout",
    "read_unet_layout",
    "released_key_shapes",
    "tile_spans",
    "tile_weights",
    "tiled_map",
    "use_reduction_group_norm",
]
