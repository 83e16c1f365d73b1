"""The A1111 samplers as diffusers schedulers: schedules, a functional denoising check, noise."""

from __future__ import annotations

import json
import logging
from importlib import resources
from typing import Any

import numpy as np
import pytest
import torch
from diffusers import (
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    UniPCMultistepScheduler,
)

from backend.methods.samplers import SAMPLERS_WITH_NOISE, make_scheduler
from protocol.methods import Sampler

STEPS = 20
KARRAS = (Sampler.DPMPP_2M_KARRAS, Sampler.DPMPP_2M_SDE_KARRAS)


def _base_config(family: str) -> dict[str, Any]:
    """The scheduler config shipped for a base model family (SD1.5's is runwayml's PNDM one)."""
    path = (
        resources.files("backend.store")
        / "configs"
        / family
        / "scheduler"
        / "scheduler_config.json"
    )
    return json.loads(path.read_text())


@pytest.fixture(params=["sd15", "sdxl"])
def config(request) -> dict[str, Any]:
    return _base_config(request.param)


def _model_sigmas() -> np.ndarray:
    """σ_t = sqrt((1 - ᾱ_t) / ᾱ_t) of SD's scaled-linear betas 0.00085..0.012 over 1000 steps."""
    betas = np.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=np.float64) ** 2
    alphas_cumprod = np.cumprod(1.0 - betas)
    return np.sqrt((1.0 - alphas_cumprod) / alphas_cumprod)


def _gaussian_eps(
    model_input: torch.Tensor, timestep: torch.Tensor, mean: float, std: float
) -> torch.Tensor:
    """The exact ε prediction for data x0 ~ N(mean, std²), per element.

    The UNet sees the variance-preserving input x_in = a·x0 + b·ε with σ the noise level
    of `timestep` (linear in σ between training timesteps, as diffusers' Euler does),
    a = 1 / sqrt(1 + σ²) and b = σ·a; every scheduler's `scale_model_input` brings its
    sample to that form. x_in and ε are jointly Gaussian with Cov(ε, x_in) = b and
    Var(x_in) = a²·std² + b², so E[ε | x_in] = b·(x_in − a·mean) / (a²·std² + b²).
    The Karras samplers pass rounded timesteps, so there σ is off by a fraction of a
    training step, as it is for a real UNet.
    """
    sigmas = _model_sigmas()
    sigma = float(np.interp(float(timestep), np.arange(len(sigmas)), sigmas))
    a = 1.0 / (1.0 + sigma**2) ** 0.5
    b = sigma * a
    eps = b * (model_input.double() - a * mean) / (a * a * std * std + b * b)
    return eps.to(model_input.dtype)


def _denoise(
    sampler: Sampler,
    config: dict[str, Any],
    *,
    steps: int = STEPS,
    mean: float = 1.0,
    std: float = 0.5,
    noise_seed: int = 0,
    generator: torch.Generator | list[torch.Generator] | None = None,
    batch: int = 1,
) -> torch.Tensor:
    """A run the way a pipeline does it, with the exact Gaussian ε as the model."""
    scheduler = make_scheduler(sampler, config)
    scheduler.set_timesteps(steps)
    rows = [
        torch.randn((1, 4, 64, 64), generator=torch.Generator().manual_seed(noise_seed + row))
        for row in range(batch)
    ]
    sample = torch.cat(rows) * scheduler.init_noise_sigma
    step_kwargs = {"generator": generator} if generator is not None else {}
    for timestep in scheduler.timesteps:
        model_input = scheduler.scale_model_input(sample, timestep)
        eps = _gaussian_eps(model_input, timestep, mean, std)
        sample = scheduler.step(eps, timestep, sample, **step_kwargs).prev_sample
    return sample


# construction


@pytest.mark.parametrize(
    ("sampler", "scheduler_class", "options"),
    [
        (
            Sampler.DPMPP_2M_KARRAS,
            DPMSolverMultistepScheduler,
            {"algorithm_type": "dpmsolver++", "solver_order": 2, "use_karras_sigmas": True},
        ),
        (
            Sampler.DPMPP_2M_SDE_KARRAS,
            DPMSolverMultistepScheduler,
            {"algorithm_type": "sde-dpmsolver++", "solver_order": 2, "use_karras_sigmas": True},
        ),
        (Sampler.EULER_A, EulerAncestralDiscreteScheduler, {"timestep_spacing": "linspace"}),
        (Sampler.EULER, EulerDiscreteScheduler, {"timestep_spacing": "linspace"}),
        (Sampler.UNIPC, UniPCMultistepScheduler, {"solver_type": "bh1", "solver_order": 3}),
        (Sampler.DDIM, DDIMScheduler, {"clip_sample": False, "set_alpha_to_one": False}),
    ],
)
def test_each_sampler_builds_its_scheduler_on_the_base_noise_schedule(
    sampler, scheduler_class, options, config
):
    scheduler = make_scheduler(sampler, config)
    assert type(scheduler) is scheduler_class
    for key, value in options.items():
        assert scheduler.config[key] == value
    assert scheduler.config.beta_schedule == "scaled_linear"
    assert scheduler.config.beta_start == 0.00085 and scheduler.config.beta_end == 0.012
    assert scheduler.config.num_train_timesteps == 1000
    assert scheduler.config.prediction_type == "epsilon"


