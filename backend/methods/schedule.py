"""Which timesteps a run calls the UNet at, and the sample it starts from: A1111's rules.

Forge (the original extension's host, at the commit its sanity checks name) samples in two
ways, and img2img differs between them (`modules/sd_samplers_common.setup_img2img_steps`
and the two `sample_img2img`s):

- k-diffusion samplers (DPM++ 2M Karras, DPM++ 2M SDE Karras, Euler a, Euler): with
  `t_enc = int(min(strength, 0.999) · steps)`, the run takes the txt2img schedule of
  `steps` from index `steps − t_enc − 1`: `t_enc + 1` UNet calls, the source noised to
  that σ. Strength 0.7 at 20 steps is 15 calls from σ ≈ 4.50 on the Karras schedule.
- timestep samplers (DDIM, UniPC): the timesteps are 1, 1 + 1000 // n, … ascending. The
  source is noised to the timestep at index `t_enc` (VP: √ᾱ·x + √(1 − ᾱ)·ε), while the
  sampler runs over the `t_enc` timesteps below it. DDIM's loop calls the UNet at all of
  them but the lowest (1), so it makes `t_enc − 1` calls and leaves the sample at ᾱ₁ — in
  txt2img too, where 20 steps make 19 calls; UniPC runs `t_enc` steps time-uniformly
  from the highest of them (in model time, 651 for 0.7 at 20 steps, whose noise is 701's:
  A1111 notes it is "likely off by a bit") down to 0, and in txt2img as many steps as
  the list is long (a step count that does not divide 1000 gets one more).

At strength 0 a k-diffusion run is one step from the last σ; a timestep one makes no call
and returns the source noised to timestep 1 (A1111's UniPC fails there).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from diffusers import SchedulerMixin

from protocol import Sampler

from .samplers import make_scheduler

TIMESTEP_SAMPLERS: frozenset[Sampler] = frozenset({Sampler.DDIM, Sampler.UNIPC})
"""Samplers A1111 runs on discrete timesteps (`sd_samplers_timesteps`), not on k-diffusion σ."""

Start = Callable[[torch.Tensor | None, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class Schedule:
    """One run's sampler, the timesteps of its UNet calls, and how its first sample is made.

    Attributes:
        scheduler: the diffusers scheduler, its timesteps set; `step()` it at `timesteps`.
        timesteps: the timesteps of the UNet calls, in order (may be empty).
        start: (source latents or None, noise) → the first sample: noise at the first σ
            for txt2img, the source noised as A1111 noises it for img2img.
    """

    scheduler: SchedulerMixin
    timesteps: torch.Tensor
    start: Start


def img2img_encode_steps(steps: int, strength: float) -> int:
    """A1111's `t_enc`: how far into the schedule an img2img run starts, counted from its end."""
    return int(min(strength, 0.999) * steps)


def plan_schedule(
    sampler: Sampler,
    scheduler_config: Mapping[str, Any],
    steps: int,
    *,
    img2img: bool,
    strength: float = 1.0,
    device: torch.device | str | None = None,
) -> Schedule:
    """The schedule of a txt2img or img2img run, as Forge would run it.

    Args:
        sampler: the sampler.
        scheduler_config: the base model's scheduler config.
        steps: the request's steps.
        img2img: whether the run starts from source latents.
        strength: img2img's denoising strength in [0, 1].
        device: where the timesteps live.
    """
    scheduler = make_scheduler(sampler, scheduler_config)
    if sampler is Sampler.LCM_SGM_UNIFORM:
        scheduler.set_timesteps(steps, device=device, original_inference_steps=steps)
    else:
        scheduler.set_timesteps(steps, device=device)
    if sampler not in TIMESTEP_SAMPLERS:
        return _k_diffusion(scheduler, steps, img2img, strength)
    encode = img2img_encode_steps(steps, strength) if img2img else steps
    if sampler is Sampler.DDIM:
        return _ddim(scheduler, steps, img2img, encode)
    return _unipc(scheduler, scheduler_config, steps, img2img, encode, device)


