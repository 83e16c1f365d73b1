"""A1111's step counts and starting noise, txt2img and img2img, for every sampler.

The expectations are computed here from A1111's own rules (`setup_img2img_steps`, the
k-diffusion and the timestep samplers' `sample_img2img`), not from the code under test:
the UNet calls are counted with a UNet that predicts no noise, and the starting σ is read
from the first sample it is given (source latents of zero, so that sample is the noise
times √(1 − ᾱ) = σ / √(σ² + 1)).
"""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
import pytest
import torch

from backend.methods.denoise import denoise, seeded_noise
from backend.methods.schedule import a1111_timesteps, plan_schedule
from backend.store.configs import config_path
from protocol import ModelFamily, Sampler

SHAPE = (4, 4, 4)
STRENGTHS = [0.0, 0.04, 0.1, 0.33, 0.5, 0.7, 0.95, 1.0]
K_DIFFUSION = [Sampler.DPMPP_2M_KARRAS, Sampler.DPMPP_2M_SDE_KARRAS, Sampler.EULER_A, Sampler.EULER]


class _NoNoiseUNet(torch.nn.Module):
    """Predicts ε = 0 and records the timestep and the sample of every call."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[float, torch.Tensor]] = []

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor, **_: Any) -> Any:
        self.calls.append((float(timestep), sample.clone()))
        return type("Output", (), {"sample": torch.zeros_like(sample)})()


@pytest.fixture(scope="module")
def config() -> dict[str, Any]:
    return json.loads(config_path(ModelFamily.SD15, "scheduler").read_text())


def _alphas_cumprod(config: dict[str, Any]) -> np.ndarray:
    betas = np.linspace(config["beta_start"] ** 0.5, config["beta_end"] ** 0.5, 1000) ** 2
    return np.cumprod(1.0 - betas)


def _karras(config: dict[str, Any], steps: int) -> np.ndarray:
    """k-diffusion's get_sigmas_karras (ρ 7) between the model's σ_min and σ_max."""
    alphas = _alphas_cumprod(config)
    sigmas = np.sqrt((1 - alphas) / alphas)
    ramp = np.linspace(0, 1, steps)
    low, high = sigmas[0] ** (1 / 7), sigmas[-1] ** (1 / 7)
    return (high + ramp * (low - high)) ** 7


def _discrete(config: dict[str, Any], steps: int) -> np.ndarray:
    """k-diffusion's default schedule: t = linspace(999, 0, n), σ interpolated in log σ."""
    alphas = _alphas_cumprod(config)
    log_sigmas = np.log(np.sqrt((1 - alphas) / alphas))
    return np.exp(np.interp(np.linspace(999, 0, steps), np.arange(1000), log_sigmas))


def _run(
    sampler: Sampler, config: dict[str, Any], steps: int, strength: float | None
) -> tuple[_NoNoiseUNet, torch.Tensor, torch.Tensor]:
    noise, generators = seeded_noise([3], SHAPE, torch.device("cpu"), torch.float32)
    unet = _NoNoiseUNet()
    context = torch.zeros(1, 77, 8)
    result = denoise(
        unet=unet,
        sampler=sampler,
        scheduler_config=config,
        latents=None if strength is None else torch.zeros(1, *SHAPE),
        noise=noise,
        generators=generators,
        context=context,
        uncond_context=context,
        cfg_scale=1.0,
        steps=steps,
        strength=1.0 if strength is None else strength,
    )
    return unet, noise, result


def _start_scale(unet: _NoNoiseUNet, noise: torch.Tensor, result: torch.Tensor) -> float:
    """√(1 − ᾱ) of the first sample: what multiplies the noise (from the result if no call)."""
    first = unet.calls[0][1] if unet.calls else result
    return float((first * noise).sum() / (noise * noise).sum())


@pytest.mark.parametrize("strength", STRENGTHS)
@pytest.mark.parametrize("sampler", K_DIFFUSION, ids=lambda sampler: sampler.value)
def test_k_diffusion_img2img_runs_t_enc_plus_1_steps_from_sigma_at_steps_minus_t_enc_minus_1(
    sampler: Sampler, strength: float, config: dict[str, Any]
) -> None:
    steps = 20
    t_enc = int(min(strength, 0.999) * steps)
    unet, noise, result = _run(sampler, config, steps, strength)
    assert len(unet.calls) == t_enc + 1
    schedule = _karras if sampler.value.startswith("dpmpp") else _discrete
    sigma = schedule(config, steps)[steps - t_enc - 1]
    expected = sigma / math.sqrt(sigma**2 + 1)
    assert _start_scale(unet, noise, result) == pytest.approx(expected, rel=2e-3)