@pytest.mark.parametrize("sampler", list(Sampler))
def test_prediction_type_comes_from_the_base_config(sampler):
    config = {**_base_config("sd15"), "prediction_type": "v_prediction"}
    assert make_scheduler(sampler, config).config.prediction_type == "v_prediction"


def test_foreign_config_keys_are_dropped_silently():
    """PNDM's keys and the _class_name metadata log nothing (warnings would fail anyway)."""
    records: list[logging.LogRecord] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    handler = Collect(level=logging.INFO)
    logger = logging.getLogger("diffusers")
    logger.addHandler(handler)
    try:
        config = {**_base_config("sd15"), "not_a_scheduler_key": 3}
        for sampler in Sampler:
            make_scheduler(sampler, config)
    finally:
        logger.removeHandler(handler)
    assert [record.getMessage() for record in records] == []


def test_an_unknown_sampler_is_refused():
    with pytest.raises(ValueError, match=r"^unknown sampler 'heun'$"):
        make_scheduler("heun", _base_config("sd15"))  # type: ignore[arg-type]


def test_the_noise_samplers_are_euler_a_dpmpp_2m_sde_and_lcm():
    """LCM re-noises its x0 prediction between steps with the row's generator."""
    expected = {Sampler.EULER_A, Sampler.DPMPP_2M_SDE_KARRAS, Sampler.LCM, Sampler.LCM_SGM_UNIFORM}
    assert frozenset(expected) == SAMPLERS_WITH_NOISE


# schedules


@pytest.mark.parametrize("sampler", list(Sampler))
def test_set_timesteps_gives_20_descending_timesteps(sampler, config):
    scheduler = make_scheduler(sampler, config)
    scheduler.set_timesteps(STEPS)
    timesteps = scheduler.timesteps.double()
    assert timesteps.shape == (STEPS,)
    assert (timesteps[1:] < timesteps[:-1]).all()
    assert timesteps[-1] >= 0 and timesteps[0] <= 999


@pytest.mark.parametrize("sampler", KARRAS)
def test_karras_sigmas_follow_the_karras_schedule(sampler, config):
    """σ_i = (σ_max^(1/7) + i/(n-1)·(σ_min^(1/7) − σ_max^(1/7)))^7, i = 0..n-1, then 0."""
    sigmas = _model_sigmas()
    sigma_min, sigma_max = sigmas[0], sigmas[-1]
    assert sigma_max == pytest.approx(14.6146, abs=1e-3)
    assert sigma_min == pytest.approx(0.029168, abs=1e-5)
    ramp = np.linspace(0.0, 1.0, STEPS)
    root_max, root_min = sigma_max ** (1 / 7), sigma_min ** (1 / 7)
    expected = (root_max + ramp * (root_min - root_max)) ** 7

    scheduler = make_scheduler(sampler, config)
    scheduler.set_timesteps(STEPS)
    actual = scheduler.sigmas.double().numpy()
    assert actual.shape == (STEPS + 1,)
    np.testing.assert_allclose(actual[:-1], expected, rtol=5e-5)  # float32 betas
    assert actual[-1] == 0.0
    # each timestep is the training timestep whose σ is nearest in log σ
    nearest = [np.abs(np.log(sigmas) - np.log(s)).argmin() for s in expected]
    assert np.abs(scheduler.timesteps.numpy() - nearest).max() <= 1
    assert scheduler.timesteps[0] == 999 and scheduler.timesteps[-1] == 0


@pytest.mark.parametrize("sampler", [Sampler.EULER, Sampler.EULER_A])
def test_euler_steps_evenly_from_999_to_0_and_ends_at_sigma_zero(sampler, config):
    """k-diffusion's default schedule; SDXL's config asks for "leading", which is overridden."""
    scheduler = make_scheduler(sampler, config)
    scheduler.set_timesteps(STEPS)
    np.testing.assert_allclose(scheduler.timesteps.numpy(), np.linspace(999, 0, STEPS), atol=1e-3)
    assert scheduler.sigmas[0] == pytest.approx(14.6146, abs=1e-3)
    assert scheduler.sigmas[-1] == 0.0
    # k-diffusion starts from noise · σ_max (diffusers' "leading" would use sqrt(σ_max² + 1))
    assert scheduler.init_noise_sigma == pytest.approx(14.6146, abs=1e-3)


def test_unipc_steps_time_uniformly_and_stops_at_sigma_min(config):
    scheduler = make_scheduler(Sampler.UNIPC, config)
    scheduler.set_timesteps(STEPS)
    expected = np.linspace(0, 999, STEPS + 1).round()[::-1][:-1]
    np.testing.assert_array_equal(scheduler.timesteps.numpy(), expected)
    assert scheduler.sigmas[-1] == pytest.approx(_model_sigmas()[0], rel=1e-4)
    assert scheduler.config.solver_order == 3


