"""`torch.compile` of the SD UNet (issue #13): the same layers, graphs counted, undone.

Dynamo's "eager" backend captures the same graphs and guards as inductor without
generating kernels (seconds, not the minute a CPU takes to compile the demo UNet), so
these tests check capture, guards and the graph count; `layerdiffuse bench --stages
compile` measures inductor's speed.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from backend.bench.compile import bench_compile
from backend.bench.report import BenchReport
from backend.methods.compiled import compile_unet, graph_count
from backend.methods.registry import run_method
from backend.methods.request import GenerationRequest
from backend.model_set import ModelSet
from protocol import Hires, LayerRole, Method

FG = LayerRole.FOREGROUND


@pytest.fixture
def fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


@pytest.mark.usefixtures("fresh_dynamo")
def test_a_compiled_unet_gives_the_eager_layers_and_switching_back_adds_no_graph(
    demo_models: ModelSet,
) -> None:
    request = GenerationRequest(
        Method.SD15_TRANSPARENT, prompt="a cup", width=64, height=64, steps=2, hires=Hires.OFF
    )
    eager = run_method(request, demo_models).images[0][FG]
    before = graph_count()
    compiled = compile_unet(demo_models, backend="eager")
    try:
        assert np.array_equal(run_method(request, demo_models).images[0][FG], eager)
        first = graph_count() - before
        assert first >= 1
        run_method(replace(request, method=Method.SD15_JOINT), demo_models)  # three frames
        after_joint = graph_count() - before
        assert after_joint > first
        run_method(request, demo_models)
        assert graph_count() - before == after_joint  # the cache keeps the first graph
    finally:
        compiled.undo()
    assert demo_models.base.unet.forward == compiled.original
    assert np.array_equal(run_method(request, demo_models).images[0][FG], eager)


def test_only_the_sd_families_compile(demo_layered_models) -> None:
    with pytest.raises(ValueError, match="not qwen_layered"):
        compile_unet(demo_layered_models)


@pytest.mark.usefixtures("fresh_dynamo", "demo_xdg_cache")
def test_the_bench_puts_compiled_rows_beside_the_eager_one() -> None:
    report = BenchReport("cpu", "float32", 128, torch.__version__)
    bench_compile(report, torch.device("cpu"), torch.float32, 1, backend="eager", steps=2)
    variants = [timing.variant for timing in report.timings]
    assert variants[0] == "eager, 2 steps"
    assert variants[1] == "compiled (eager): first job"
    assert variants[2].startswith("compiled: steady (max |Δ| 0, ")
    assert variants[3].startswith("then sd15_joint, first (") and variants[4].startswith("back to")
    assert all(t.ratio is not None for t in report.timings if t.baseline is not None)
