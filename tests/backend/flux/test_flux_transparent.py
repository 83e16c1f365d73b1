"""FLUX transparent generation on the tiny demo set: txt2img and img2img end to end on a CPU."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from backend.methods.flux_transparent import (
    flux_schedule,
    latent_image_ids,
    pack_latents,
    run_flux_transparent,
    run_flux_transparent_img2img,
    unpack_latents,
)
from backend.model_set import FluxModelSet
from backend.store.flux_demo import FLUX_DEV_SCHEDULER

SHORT = {"steps": 3, "max_sequence_length": 32}


def _source() -> np.ndarray:
    rgba = np.zeros((64, 128, 4), dtype=np.uint8)
    rgba[16:48, 32:96] = (200, 40, 40, 255)
    rgba[16:48, 96:112] = (40, 200, 40, 128)
    return rgba


def test_text_to_transparent_gives_rgba_of_the_size_deterministic_per_seed(
    flux_demo: FluxModelSet,
) -> None:
    first = run_flux_transparent(flux_demo, "a glass bottle", seed=7, width=128, height=64, **SHORT)
    assert first.shape == (1, 4, 64, 128) and first.dtype == torch.float32
    assert first.min() >= 0.0 and first.max() <= 1.0
    alpha = first[:, 3]
    assert alpha.min() < 0.2 and alpha.max() > 0.8  # transparent and opaque parts
    again = run_flux_transparent(flux_demo, "a glass bottle", seed=7, width=128, height=64, **SHORT)
    assert torch.equal(first, again)
    other = run_flux_transparent(flux_demo, "a glass bottle", seed=8, width=128, height=64, **SHORT)
    assert (other - first).abs().max() > 0.05


def test_a_batch_uses_consecutive_seeds(flux_demo: FluxModelSet) -> None:
    batch = run_flux_transparent(
        flux_demo, "smoke", seed=20, width=64, height=64, image_count=2, augment=False, **SHORT
    )
    single = run_flux_transparent(
        flux_demo, "smoke", seed=21, width=64, height=64, augment=False, **SHORT
    )
    assert batch.shape == (2, 4, 64, 64)
    torch.testing.assert_close(batch[1:], single, atol=1e-3, rtol=0)  # batched rounding
    assert (batch[0] - batch[1]).abs().max() > 0.05


def test_progress_counts_every_step(flux_demo: FluxModelSet) -> None:
    calls: list[tuple[int, int, tuple[int, ...]]] = []
    run_flux_transparent(
        flux_demo,
        "x",
        seed=1,
        width=64,
        height=64,
        augment=False,
        on_step=lambda step, total, latents: calls.append((step, total, tuple(latents.shape))),
        **SHORT,
    )
    # the unpacked latents (B, 16, h, w), as a preview reads them
    assert calls == [(1, 3, (1, 16, 8, 8)), (2, 3, (1, 16, 8, 8)), (3, 3, (1, 16, 8, 8))]


def test_transparent_img2img_gives_rgba_of_the_source_size_deterministic_per_seed(
    flux_demo: FluxModelSet,
) -> None:
    source = _source()
    calls: list[int] = []
    first = run_flux_transparent_img2img(
        flux_demo,
        "a red box",
        source,
        seed=3,
        strength=0.5,
        steps=4,
        max_sequence_length=32,
        on_step=lambda step, total, latents: calls.append(total),
    )
    assert first.shape == (1, 4, 64, 128)
    assert calls == [2, 2]  # strength 0.5 of 4 steps
    again = run_flux_transparent_img2img(
        flux_demo, "a red box", source, seed=3, strength=0.5, steps=4, max_sequence_length=32
    )
    assert torch.equal(first, again)
    other = run_flux_transparent_img2img(
        flux_demo, "a red box", source, seed=4, strength=0.5, steps=4, max_sequence_length=32
    )
    assert (other - first).abs().max() > 0.01
    # the source matters: a different image gives a different result at the same seed
    flipped = run_flux_transparent_img2img(
        flux_demo,
        "a red box",
        np.ascontiguousarray(source[:, ::-1]),
        seed=3,
        strength=0.5,
        steps=4,
        max_sequence_length=32,
    )
    assert (flipped - first).abs().max() > 0.01


def test_bad_inputs_are_refused_before_any_work(flux_demo: FluxModelSet) -> None:
    with pytest.raises(ValueError, match="size 96x64 is not a positive multiple of 64"):
        run_flux_transparent(flux_demo, "x", seed=0, width=96, height=64)
    with pytest.raises(ValueError, match="steps 0 is below 1"):
        run_flux_transparent(flux_demo, "x", seed=0, width=64, height=64, steps=0)
    with pytest.raises(ValueError, match=r"strength 0.0 outside \(0, 1\]"):
        run_flux_transparent_img2img(flux_demo, "x", _source(), seed=0, strength=0.0)
    with pytest.raises(ValueError, match=r"source must be \(H, W, 4\) uint8"):
        run_flux_transparent_img2img(flux_demo, "x", _source()[..., :3], seed=0)


def test_packing_is_two_by_two_patches_and_unpacking_inverts_it() -> None:
    latents = torch.arange(2 * 16 * 4 * 6, dtype=torch.float32).reshape(2, 16, 4, 6)
    packed = pack_latents(latents)
    assert packed.shape == (2, 2 * 3, 64)
    # token (row 1, column 2), feature (channel 5, dy 1, dx 0)
    assert packed[1, 1 * 3 + 2, 5 * 4 + 1 * 2 + 0] == latents[1, 5, 3, 4]
    assert torch.equal(unpack_latents(packed, 4, 6), latents)
    ids = latent_image_ids(2, 3, torch.device("cpu"), torch.float32)
    assert ids.tolist()[4] == [0.0, 1.0, 1.0]


def test_schedule_is_fluxs_shifted_sigmas_and_img2img_keeps_the_tail() -> None:
    scheduler, timesteps = flux_schedule(FLUX_DEV_SCHEDULER, 4, 128, 128)
    # 1024²: 4096 tokens → mu = max_shift 1.15; sigma' = e^mu / (e^mu + 1/sigma − 1)
    sigmas = np.linspace(1.0, 0.25, 4)
    shifted = np.exp(1.15) / (np.exp(1.15) + 1 / sigmas - 1)
    np.testing.assert_allclose(timesteps.numpy(), shifted * 1000, rtol=1e-5)
    assert scheduler.sigmas[-1] == 0
    _, tail = flux_schedule(FLUX_DEV_SCHEDULER, 10, 128, 128, strength=0.35)
    assert len(tail) == 4  # diffusers' FluxImg2ImgPipeline: 10 − int(10 − 3.5) steps