def test_ddim_uses_a1111_timesteps(config):
    """A1111: range(0, 1000, 1000 // n) + 1, i.e. 951, 901, ..., 1."""
    scheduler = make_scheduler(Sampler.DDIM, config)
    scheduler.set_timesteps(STEPS)
    np.testing.assert_array_equal(scheduler.timesteps.numpy(), np.arange(951, 0, -50))
    assert scheduler.final_alpha_cumprod == scheduler.alphas_cumprod[0]
    assert scheduler.init_noise_sigma == 1.0


# a functional check: exact ε for a Gaussian target


@pytest.mark.parametrize(
    "sampler", [s for s in Sampler if s not in (Sampler.LCM, Sampler.LCM_SGM_UNIFORM)]
)
def test_twenty_steps_with_the_exact_eps_reach_the_gaussian_target(sampler, config):
    """Data N(1, 0.5²): the result's mean and std land on the target.

    The LCM samplers are left out: they return the model's x0 estimate at their last
    timestep (59 at 20 steps), which for an exact-ε model of a narrow Gaussian is the
    posterior mean, its spread shrunk (0.32); a distilled model is trained to make that
    estimate a sample (`test_few_step.py` checks their schedules).

    The starting noise is pure (as in SD, σ_max is finite), which biases deterministic
    samplers' mean by about −mean·std·a(σ_max) ≈ −0.035, and 20 first-order steps shrink the
    spread by up to ~20 %; a wrong parametrisation or scaling misses by far more.
    """
    generator = torch.Generator().manual_seed(1) if sampler in SAMPLERS_WITH_NOISE else None
    result = _denoise(sampler, config, mean=1.0, std=0.5, generator=generator)
    assert torch.isfinite(result).all()
    assert result.mean().item() == pytest.approx(1.0, abs=0.06)
    assert 0.75 * 0.5 < result.std().item() < 1.1 * 0.5


@pytest.mark.parametrize("sampler", list(Sampler))
def test_every_step_count_ends_finite(sampler):
    """Few and odd step counts too (diffusers' UniPC bh1 would end in NaN at σ = 0).

    One step is left out: Euler's and DDIM's single timestep is 0 (or 1), a no-op.
    """
    config = _base_config("sd15")
    for steps in (2, 3, 7, 14, 50):
        generator = torch.Generator().manual_seed(1) if sampler in SAMPLERS_WITH_NOISE else None
        result = _denoise(sampler, config, steps=steps, generator=generator)
        assert torch.isfinite(result).all(), steps
        assert result.mean().item() == pytest.approx(1.0, abs=0.25), steps


def test_dpmpp_2m_is_second_order_accurate(config):
    """DPM++ 2M already has the target's spread at 20 steps, unlike first-order Euler."""
    dpm = _denoise(Sampler.DPMPP_2M_KARRAS, config)
    euler = _denoise(Sampler.EULER, config)
    assert dpm.std().item() == pytest.approx(0.5, rel=0.03)
    assert euler.std().item() < 0.95 * 0.5


# noise


@pytest.mark.parametrize("sampler", sorted(SAMPLERS_WITH_NOISE))
def test_noise_samplers_repeat_with_the_same_generator_and_differ_with_another(sampler):
    config = _base_config("sd15")
    first = _denoise(sampler, config, generator=torch.Generator().manual_seed(7))
    again = _denoise(sampler, config, generator=torch.Generator().manual_seed(7))
    other = _denoise(sampler, config, generator=torch.Generator().manual_seed(8))
    assert torch.equal(first, again)
    assert (first - other).abs().mean().item() > 0.05


@pytest.mark.parametrize("sampler", sorted(SAMPLERS_WITH_NOISE))
def test_noise_samplers_take_one_generator_per_row(sampler):
    """A row of a batch equals the single run with that row's seed and starting noise."""
    config = _base_config("sd15")
    generators = [torch.Generator().manual_seed(seed) for seed in (7, 8)]
    batch = _denoise(sampler, config, generator=generators, batch=2)
    single = _denoise(sampler, config, noise_seed=1, generator=torch.Generator().manual_seed(8))
    torch.testing.assert_close(batch[1:], single)


@pytest.mark.parametrize("sampler", sorted(set(Sampler) - SAMPLERS_WITH_NOISE))
def test_other_samplers_draw_no_noise(sampler):
    config = _base_config("sd15")
    with torch.random.fork_rng():
        torch.manual_seed(1)
        first = _denoise(sampler, config)
        torch.manual_seed(2)
        again = _denoise(sampler, config)
    assert torch.equal(first, again)


@pytest.mark.parametrize("sampler", sorted(SAMPLERS_WITH_NOISE))
def test_noise_samplers_without_a_generator_follow_the_global_seed(sampler):
    config = _base_config("sd15")
    with torch.random.fork_rng():
        torch.manual_seed(1)
        first = _denoise(sampler, config)
        torch.manual_seed(2)
        other = _denoise(sampler, config)
    assert (first - other).abs().mean().item() > 0.05
