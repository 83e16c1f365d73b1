"""Split into Layers on the tiny demo: layers, sizes, seeds, captions, cancel, the pipeline."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler, QwenImageLayeredPipeline
from PIL import Image

from backend.split.demo import demo_tokenizer
from backend.split.layered import (
    CAPTION_PROMPT,
    PROMPT_TEMPLATE,
    TEMPLATE_TOKENS,
    LayeredComponents,
    caption_image,
    generation_size,
    pack_frames,
    split_into_layers,
    unpack_frames,
)

FAST = {"steps": 2, "cfg": 4.0, "resolution": 128}


def _picture(height: int = 48, width: int = 80) -> np.ndarray:
    rgba = np.full((height, width, 4), 255, dtype=np.uint8)
    rgba[..., :3] = (30, 90, 200)
    rgba[height // 4 : height // 2, width // 4 : width // 2, :3] = (200, 40, 40)
    return rgba


def test_three_layers_come_back_rgba_at_the_input_size_deterministic_per_seed(
    layered_demo: LayeredComponents,
) -> None:
    picture = _picture()
    first = split_into_layers(layered_demo, picture, 3, prompt="a red box", seed=7, **FAST)
    assert len(first) == 3
    assert all(layer.shape == (48, 80, 4) and layer.dtype == np.uint8 for layer in first)
    assert all(np.ptp(layer[..., 3]) > 10 for layer in first)  # alpha varies: it is decoded
    again = split_into_layers(layered_demo, picture, 3, prompt="a red box", seed=7, **FAST)
    assert all(np.array_equal(a, b) for a, b in zip(first, again, strict=True))
    other = split_into_layers(layered_demo, picture, 3, prompt="a red box", seed=8, **FAST)
    assert np.abs(other[0].astype(int) - first[0].astype(int)).max() > 5
    assert np.abs(first[1].astype(int) - first[2].astype(int)).max() > 5  # layers differ


def test_without_a_prompt_the_text_encoder_captions_the_picture(
    layered_demo: LayeredComponents,
) -> None:
    picture = _picture()
    width, height = generation_size(80, 48, 128)
    resized = Image.fromarray(picture, "RGBA").resize((width, height), Image.Resampling.LANCZOS)
    caption = caption_image(layered_demo, resized, max_new_tokens=6)
    assert caption != ""
    captioned = split_into_layers(
        layered_demo, picture, 2, prompt=None, seed=3, caption_tokens=6, **FAST
    )
    given = split_into_layers(layered_demo, picture, 2, prompt=caption, seed=3, **FAST)
    assert all(np.array_equal(a, b) for a, b in zip(captioned, given, strict=True))


def test_progress_counts_every_step_and_raising_cancels(layered_demo: LayeredComponents) -> None:
    calls: list[tuple[int, int, tuple[int, ...]]] = []
    split_into_layers(
        layered_demo,
        _picture(),
        2,
        prompt="x",
        seed=1,
        on_step=lambda step, total, latents: calls.append((step, total, tuple(latents.shape))),
        **{**FAST, "steps": 3},
    )
    # 128² area at 5:3 → 160×96: 10×6 tokens a frame, composite + 2 layers.
    assert calls == [(1, 3, (1, 180, 64)), (2, 3, (1, 180, 64)), (3, 3, (1, 180, 64))]

    class Cancelled(Exception):
        pass

    def cancel(step: int, total: int, latents: torch.Tensor) -> None:
        raise Cancelled

    with pytest.raises(Cancelled):
        split_into_layers(layered_demo, _picture(), 2, prompt="x", seed=1, on_step=cancel, **FAST)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"layers": 0}, "layers 0 outside 1..10"),
        ({"steps": 0}, "steps must be at least 1, got 0"),
        ({"resolution": 650}, "resolution 650 is not a multiple of 32 in 64..1024"),
        ({"image": np.zeros((8, 8, 3), np.uint8)}, "image must be (H, W, 4) uint8"),
    ],
)
def test_bad_requests_are_refused_before_any_work(
    layered_demo: LayeredComponents, change: dict, message: str
) -> None:
    arguments = {"image": _picture(), "layers": 2, **FAST, **change}
    image = arguments.pop("image")
    layers = arguments.pop("layers")
    with pytest.raises(ValueError) as raised:
        split_into_layers(layered_demo, image, layers, prompt="x", seed=0, **arguments)
    assert str(raised.value).startswith(message)


def test_generation_size_keeps_the_area_and_aspect_in_multiples_of_32() -> None:
    assert generation_size(1000, 1000, 640) == (640, 640)
    assert generation_size(1920, 1080, 640) == (864, 480)
    assert generation_size(1080, 1920, 1024) == (768, 1376)


def test_packing_round_trips_frame_by_frame() -> None:
    frames = torch.arange(2 * 3 * 16 * 4 * 6, dtype=torch.float32).view(2, 3, 16, 4, 6)
    tokens = pack_frames(frames)
    assert tokens.shape == (2, 3 * 2 * 3, 64)
    # token 0 of frame 1 is the top-left 2×2 patch of that frame, channel-major
    assert torch.equal(tokens[0, 6, :4], frames[0, 1, 0, :2, :2].reshape(4))
    assert torch.equal(unpack_frames(tokens, 3, 2, 3), frames)


def test_templates_are_the_pipelines_and_the_header_is_34_tokens() -> None:
    tokenizer = demo_tokenizer()
    pipe = QwenImageLayeredPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(),
        vae=None,
        text_encoder=None,
        tokenizer=tokenizer,
        processor=None,
        transformer=None,
    )
    assert pipe.prompt_template_encode == PROMPT_TEMPLATE
    assert pipe.prompt_template_encode_start_idx == TEMPLATE_TOKENS == 34
    assert pipe.image_caption_prompt_en == CAPTION_PROMPT
    header = PROMPT_TEMPLATE.split("{}")[0]
    assert len(tokenizer(header)["input_ids"]) == TEMPLATE_TOKENS
    tokens = tokenizer.convert_ids_to_tokens(
        tokenizer(PROMPT_TEMPLATE.format("a cat"))["input_ids"]
    )
    assert tokens[TEMPLATE_TOKENS - 1 : TEMPLATE_TOKENS + 2] == ["Ċ", "a", "Ġc"]


def test_the_recipe_matches_diffusers_qwen_image_layered_pipeline(
    layered_demo: LayeredComponents,
) -> None:
    """Same components, seed, prompt, true CFG with normalisation: the same latents each
    step (float32, exactly) and the same layers (to rounding)."""
    picture = _picture(640, 640)
    ours: list[torch.Tensor] = []
    layers = split_into_layers(
        layered_demo,
        picture,
        2,
        prompt="a red box",
        steps=2,
        cfg=4.0,
        seed=5,
        resolution=640,
        on_step=lambda step, total, latents: ours.append(latents.clone()),
    )
    pipe = QwenImageLayeredPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler.from_config(layered_demo.scheduler_config),
        vae=layered_demo.vae,
        text_encoder=layered_demo.text_encoder,
        tokenizer=layered_demo.tokenizer,
        processor=None,  # only its captions use it; a prompt is given
        transformer=layered_demo.transformer,
    )
    pipe.set_progress_bar_config(disable=True)
    theirs: list[torch.Tensor] = []

    def record(pipeline: object, index: int, timestep: torch.Tensor, tensors: dict) -> dict:
        theirs.append(tensors["latents"].clone())
        return {}

    reference = pipe(
        image=Image.fromarray(picture, "RGBA"),
        prompt="a red box",
        negative_prompt=" ",
        true_cfg_scale=4.0,
        layers=2,
        num_inference_steps=2,
        resolution=640,
        cfg_normalize=True,
        generator=torch.Generator().manual_seed(5),
        output_type="np",
        callback_on_step_end=record,
    ).images[0]
    assert len(ours) == len(theirs) == 2
    for mine, expected in zip(ours, theirs, strict=True):
        torch.testing.assert_close(mine, expected, atol=1e-6, rtol=0)
    assert reference.shape == (2, 640, 640, 4)
    for mine, expected in zip(layers, reference, strict=True):
        assert np.abs(mine.astype(int) - (expected * 255).round().astype(int)).max() <= 1
