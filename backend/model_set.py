"""The loaded components of one base model, as the store builds them and methods use them.

The component classes are named for type checkers only, so importing this module costs
nothing: the store imports diffusers and transformers when it builds a model.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    from protocol.methods import ModelFamily

log = logging.getLogger(__name__)


@dataclass
class BaseModel:
    """A Stable Diffusion base model: SD1.5 or SDXL, ready for the LayerDiffuse methods.

    Attributes:
        family: SD1.5 or SDXL.
        name: Shown to users and written into PNG infotext.
        unet: The denoising UNet.
        vae: The image autoencoder.
        text_encoder: CLIP ViT-L/14 text encoder.
        tokenizer: Its tokenizer.
        scheduler_config: The scheduler config the model was trained with.
        text_encoder_2: SDXL only: the OpenCLIP ViT-bigG/14 text encoder with projection.
        tokenizer_2: SDXL only: its tokenizer (pad token `!`).
    """

    family: ModelFamily
    name: str  # shown to users and written into PNG infotext
    unet: UNet2DConditionModel
    vae: AutoencoderKL
    text_encoder: CLIPTextModel
    tokenizer: CLIPTokenizer
    scheduler_config: dict[str, Any]
    text_encoder_2: CLIPTextModelWithProjection | None = None  # SDXL only
    tokenizer_2: CLIPTokenizer | None = None  # SDXL only
