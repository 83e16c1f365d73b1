"""Running the benchmark stages and collecting one report."""

from __future__ import annotations

import torch

from .decoder import bench_transparent_decoder
from .demo import bench_demo
from .jobs import bench_sd15_jobs, bench_sdxl_jobs
from .report import BenchReport, Timing
from .transport import bench_transport
from .unets import bench_sd15, bench_sdxl

STAGES = (
    "decoder",
    "sd15",
    "sdxl",
    "methods",
    "sdxl_methods",
    "transport",
    "demo",
    "cluster",
    "hires",
    "fewstep",
    "compile",
)
ON_REQUEST = ("demo", "cluster", "hires", "compile")
"""Stages run only when asked for (the cluster one needs Ray: pip install -e '.[cluster]';
the hires one takes minutes at 4096²; the compile one a minute or more per graph)."""


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
        stages: which groups to run (`STAGES`): "decoder" (transparent decode), "sd15" /
            "sdxl" (text, UNet step with each layer model, VAE), "methods" /
            "sdxl_methods" (whole jobs), "transport" (a 4096² layer over loopback, raw vs
            PNG), "demo" (the quick start's demo job stage by stage, and the whole
            command), "cluster" (demo jobs through one machine's server and through a
            local Ray cluster), "hires" (2048² and 4096²: the decodes whole and in
            tiles, one pass against two; `size` replaces the two sides), "fewstep" (the
            20-step job against each few-step LoRA, with how far the alpha moves), "compile"
            (the job eager and with the UNet compiled, and the graphs a method switch adds);
            None: all but "demo", "cluster", "hires" and "compile" on CUDA, the decoder and
            the transport on a CPU (real-size models on a CPU take minutes).
    """
    target = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    cuda = target.type == "cuda"
    torch_dtype = getattr(torch, dtype) if dtype else (torch.float16 if cuda else torch.float32)
    side = size or (1024 if cuda else 128)
    if stages is None:
        on_cuda = tuple(stage for stage in STAGES if stage not in ON_REQUEST)
        stages = on_cuda if cuda else ("decoder", "transport")
    name = torch.cuda.get_device_name(target) if cuda else "cpu"
    report = BenchReport(name, str(torch_dtype).removeprefix("torch."), side, torch.__version__)
    if "decoder" in stages:
        bench_transparent_decoder(report, target, torch_dtype, side, repeat)
    if "sd15" in stages:
        bench_sd15(report, target, torch_dtype, 512 if cuda else min(side, 512), repeat)
    if "sdxl" in stages:
        bench_sdxl(report, target, torch_dtype, 1024 if cuda else min(side, 1024), repeat)
    if "transport" in stages:
        bench_transport_stage(report, repeat)
    if "demo" in stages:
        bench_demo(report, target, repeat, size or 512)
    if "cluster" in stages:
        from .cluster import bench_cluster  # imports Ray

        bench_cluster(report, target, repeat)
    if "fewstep" in stages:
        from .fewstep import bench_few_step

        bench_few_step(report, target, torch_dtype, repeat)
    if "compile" in stages:
        from .compile import bench_compile

        bench_compile(report, target, torch_dtype, repeat)
    if "hires" in stages:
        from .hires import HIRES_SIDES, bench_hires

        bench_hires(report, target, torch_dtype, repeat, (size,) if size else HIRES_SIDES)
    if "methods" in stages:
        if cuda:
            bench_sd15_jobs(report, target, torch_dtype, repeat)
        else:
            bench_sd15_jobs(report, target, torch_dtype, repeat, steps=2, scale=8)
    if "sdxl_methods" in stages:
        if cuda:
            bench_sdxl_jobs(report, target, torch_dtype, repeat)
        else:
            bench_sdxl_jobs(report, target, torch_dtype, repeat, steps=2, scale=16)
    return report
