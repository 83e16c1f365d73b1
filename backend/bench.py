"""`layerdiffuse bench`: per-stage timings, ours beside the reference's way, in one run.

Models are built from the shipped real configs with random weights (timing depends
on shapes, not values), or at demo size on a CPU. Each stage is timed as the median
of several runs after warm-ups, with CUDA synchronised; ratios compare variants
measured in the same process on the same device.
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from torch import nn
from transformers import CLIPTextConfig, CLIPTextModel

from protocol import LayerRole, Method, ModelFamily

from .layerdiffuse import (
    LayerModelLayout,
    TransparentVAEDecoder,
    TransparentVAEEncoder,
    attach_sd15_layer_model,
    build_sd15_layer_model,
    use_reduction_group_norm,
)
from .methods.registry import run_method
from .methods.request import GenerationRequest
from .model_set import BaseModel, ModelSet
from .store.configs import config_path
from .store.tokenizer import clip_tokenizer
from .transport_bench import bench_transport


@dataclass
class Timing:
    """One measured stage."""

    stage: str
    variant: str
    milliseconds: float
    peak_mib: float | None = None
    baseline: str | None = None  # the variant this one is compared with
    ratio: float | None = None  # baseline time / this time (> 1 is faster)
    megabytes_per_second: float | None = None  # for transport stages


@dataclass
class BenchReport:
    device: str
    dtype: str
    size: int
    torch_version: str
    timings: list[Timing] = field(default_factory=list)

    def add(self, timing: Timing) -> Timing:
        if timing.baseline is not None:
            base = next(
                t for t in self.timings if t.stage == timing.stage and t.variant == timing.baseline
            )
            timing.ratio = base.milliseconds / timing.milliseconds
        self.timings.append(timing)
        return timing

    def table(self) -> str:
        lines = [
            f"device: {self.device}  dtype: {self.dtype}  size: {self.size}²  "
            f"torch {self.torch_version}",
            f"{'stage':<22} {'variant':<40} {'ms':>10} {'peak MiB':>9} {'speed-up':>12}",
        ]
        for t in self.timings:
            peak = f"{t.peak_mib:9.0f}" if t.peak_mib is not None else " " * 9
            ratio = f"{t.ratio:6.2f}× vs {t.baseline}" if t.ratio is not None else ""
            if t.megabytes_per_second is not None:
                ratio = f"{t.megabytes_per_second:7.0f} MB/s  {ratio}"
            lines.append(f"{t.stage:<22} {t.variant:<40} {t.milliseconds:10.2f} {peak} {ratio}")
        return "\n".join(lines)

    def write_json(self, path: Path) -> None:
        data = {**asdict(self), "timings": [asdict(t) for t in self.timings]}
        path.write_text(json.dumps(data, indent=2))


def measure(
    function: Callable[[], Any], device: torch.device, warmup: int = 2, repeat: int = 5
) -> tuple[float, float | None]:
    """Median wall time in ms of `function` and its peak CUDA memory in MiB."""
    cuda = device.type == "cuda"
    for _ in range(warmup):
        function()
    if cuda:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    samples = []
    for _ in range(repeat):
        start = time.perf_counter()
        function()
        if cuda:
            torch.cuda.synchronize(device)
        samples.append((time.perf_counter() - start) * 1000)
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if cuda else None
    return statistics.median(samples), peak


def build_random(
    factory: Callable[[], nn.Module], device: torch.device, dtype: torch.dtype
) -> nn.Module:
    """Build a module with its default random initialisation directly on the device."""
    torch.manual_seed(0)
    with torch.device(device):
        module = factory()
    return module.to(dtype).eval()


def _time(
    report: BenchReport,
    stage: str,
    variant: str,
    function: Callable[[], Any],
    device: torch.device,
    repeat: int,
    baseline: str | None = None,
) -> None:
    with torch.no_grad():
        ms, peak = measure(function, device, repeat=repeat)
    report.add(Timing(stage, variant, ms, peak, baseline))


def bench_transparent_decoder(
    report: BenchReport, device: torch.device, dtype: torch.dtype, size: int, repeat: int
) -> None:
    """One pass, the reference's sequential 8-view loop, and our batched variants."""
    decoder = build_random(TransparentVAEDecoder, device, dtype)
    pixel = torch.rand(1, 3, size, size, device=device, dtype=dtype)
    latent = torch.randn(1, 4, size // 8, size // 8, device=device, dtype=dtype)
    stage, reference = "transparent decode", "reference: 8 passes in a loop"

    def variant(name: str, function: Callable[[], Any], baseline: str | None = reference) -> None:
        _time(report, stage, name, function, device, repeat, baseline)

    use_reduction_group_norm(decoder, enabled=False)
    variant(reference, lambda: decoder.estimate_augmented_sequential(pixel, latent), None)
    variant(
        "8 views batched, native GroupNorm", lambda: decoder.estimate_augmented(pixel, latent, 8)
    )
    use_reduction_group_norm(decoder, enabled=True)
    variant(
        "8 passes in a loop, reduction GroupNorm",
        lambda: decoder.estimate_augmented_sequential(pixel, latent),
    )
    for views in (2, 4, 8):
        variant(
            f"ours: {views} views per batch",
            lambda views=views: decoder.estimate_augmented(pixel, latent, views),
        )
    decoder.to(memory_format=torch.channels_last)
    pixel_last = pixel.to(memory_format=torch.channels_last)
    variant(
        "ours: 8 views, channels_last", lambda: decoder.estimate_augmented(pixel_last, latent, 8)
    )
    decoder.to(memory_format=torch.contiguous_format)
    _time(
        report,
        "transparent 1 pass",
        "one view (no TTA)",
        lambda: decoder(pixel, latent),
        device,
        repeat,
    )


def bench_sd15(
    report: BenchReport, device: torch.device, dtype: torch.dtype, size: int, repeat: int
) -> None:
    """Text encoder, one CFG UNet step plain and with each layer model, VAE decode."""
    unet_config = json.loads(config_path("sd15", "unet").read_text())
    vae_config = json.loads(config_path("sd15", "vae").read_text())
    text_config = CLIPTextConfig(**json.loads(config_path("sd15", "text_encoder").read_text()))

    text_encoder = build_random(lambda: CLIPTextModel(text_config), device, dtype)
    tokens = torch.randint(0, 49408, (2, 77), device=device)
    _time(report, "text encode", "CLIP-L, 2 prompts", lambda: text_encoder(tokens), device, repeat)

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

        _time(report, "UNet CFG step", name, step, device, repeat, baseline)
        if handle is not None:
            handle.detach()

    vae = build_random(lambda: AutoencoderKL.from_config(vae_config), device, dtype)
    latents = torch.randn(1, 4, latent_side, latent_side, device=device, dtype=dtype)
    _time(report, "VAE decode", "SD VAE", lambda: vae.decode(latents).sample, device, repeat)


class _StepClock:
    """Records when each sampler step ends, to time the denoising loop alone."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.times: list[float] = []

    def __call__(self, step: int, total: int, latents: torch.Tensor) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.times.append(time.perf_counter())

    def per_step_ms(self) -> float:
        """Median step time, leaving out the first step (warm-up inside a run)."""
        gaps = [b - a for a, b in zip(self.times, self.times[1:], strict=False)]
        return statistics.median(gaps) * 1000 if gaps else float("nan")


def random_sd15_model_set(device: torch.device, dtype: torch.dtype) -> ModelSet:
    """A `ModelSet` of real-size SD1.5 and LayerDiffuse modules with random weights."""
    unet_config = json.loads(config_path("sd15", "unet").read_text())
    vae_config = json.loads(config_path("sd15", "vae").read_text())
    text_config = CLIPTextConfig(**json.loads(config_path("sd15", "text_encoder").read_text()))
    unet = build_random(lambda: UNet2DConditionModel.from_config(unet_config), device, dtype)
    base = BaseModel(
        family=ModelFamily.SD15,
        name="random-weights SD1.5 (bench)",
        unet=unet,
        vae=build_random(lambda: AutoencoderKL.from_config(vae_config), device, dtype),
        text_encoder=build_random(lambda: CLIPTextModel(text_config), device, dtype),
        tokenizer=clip_tokenizer(),
        scheduler_config=json.loads(config_path("sd15", "scheduler").read_text()),
    )
    layouts = {
        "layer_sd15_transparent_attn": LayerModelLayout(1, 256, False),
        "layer_sd15_joint": LayerModelLayout(3, 256, False),
        "layer_sd15_fg2bg": LayerModelLayout(2, 256, True),
        "layer_sd15_bg2fg": LayerModelLayout(2, 256, True),
    }

    def load(name: str) -> dict[str, torch.Tensor]:
        if name in layouts:
            factory: Callable[[], nn.Module] = lambda: build_sd15_layer_model(unet, layouts[name])  # noqa: E731
        elif name.endswith("decoder"):
            factory = TransparentVAEDecoder
        else:
            factory = TransparentVAEEncoder
        return build_random(factory, device, dtype).state_dict()

    return ModelSet(base=base, load_layer_file=load, offset_scales={}, device=device, dtype=dtype)


def bench_sd15_methods(
    report: BenchReport,
    device: torch.device,
    dtype: torch.dtype,
    repeat: int,
    steps: int = 20,
    scale: int = 1,
) -> None:
    """Each SD1.5 method end to end, as the methods run it: whole job, per step, peak memory.

    Sizes are the seed README's (512², and 512×640 for the layer methods) divided by
    `scale` (a CPU run uses small sizes only to check that the stage works).
    """
    models = random_sd15_model_set(device, dtype)
    cuda = device.type == "cuda"
    wide, tall = 512 // scale, 640 // scale
    layer = np.full((tall, wide, 4), 255, dtype=np.uint8)
    fg, bg = LayerRole.FOREGROUND, LayerRole.BACKGROUND
    jobs: list[tuple[str, Method, int, int, dict[LayerRole, np.ndarray]]] = [
        (f"transparent {wide}x{wide}", Method.SD15_TRANSPARENT, wide, wide, {}),
        (f"transparent img2img {wide}x{wide}", Method.SD15_TRANSPARENT, wide, wide, {fg: layer}),
        (f"joint {wide}x{tall} (fg+bg+blend)", Method.SD15_JOINT, wide, tall, {}),
        (f"fg2bg {wide}x{tall} (bg+blend)", Method.SD15_FG_TO_BG, wide, tall, {fg: layer}),
        (f"bg2fg {wide}x{tall} (fg+blend)", Method.SD15_BG_TO_FG, wide, tall, {bg: layer}),
    ]
    for name, method, width, height, inputs in jobs:
        request = GenerationRequest(
            method=method,
            prompt="a glass cup",
            negative_prompt="bad, ugly",
            inputs=inputs,
            width=width,
            height=height,
            steps=steps,
        )
        run_method(request, models)  # warm-up: loads the layer file, picks kernels
        totals, steps_ms = [], []
        if cuda:
            torch.cuda.reset_peak_memory_stats(device)
        for _ in range(max(1, repeat // 2)):
            clock = _StepClock(device)
            started = time.perf_counter()
            run_method(request, models, clock)
            if cuda:
                torch.cuda.synchronize(device)
            totals.append((time.perf_counter() - started) * 1000)
            steps_ms.append(clock.per_step_ms())
        peak = torch.cuda.max_memory_allocated(device) / 2**20 if cuda else None
        report.add(Timing("SD1.5 job", f"{name}, {steps} steps", statistics.median(totals), peak))
        report.add(Timing("SD1.5 step", name, statistics.median(steps_ms), peak))


def bench_transport_stage(report: BenchReport, repeat: int, side: int = 4096) -> None:
    """A side² RGBA layer there and back over loopback websockets: raw against PNG."""
    stage = f"transport {side}² layer"
    baseline = None
    for variant, milliseconds, throughput in reversed(bench_transport(side, repeat)):
        timing = Timing(stage, f"round trip, {variant}", milliseconds, None, baseline)
        timing.megabytes_per_second = throughput
        report.add(timing)
        baseline = timing.variant


def run_bench(
    *,
    device: str | None = None,
    dtype: str | None = None,
    size: int | None = None,
    repeat: int = 5,
    stages: tuple[str, ...] | None = None,
) -> BenchReport:
    """Run the benchmark and return its report.

    Args:
        device: "cuda", "cpu", …; None picks CUDA when present.
        dtype: "float16", "bfloat16" or "float32"; None: float16 on CUDA, else float32.
        size: image side in pixels; None: 1024 on CUDA, 128 on the CPU.
        repeat: timed runs per variant (the median is reported).
        stages: which groups to run: "decoder" (transparent decode), "sd15" (text, UNet,
            VAE per call), "methods" (each SD1.5 method end to end), "transport" (a 4096²
            layer over loopback, raw vs PNG); None: all on CUDA, the decoder and the
            transport on a CPU (real-size SD1.5 on a CPU takes minutes).
    """
    target = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    cuda = target.type == "cuda"
    torch_dtype = getattr(torch, dtype) if dtype else (torch.float16 if cuda else torch.float32)
    side = size or (1024 if cuda else 128)
    if stages is None:
        stages = ("decoder", "sd15", "methods", "transport") if cuda else ("decoder", "transport")
    name = torch.cuda.get_device_name(target) if cuda else "cpu"
    report = BenchReport(name, str(torch_dtype).removeprefix("torch."), side, torch.__version__)
    if "decoder" in stages:
        bench_transparent_decoder(report, target, torch_dtype, side, repeat)
    if "sd15" in stages:
        bench_sd15(report, target, torch_dtype, min(side, 512) if not cuda else 512, repeat)
    if "transport" in stages:
        bench_transport_stage(report, repeat)
    if "methods" in stages:
        if cuda:
            bench_sd15_methods(report, target, torch_dtype, repeat)
        else:
            bench_sd15_methods(report, target, torch_dtype, repeat, steps=2, scale=8)
    return report
