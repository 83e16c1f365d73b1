"""The report of a benchmark run: timed stages, ratios against a baseline, table and JSON."""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch


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


def time_stage(
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
