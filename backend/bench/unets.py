"""One call of each model: text encoders, a UNet CFG step with each layer model, the VAE."""

from __future__ import annotations

import json
import time

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel

from ..layerdiffuse import (
    LayerModelLayout,
    attach_sd15_layer_model,
    attach_sdxl_layer_model,
    build_sd15_layer_model,
)
from ..store.configs import config_path
from .models import build_random, random_sdxl_model_set
from .report import BenchReport, Timing, time_stage


def bench_sd15(
    report: BenchReport, device: torch.device, dtype: torch.dtype, size: int, repeat: int
) -> None:
    """Text encoder, one CFG UNet step plain and with each layer model, VAE decode."""
    unet_config = json.loads(config_path("sd15", "unet").read_text())
    vae_config = json.loads(config_path("sd15", "vae").read_text())
    text_config = CLIPTextConfig(**json.loads(config_path("sd15", "text_encoder").read_text()))

    text_encoder = build_random(lambda: CLIPTextModel(text_config), device, dtype)
    tokens = torch.randint(0, 49408, (2, 77), device=device)
    time_stage(
        report, "text encode", "CLIP-L, 2 prompts", lambda: text_encoder(tokens), device, repeat
    )

    unet = build_random(lambda: UNet2DConditionModel.from_config(unet_config), device, dtype)
    latent_side = size // 8
    context = torch.randn(2, 77, 768, device=device, dtype=dtype)
    layouts: list[tuple[str, LayerModelLayout | None]] = [
        ("plain SD1.5", None),
        ("transparent_attn (1 frame)", LayerModelLayout(1, 256, False)),
        ("joint (3 frames)", LayerModelLayout(3, 256, False)),
        ("fg2bg (2 frames + control)", LayerModelLayout(2, 256, True)),
    ]
    for name, layout in layouts:
        frames = layout.frames if layout else 1
        sample = torch.randn(2 * frames, 4, latent_side, latent_side, device=device, dtype=dtype)
        rows = context.repeat_interleave(frames, dim=0)
        handle = None
        if layout is not None:
            layer = build_random(
                lambda layout=layout: build_sd15_layer_model(unet, layout), device, dtype
            )
            handle = attach_sd15_layer_model(unet, layer.state_dict())
            if layout.uses_control:
                handle.set_control(torch.rand(1, 3, size, size, device=device))
        baseline = None if layout is None else "plain SD1.5"

        def step(sample: torch.Tensor = sample, rows: torch.Tensor = rows) -> torch.Tensor:
            return unet(sample, 500, rows).sample

        time_stage(report, "UNet CFG step", name, step, device, repeat, baseline)
        if handle is not None:
            handle.detach()

    vae = build_random(lambda: AutoencoderKL.from_config(vae_config), device, dtype)
    latents = torch.randn(1, 4, latent_side, latent_side, device=device, dtype=dtype)
    time_stage(report, "VAE decode", "SD VAE", lambda: vae.decode(latents).sample, device, repeat)


def bench_sdxl(
    report: BenchReport, device: torch.device, dtype: torch.dtype, size: int, repeat: int
) -> None:
    """SDXL at `size`²: both text encoders, a CFG step with each layer file merged, the
    cost of merging (attach) and restoring (detach) each file, and the float32 VAE."""
    models = random_sdxl_model_set(device, dtype)
    base, unet = models.base, models.base.unet
    tokens = torch.randint(0, 49408, (2, 77), device=device)
    assert base.text_encoder_2 is not None

    def encode() -> None:
        base.text_encoder(tokens, output_hidden_states=True)
        base.text_encoder_2(tokens, output_hidden_states=True)

    time_stage(report, "SDXL text encode", "CLIP-L + bigG, 2 prompts", encode, device, repeat)

    side = size // 8
    sample = torch.randn(2, 4, side, side, device=device, dtype=dtype)
    context = torch.randn(2, 77, 2048, device=device, dtype=dtype)
    added = {
        "text_embeds": torch.randn(2, 1280, device=device, dtype=dtype),
        "time_ids": torch.tensor([[size, size, 0, 0, size, size]] * 2, device=device, dtype=dtype),
    }

    def step() -> torch.Tensor:
        return unet(sample, 500, context, added_cond_kwargs=added).sample

    plain = "plain SDXL"
    time_stage(report, "SDXL UNet CFG step", plain, step, device, repeat)
    for name in ("layer_xl_transparent_attn", "layer_xl_transparent_conv", "layer_xl_fgble2bg"):
        state = models.layer_state_dict(name, on_device=False)
        started = time.perf_counter()
        handle = attach_sdxl_layer_model(unet, state)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        attach_ms = (time.perf_counter() - started) * 1000
        if handle.condition_channels:
            handle.set_condition(
                torch.randn(1, handle.condition_channels, side, side, device=device, dtype=dtype)
            )
        short = name.removeprefix("layer_xl_")
        time_stage(report, "SDXL UNet CFG step", f"+ {short} merged", step, device, repeat, plain)
        started = time.perf_counter()
        handle.detach()
        detach_ms = (time.perf_counter() - started) * 1000
        report.add(Timing("SDXL layer file", f"attach (merge) {short}", attach_ms))
        report.add(Timing("SDXL layer file", f"detach (restore) {short}", detach_ms))

    latents = torch.randn(1, 4, side, side, device=device, dtype=torch.float32)
    time_stage(
        report,
        "SDXL VAE decode",
        "float32 (force_upcast)",
        lambda: base.vae.decode(latents).sample,
        device,
        repeat,
    )
    del models