def _k_diffusion(scheduler: SchedulerMixin, steps: int, img2img: bool, strength: float) -> Schedule:
    timesteps = scheduler.timesteps
    if not img2img:
        return Schedule(scheduler, timesteps, _from_noise(scheduler))
    begin = steps - img2img_encode_steps(steps, strength) - 1
    timesteps = timesteps[begin * scheduler.order :]
    scheduler.set_begin_index(begin * scheduler.order)
    first = timesteps[:1]

    def start(latents: torch.Tensor | None, noise: torch.Tensor) -> torch.Tensor:
        assert latents is not None
        return scheduler.add_noise(latents, noise, first)

    return Schedule(scheduler, timesteps, start)


def _from_noise(scheduler: SchedulerMixin) -> Start:
    """txt2img: the noise, scaled to the scheduler's first σ."""

    def start(latents: torch.Tensor | None, noise: torch.Tensor) -> torch.Tensor:
        return noise * scheduler.init_noise_sigma

    return start


def _vp_noise(alpha_cumprod: torch.Tensor) -> Start:
    """x·√ᾱ + ε·√(1 − ᾱ), A1111's noising of an img2img source for the timestep samplers."""

    def start(latents: torch.Tensor | None, noise: torch.Tensor) -> torch.Tensor:
        assert latents is not None
        alpha = alpha_cumprod.to(device=noise.device, dtype=torch.float32)
        noised = latents.float() * alpha.sqrt() + noise.float() * (1 - alpha).sqrt()
        return noised.to(noise.dtype)

    return start


def a1111_timesteps(steps: int) -> list[int]:
    """A1111's timesteps for its timestep samplers, ascending: `range(0, 1000, 1000 // n) + 1`,
    at most 999 (20 steps: 1, 51, …, 951; steps that do not divide 1000 get one more)."""
    return [min(999, t + 1) for t in range(0, 1000, 1000 // steps)]


def _ddim(scheduler: SchedulerMixin, steps: int, img2img: bool, encode: int) -> Schedule:
    # The DDIM step goes from t to t - 1000 // steps: A1111's spacing, whatever the list.
    ascending = a1111_timesteps(steps)
    if not img2img:
        # A1111's loop calls the UNet at every timestep but the lowest.
        calls = ascending[:0:-1]
        start = _from_noise(scheduler)
    else:
        calls = ascending[encode - 1 : 0 : -1] if encode > 1 else []
        start = _vp_noise(scheduler.alphas_cumprod[ascending[encode]])
    timesteps = torch.tensor(calls, dtype=torch.long, device=scheduler.timesteps.device)
    return Schedule(scheduler, timesteps, start)


def _unipc(
    scheduler: SchedulerMixin,
    scheduler_config: Mapping[str, Any],
    steps: int,
    img2img: bool,
    encode: int,
    device: torch.device | str | None,
) -> Schedule:
    ascending = a1111_timesteps(steps)
    if not img2img:
        # A1111 runs as many UniPC steps as its timestep list is long, from 999 to 0.
        scheduler.set_timesteps(len(ascending), device=device)
        return Schedule(scheduler, scheduler.timesteps, _from_noise(scheduler))
    start = _vp_noise(scheduler.alphas_cumprod[ascending[encode]])
    if encode == 0:
        return Schedule(scheduler, scheduler.timesteps[:0], start)
    # UniPC from model time T = ascending[encode - 1] down to 0 in `encode` time-uniform
    # steps: diffusers' "linspace" spacing over a training schedule cut at T gives exactly
    # those timesteps, on the same ᾱ.
    top = ascending[encode - 1]
    truncated = make_scheduler(
        Sampler.UNIPC,
        {
            **scheduler_config,
            "num_train_timesteps": top + 1,
            "trained_betas": scheduler.betas[: top + 1].tolist(),
            "rescale_betas_zero_snr": False,  # the cut betas are rescaled already
        },
    )
    truncated.set_timesteps(encode, device=device)
    return Schedule(truncated, truncated.timesteps, start)
