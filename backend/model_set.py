"""The loaded models of one family, as the store builds them and the methods use them.

`BaseModel` is the Stable Diffusion model; `ModelSet` adds the LayerDiffuse files,
loaded on demand through a callable the store provides, so methods never touch files.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from backend.errors import ModelNotFound
from backend.layerdiffuse import (
    SD15LayerHandle,
    Tiling,
    TransparentVAEDecoder,
    TransparentVAEEncoder,
    attach_sd15_layer_model,
    load_transparent_decoder,
    load_transparent_encoder,
)
from backend.loras import LoRAHandle, attach_lora
from backend.split import TRAINED_RESOLUTIONS, LayeredComponents
from protocol.messages import LoRAInfo
from protocol.methods import ModelFamily

if TYPE_CHECKING:
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

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


# The transparent decoder and encoder files of each family.
TRANSPARENT_DECODERS = {
    ModelFamily.SD15: "layer_sd15_vae_transparent_decoder",
    ModelFamily.SDXL: "vae_transparent_decoder",
}
TRANSPARENT_ENCODERS = {
    ModelFamily.SD15: "layer_sd15_vae_transparent_encoder",
    ModelFamily.SDXL: "vae_transparent_encoder",
}

LayerFileLoader = Callable[[str], dict[str, torch.Tensor]]
"""Returns the tensors of a released file by name (the store's `load_state_dict`)."""


@dataclass
class ModelSet:
    """A base model on its device, plus the LayerDiffuse files it is used with.

    Attributes:
        base: the Stable Diffusion components, already on `device` in `dtype`.
        load_layer_file: loads a released file's tensors by name.
        offset_scales: per encoder file, the factor applied to its output.
        device: where everything runs.
        dtype: the compute dtype of the UNet, VAE and LayerDiffuse models.
        is_demo: the tiny random demo set (its pictures are noise).
        cached_layer_files: how many layer files stay loaded on the device.
        kept_layer_models: how many SD1.5 layer models stay attached to the UNet,
            switched off, between jobs (each holds its per-frame merged attention
            weights: 187 MB per frame in fp16, so 187–561 MB).
        tiling: when the VAE and the transparent decoder and encoder work in tiles (by
            default when the image would not fit the device's free memory).
        offered_loras: the LoRAs a request may name (`use_lora`), by name: the few-step
            LoRAs of this family, and those of a LoRA folder.
        load_lora_file: loads a LoRA's tensors by name; None: `load_layer_file`.
        warning: why LayerDiffuse is expected to fail on this base model (`welcome`'s
            `model.warning`), or None.
        load_matting: builds the matting model of the matted methods (on the CPU, in
            float32); None: this set has none.
    """

    base: BaseModel
    load_layer_file: LayerFileLoader
    offset_scales: Mapping[str, float]
    device: torch.device
    dtype: torch.dtype
    is_demo: bool = False
    cached_layer_files: int = 2
    kept_layer_models: int = 1
    tiling: Tiling = field(default_factory=Tiling)
    offered_loras: Mapping[str, LoRAInfo] = field(default_factory=dict)
    load_lora_file: LayerFileLoader | None = None
    warning: str | None = None
    load_matting: Callable[[], torch.nn.Module] | None = None
    _matting: torch.nn.Module | None = field(default=None, repr=False)
    _lora: LoRAHandle | None = field(default=None, repr=False)
    _lora_key: tuple[str, float] | None = field(default=None, repr=False)
    _layer_files: OrderedDict[str, dict[str, torch.Tensor]] = field(
        default_factory=OrderedDict, repr=False
    )
    _layer_handles: OrderedDict[str, SD15LayerHandle] = field(
        default_factory=OrderedDict, repr=False
    )
    _decoders: dict[str, TransparentVAEDecoder] = field(default_factory=dict, repr=False)
    _encoders: dict[str, TransparentVAEEncoder] = field(default_factory=dict, repr=False)

    @property
    def family(self) -> ModelFamily:
        return self.base.family

    def layer_state_dict(self, name: str, on_device: bool = True) -> dict[str, torch.Tensor]:
        """A layer model file's tensors, kept for reuse.

        The most recently used `cached_layer_files` files stay loaded, so repeated jobs
        with one method do not read the file again. With `on_device` they are on the
        set's device in its dtype (SD1.5 attention sharing computes with them); without,
        they stay in host memory as stored (SDXL patches are merged tensor by tensor
        into new weights, so the raw file need not occupy GPU memory).
        """
        key = f"{name}@{'device' if on_device else 'host'}"
        cached = self._layer_files.get(key)
        if cached is None:
            tensors = self.load_layer_file(name)
            if on_device:
                tensors = {
                    k: value.to(device=self.device, dtype=self.dtype)
                    for k, value in tensors.items()
                }
            cached = self._layer_files[key] = tensors
            while len(self._layer_files) > self.cached_layer_files:
                self._layer_files.popitem(last=False)
        self._layer_files.move_to_end(key)
        return cached

    @contextmanager
    def sd15_layer_model(self, name: str) -> Iterator[SD15LayerHandle]:
        """An SD1.5 layer file attached to the UNet and switched on for one job.

        On leaving, whatever happens, the UNet gets its own processors back and the
        control image is forgotten, but the handle stays attached (switched off) for
        the most recently used `kept_layer_models` files: the next job with the same
        file skips merging its LoRA into per-frame weights (84 ms a job on an H200,
        docs/benchmarks.md).
        """
        handle = self._layer_handles.pop(name, None)
        if handle is None:
            # At most `kept_layer_models` (and at least the one in use) on the device at
            # once: the least recently used go before the new one is merged.
            while len(self._layer_handles) >= max(self.kept_layer_models, 1):
                self._layer_handles.popitem(last=False)[1].detach()
            handle = attach_sd15_layer_model(self.base.unet, self.layer_state_dict(name))
        else:
            handle.set_active(True)
        try:
            yield handle
        finally:
            handle.set_active(False)
            handle.clear_control()
            if self.kept_layer_models > 0:
                self._layer_handles[name] = handle  # the most recently used, last
            else:
                handle.detach()

    @property
    def lora(self) -> tuple[str, float] | None:
        """The LoRA merged now and its weight, or None."""
        return self._lora_key

    def use_lora(self, name: str | None, weight: float = 1.0) -> None:
        """Have `name` merged at `weight` (None or weight 0: no LoRA) for the next jobs.

        Nothing happens when that is already so; otherwise the current LoRA is taken out
        (its original tensors put back) and the new one merged. The kept SD1.5 layer
        models go first: their per-frame weights were made from the weights beneath.

        Raises:
            ValueError: the file does not fit this model (by name or shape); the model is
                then left with no LoRA.
            ModelError: from the store, loading the file.
        """
        wanted = None if name is None or weight == 0.0 else (name, weight)
        if wanted == self._lora_key:
            return
        while self._layer_handles:
            self._layer_handles.popitem(last=False)[1].detach()
        if self._lora is not None:
            self._lora.detach()
            log.info("took LoRA %s out", self._lora_key[0] if self._lora_key else "?")
        self._lora, self._lora_key = None, None
        if wanted is None:
            return
        load = self.load_lora_file or self.load_layer_file
        self._lora = attach_lora(self._lora_targets(), load(wanted[0]), wanted[1])
        self._lora_key = wanted
        log.info("merged LoRA %s at %g (%s)", wanted[0], wanted[1], self._lora.patched)

    def _lora_targets(self) -> dict[str, torch.nn.Module]:
        targets: dict[str, torch.nn.Module] = {
            "unet": self.base.unet,
            "text_encoder": self.base.text_encoder,
        }
        if self.base.text_encoder_2 is not None:
            targets["text_encoder_2"] = self.base.text_encoder_2
        return targets

    def matting_model(self) -> torch.nn.Module:
        """The matting model, loaded once, on the device: in float32 on the CPU, in the
        set's dtype on a GPU (BiRefNet's own deformable sampling stays float32).

        Raises:
            ModelNotFound: from the store; or this set has no matting model.
        """
        if self._matting is None:
            if self.load_matting is None:
                raise ModelNotFound("this model set has no matting model for the matted methods")
            model = self.load_matting()
            dtype = torch.float32 if self.device.type == "cpu" else self.dtype
            self._matting = model.to(self.device, dtype).eval().requires_grad_(False)
        return self._matting

    def transparent_decoder(self) -> TransparentVAEDecoder:
        """This family's transparent decoder, loaded once, on the device in `dtype`."""
        name = TRANSPARENT_DECODERS[self.family]
        if name not in self._decoders:
            decoder = load_transparent_decoder(self.load_layer_file(name))
            self._decoders[name] = decoder.to(device=self.device, dtype=self.dtype)
        return self._decoders[name]

    def transparent_encoder(self) -> tuple[TransparentVAEEncoder, float]:
        """This family's transparent encoder and its offset scale, loaded once."""
        name = TRANSPARENT_ENCODERS[self.family]
        if name not in self._encoders:
            encoder = load_transparent_encoder(self.load_layer_file(name))
            self._encoders[name] = encoder.to(device=self.device, dtype=self.dtype)
        return self._encoders[name], self.offset_scales.get(name, 1.0)


@dataclass
class FluxBase:
    """FLUX.1's pieces (the names `methods.flux_transparent.FluxComponents` reads).

    Attributes:
        name: shown to users and written into PNG infotext.
        transformer: `FluxTransformer2DModel`, LayerDiffuse-Flux's LoRA merged.
        vae: the 16-channel `AutoencoderKL` (scaling and shift factors in its config).
        text_encoder / tokenizer: CLIP (its pooled output).
        text_encoder_2 / tokenizer_2: T5.
        scheduler_config: the `FlowMatchEulerDiscreteScheduler` config.
    """

    name: str
    transformer: torch.nn.Module
    vae: Any
    text_encoder: torch.nn.Module
    tokenizer: Any
    text_encoder_2: torch.nn.Module
    tokenizer_2: Any
    scheduler_config: dict[str, Any]
    family: ModelFamily = ModelFamily.FLUX


@dataclass
class FluxModelSet:
    """FLUX.1 with LayerDiffuse-Flux loaded (issue #17): what `flux_transparent` runs on.

    Unlike SD's `ModelSet`, nothing is loaded per job: the release has one LoRA, merged
    into the transformer when the set is opened (`lora`, whose `detach` takes it out),
    and one transparent decoder and encoder.

    Attributes:
        base: the FLUX pieces.
        decoder / encoder: LayerDiffuse-Flux's transparent decoder and offset encoder.
        layer_lora: the merged LoRA's handle.
        device / dtype: where and in what the transformer runs.
        is_demo: the tiny random demo set.
        offered_loras: none: FLUX takes no request LoRA.
    """

    base: FluxBase
    decoder: TransparentVAEDecoder
    encoder: TransparentVAEEncoder
    layer_lora: Any
    device: torch.device
    dtype: torch.dtype
    is_demo: bool = False
    tiling: Tiling = field(default_factory=Tiling)
    offered_loras: Mapping[str, LoRAInfo] = field(default_factory=dict)
    warning: str | None = None

    @property
    def family(self) -> ModelFamily:
        return ModelFamily.FLUX

    # `FluxComponents`, read by the FLUX method.
    @property
    def transformer(self) -> torch.nn.Module:
        return self.base.transformer

    @property
    def vae(self) -> Any:
        return self.base.vae

    @property
    def text_encoder(self) -> torch.nn.Module:
        return self.base.text_encoder

    @property
    def tokenizer(self) -> Any:
        return self.base.tokenizer

    @property
    def text_encoder_2(self) -> torch.nn.Module:
        return self.base.text_encoder_2

    @property
    def tokenizer_2(self) -> Any:
        return self.base.tokenizer_2

    @property
    def scheduler_config(self) -> dict[str, Any]:
        return self.base.scheduler_config

    def use_lora(self, name: str | None, weight: float = 1.0) -> None:
        """FLUX takes no request LoRA (its own is always merged).

        Raises:
            ValueError: a LoRA was named.
        """
        if name is not None and weight != 0.0:
            raise ValueError("the FLUX model set takes no LoRA besides LayerDiffuse-Flux's own")


@dataclass
class LayeredBase:
    """Qwen-Image-Layered's loaded pieces under a name (`split.LayeredComponents`)."""

    name: str
    components: LayeredComponents
    family: ModelFamily = ModelFamily.QWEN_LAYERED


@dataclass
class LayeredModelSet:
    """Qwen-Image-Layered, what `split_layers` runs on (issue #19).

    Attributes:
        base: the model's name and pieces.
        is_demo: the tiny random demo set.
        offered_loras: none: the family takes no request LoRA.
        warning: none: LayerDiffuse plays no part in a split.
        resolutions: the sides of the small and the large generation area (the model's
            trained 640 and 1024; the demo's are smaller, `split.demo.DEMO_RESOLUTIONS`).
    """

    base: LayeredBase
    is_demo: bool = False
    resolutions: tuple[int, int] = TRAINED_RESOLUTIONS
    offered_loras: Mapping[str, LoRAInfo] = field(default_factory=dict)
    warning: str | None = None

    @property
    def family(self) -> ModelFamily:
        return ModelFamily.QWEN_LAYERED

    @property
    def device(self) -> torch.device:
        return self.base.components.device

    @property
    def dtype(self) -> torch.dtype:
        return self.base.components.dtype

    def use_lora(self, name: str | None, weight: float = 1.0) -> None:
        """Qwen-Image-Layered takes no request LoRA.

        Raises:
            ValueError: a LoRA was named.
        """
        if name is not None and weight != 0.0:
            raise ValueError("the Qwen-Image-Layered model set takes no LoRA")


AnyModelSet = ModelSet | FluxModelSet | LayeredModelSet
"""What the methods run on: an SD family's model set, FLUX's, or Qwen-Image-Layered's."""
