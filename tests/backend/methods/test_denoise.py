"""The shared denoising loop: Stop At, seeded noise, img2img strength and guidance."""

from __future__ import annotations

import math

import pytest
import torch

from backend.methods.denoise import denoise, noise_device, seeded_noise, stop_timestep
from backend.methods.schedule import plan_schedule
from backend.methods.stages import encode_text
from backend.model_set import ModelSet
from protocol import NoiseSource, Sampler

LATENT_SHAPE = (4, 8, 8)  # a 64 x 64 image


class _SpyUNet(torch.nn.Module):
    """Calls the real UNet and records the batch of every call."""

    def __init__(self, unet: torch.nn.Module) -> None:
        super().__init__()
        self.unet = unet
        self.batches: list[tuple[int, int]] = []

    def forward(
        self, sample: torch.Tensor, timestep: torch.Tensor, encoder_hidden_states: torch.Tensor
    ) -> object:
        self.batches.append((sample.shape[0], encoder_hidden_states.shape[0]))
        return self.unet(sample, timestep, encoder_hidden_states=encoder_hidden_states)


def _run(models: ModelSet, **options: object) -> torch.Tensor:
    """`denoise` on the demo UNet for one 64 x 64 row, seed 7, with `options` overriding."""
    context, uncond = encode_text(models, ["an apple"], ["bad, ugly"])
    noise, generators = seeded_noise([7], LATENT_SHAPE, models.device, models.dtype)
    arguments: dict[str, object] = {
        "unet": models.base.unet,
        "sampler": Sampler.EULER,
        "scheduler_config": models.base.scheduler_config,
        "latents": None,
        "noise": noise,
        "generators": generators,
        "context": context,
        "uncond_context": uncond,
        "cfg_scale": 7.0,
        "steps": 4,
    }
    arguments.update(options)
    return denoise(**arguments)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("ending_step", "expected"),
    [
        (1.0, None),
        (1.2, None),
        (0.0, math.inf),
        (-0.1, math.inf),
        (0.5, 499.5),
        (0.75, 249.75),
        (0.25, 749.25),
    ],
)
def test_stop_timestep_is_one_minus_the_fraction_of_999(
    ending_step: float, expected: float | None
) -> None:
    assert stop_timestep(ending_step) == expected


def test_a_seeds_noise_row_does_not_depend_on_its_place_in_the_batch() -> None:
    batch, _ = seeded_noise([3, 7, 11], LATENT_SHAPE, torch.device("cpu"), torch.float32)
    alone, _ = seeded_noise([7], LATENT_SHAPE, torch.device("cpu"), torch.float32)
    reversed_batch, _ = seeded_noise([11, 7, 3], LATENT_SHAPE, torch.device("cpu"), torch.float32)
    assert batch.shape == (3, *LATENT_SHAPE)
    assert torch.equal(batch[1], alone[0])
    assert torch.equal(batch, reversed_batch.flip(0))


def test_different_seeds_give_different_noise() -> None:
    noise, _ = seeded_noise([3, 4], LATENT_SHAPE, torch.device("cpu"), torch.float32)
    assert not torch.allclose(noise[0], noise[1])


def test_noise_is_drawn_on_the_cpu_and_the_generators_continue_its_stream() -> None:
    noise, generators = seeded_noise([5, 6], LATENT_SHAPE, torch.device("cpu"), torch.float64)
    assert noise.dtype == torch.float64
    assert [generator.device.type for generator in generators] == ["cpu", "cpu"]
    for row, seed, generator in zip(noise, [5, 6], generators, strict=True):
        reference = torch.Generator("cpu").manual_seed(seed)
        assert torch.equal(row, torch.randn(LATENT_SHAPE, generator=reference).double())
        # the sampler's per-step noise continues where the initial noise stopped
        next_draw = torch.randn(LATENT_SHAPE, generator=reference)
        assert torch.equal(torch.randn(LATENT_SHAPE, generator=generator), next_draw)


