"""Split into Layers and the matting fallback over the websocket, with the demo sets."""

from __future__ import annotations

import numpy as np

from protocol import (
    ErrorCode,
    ErrorReceived,
    JobDone,
    JobStatus,
    LayerRole,
    Method,
    ModelFamily,
    ProgressReceived,
    ResultReceived,
)

from .conftest import RunningServer, run_with_server


def flat_picture(width: int = 64, height: int = 48) -> np.ndarray:
    rgba = np.random.default_rng(1).integers(0, 256, (height, width, 4), dtype=np.uint8)
    rgba[..., 3] = 255
    return rgba


def test_a_split_job_returns_one_result_of_n_layers_in_order(demo_layered_models) -> None:
    async def scenario(server: RunningServer) -> None:
        async with server.client() as client:
            welcome = (await client.hello()).welcome
            assert welcome.model.family is ModelFamily.QWEN_LAYERED
            assert welcome.capabilities.methods == (Method.SPLIT_LAYERS,)
            assert welcome.model.warning is None
            inputs = {LayerRole.LAYER: flat_picture()}
            await client.submit(
                "s1", Method.SPLIT_LAYERS, inputs, width=64, height=48, layers=3, cfg_scale=4.0
            )
            events = await client.until_done("s1")
        assert isinstance(events[-1], JobDone)
        assert events[-1].done.status is JobStatus.COMPLETED, events[-1].done.error
        progress = [event for event in events if isinstance(event, ProgressReceived)]
        assert [p.progress.step for p in progress] == [1, 2]
        assert all(p.preview is not None for p in progress)
        (result,) = [event for event in events if isinstance(event, ResultReceived)]
        assert result.images == {}
        assert [layer.role for layer in result.result.layers] == [LayerRole.LAYER] * 3
        ids = [layer.image.id for layer in result.result.layers]
        assert ids == ["s1/0/layer0", "s1/0/layer1", "s1/0/layer2"]
        assert [len(data) for data in result.stack] == [64 * 48 * 4] * 3

    run_with_server(demo_layered_models, scenario)


def test_a_split_server_refuses_other_methods(demo_layered_models) -> None:
    async def scenario(server: RunningServer) -> None:
        async with server.client() as client:
            await client.hello()
            await client.submit("t", Method.SD15_TRANSPARENT)
            event = await client.next_event()
        assert isinstance(event, ErrorReceived), event
        assert event.error.code is ErrorCode.INVALID_REQUEST and event.error.job == "t"
        assert "sd15_transparent" in event.error.message

    run_with_server(demo_layered_models, scenario)


def test_a_failing_checkpoint_warns_in_welcome_and_its_fallback_runs(
    demo_illustrious_models,
) -> None:
    async def scenario(server: RunningServer) -> None:
        async with server.client() as client:
            welcome = (await client.hello()).welcome
            assert welcome.model.warning is not None
            assert "Illustrious-XL" in welcome.model.warning
            methods = welcome.capabilities.methods
            assert Method.SDXL_MATTED in methods and Method.SDXL_TRANSPARENT_ATTN in methods
            await client.submit("m", Method.SDXL_MATTED, prompt="a fox")
            events = await client.until_done("m")
        assert events[-1].done.status is JobStatus.COMPLETED, events[-1].done.error
        (result,) = [event for event in events if isinstance(event, ResultReceived)]
        assert set(result.images) == {LayerRole.FOREGROUND} and result.stack == ()

    run_with_server(demo_illustrious_models, scenario)