def test_the_issues_case_strength_0_7_of_20_dpm_steps_is_15_calls_from_sigma_4_50(
    config: dict[str, Any],
) -> None:
    unet, noise, result = _run(Sampler.DPMPP_2M_KARRAS, config, 20, 0.7)
    assert len(unet.calls) == 15
    scale = _start_scale(unet, noise, result)
    assert scale / math.sqrt(1 - scale**2) == pytest.approx(4.50, abs=0.01)  # back to σ


@pytest.mark.parametrize("strength", STRENGTHS)
@pytest.mark.parametrize("sampler", [Sampler.DDIM, Sampler.UNIPC], ids=lambda s: s.value)
def test_timestep_samplers_noise_to_the_t_enc_th_timestep_and_run_below_it(
    sampler: Sampler, strength: float, config: dict[str, Any]
) -> None:
    steps = 20
    t_enc = int(min(strength, 0.999) * steps)
    ascending = [1 + 50 * index for index in range(20)]  # A1111's 1, 51, …, 951
    unet, noise, result = _run(sampler, config, steps, strength)
    alpha = _alphas_cumprod(config)[ascending[t_enc]]
    assert _start_scale(unet, noise, result) == pytest.approx(math.sqrt(1 - alpha), rel=1e-4)
    timesteps = [timestep for timestep, _ in unet.calls]
    if sampler is Sampler.DDIM:  # every timestep below t_enc but the lowest, from the top
        assert timesteps == ascending[t_enc - 1 : 0 : -1] if t_enc > 1 else timesteps == []
    else:  # t_enc UniPC steps from the highest of them to 0, time-uniform
        assert len(timesteps) == t_enc
        if t_enc:
            top = ascending[t_enc - 1]
            assert timesteps == list(np.linspace(0, top, t_enc + 1).round()[::-1][:-1])


def test_the_issues_case_for_the_timestep_samplers(config: dict[str, Any]) -> None:
    """0.7 of 20: noised at timestep 701; DDIM calls 651 … 51, UniPC runs 14 steps from 651."""
    ddim, _, _ = _run(Sampler.DDIM, config, 20, 0.7)
    unipc, _, _ = _run(Sampler.UNIPC, config, 20, 0.7)
    assert [t for t, _ in ddim.calls] == list(range(651, 50, -50))  # 13 calls, 651 … 51
    assert len(unipc.calls) == 14 and unipc.calls[0][0] == 651


@pytest.mark.parametrize(
    ("steps", "ddim_calls", "unipc_steps"), [(20, 19, 20), (10, 9, 10), (7, 7, 8), (3, 3, 4)]
)
def test_txt2img_timestep_samplers_follow_a1111s_timestep_list(
    steps: int, ddim_calls: int, unipc_steps: int, config: dict[str, Any]
) -> None:
    """range(0, 1000, 1000 // n) has n + 1 entries when n does not divide 1000."""
    assert len(a1111_timesteps(steps)) == unipc_steps
    ddim, _, _ = _run(Sampler.DDIM, config, steps, None)
    unipc, _, _ = _run(Sampler.UNIPC, config, steps, None)
    assert [t for t, _ in ddim.calls] == a1111_timesteps(steps)[:0:-1]
    assert (len(ddim.calls), len(unipc.calls)) == (ddim_calls, unipc_steps)


@pytest.mark.parametrize("sampler", K_DIFFUSION, ids=lambda sampler: sampler.value)
def test_k_diffusion_txt2img_runs_every_step(sampler: Sampler, config: dict[str, Any]) -> None:
    unet, _, _ = _run(sampler, config, 20, None)
    assert len(unet.calls) == 20


def test_a_plan_reports_the_calls_the_loop_makes(config: dict[str, Any]) -> None:
    for sampler in Sampler:
        for strength in (0.0, 0.5, 1.0):
            plan = plan_schedule(sampler, config, 12, img2img=True, strength=strength)
            unet, _, _ = _run(sampler, config, 12, strength)
            assert len(plan.timesteps) == len(unet.calls), (sampler, strength)