@pytest.mark.parametrize(
    ("sampler", "layer_steps", "calls"),
    [
        (Sampler.DDIM, 5, 9),  # 901, 801, 701, 601, 501 | 401, …, 101 (A1111 skips 1)
        (Sampler.EULER, 5, 10),  # 999, 888, 777, 666, 555 | 444, …
        (Sampler.DPMPP_2M_KARRAS, 5, 10),  # 999, 916, 815, 687, 523 | 327, …
        (Sampler.UNIPC, 6, 10),  # 999, 899, 799, 699, 599, 500 | 400, …
    ],
)
def test_stop_at_half_switches_the_layer_model_off_below_timestep_499_5(
    demo_models: ModelSet, sampler: Sampler, layer_steps: int, calls: int
) -> None:
    switched: list[bool] = []
    _run(demo_models, sampler=sampler, steps=10, use_layer_model=switched.append, ending_step=0.5)
    assert switched == [True] * layer_steps + [False] * (calls - layer_steps)
    timesteps = plan_schedule(
        sampler, demo_models.base.scheduler_config, 10, img2img=False
    ).timesteps
    assert float(timesteps[layer_steps - 1]) >= 499.5 > float(timesteps[layer_steps])


@pytest.mark.parametrize(("ending_step", "expected"), [(1.0, [True] * 4), (0.0, [False] * 4)])
def test_stop_at_1_keeps_the_layer_model_and_0_never_uses_it(
    demo_models: ModelSet, ending_step: float, expected: list[bool]
) -> None:
    calls: list[bool] = []
    _run(demo_models, use_layer_model=calls.append, ending_step=ending_step)
    assert calls == expected


def test_img2img_at_strength_1_runs_every_step(demo_models: ModelSet) -> None:
    reported: list[int] = []
    _run(
        demo_models,
        latents=torch.zeros(1, *LATENT_SHAPE),
        strength=1.0,
        on_step=lambda step, total, latents: reported.append(total),
    )
    assert reported == [4] * 4


@pytest.mark.parametrize(("cfg_scale", "batch"), [(7.0, 2), (1.0, 1)])
def test_guidance_1_skips_the_negative_pass(
    demo_models: ModelSet, cfg_scale: float, batch: int
) -> None:
    spy = _SpyUNet(demo_models.base.unet)
    _run(demo_models, unet=spy, cfg_scale=cfg_scale)
    assert spy.batches == [(batch, batch)] * 4


def test_guidance_1_ignores_the_negative_prompt(demo_models: ModelSet) -> None:
    other_uncond, _ = encode_text(demo_models, ["a pear"], ["x"])
    plain = _run(demo_models, cfg_scale=1.0)
    assert torch.equal(plain, _run(demo_models, cfg_scale=1.0, uncond_context=other_uncond))
    assert not torch.equal(_run(demo_models), _run(demo_models, uncond_context=other_uncond))


@pytest.mark.parametrize(
    ("source", "device", "drawn_on"),
    [
        (NoiseSource.CPU, "cuda", "cpu"),
        (NoiseSource.GPU, "cuda", "cuda"),
        (NoiseSource.GPU, "cuda:1", "cuda:1"),
        (NoiseSource.GPU, "mps", "cpu"),  # A1111 draws on the CPU there
        (NoiseSource.GPU, "cpu", "cpu"),
    ],
)
def test_gpu_noise_is_drawn_on_the_runs_accelerator(
    source: NoiseSource, device: str, drawn_on: str
) -> None:
    assert noise_device(source, torch.device(device)) == torch.device(drawn_on)


def test_gpu_noise_on_a_cpu_only_run_is_the_cpu_noise() -> None:
    cpu, _ = seeded_noise([5], LATENT_SHAPE, torch.device("cpu"), torch.float32)
    gpu, generators = seeded_noise(
        [5], LATENT_SHAPE, torch.device("cpu"), torch.float32, NoiseSource.GPU
    )
    assert torch.equal(cpu, gpu) and generators[0].device.type == "cpu"
