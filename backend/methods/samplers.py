"""The A1111/Forge samplers as diffusers schedulers.

Each `Sampler` maps to the diffusers scheduler that integrates the same way, with
the options that bring its step schedule closest to what A1111 and Forge (the
original extension's host, whose samplers are k-diffusion's) do. Results are close,
not bit-identical: the SDE sampler draws Gaussian noise per step where k-diffusion
uses a Brownian tree, and the interpolation of σ between training timesteps
differs slightly (see the notes in `_SAMPLER_OPTIONS`).
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any

from diffusers import (
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    LCMScheduler,
    SchedulerMixin,
    UniPCMultistepScheduler,
)

from protocol.methods import Sampler

SAMPLERS_WITH_NOISE: frozenset[Sampler] = frozenset(
    {Sampler.EULER_A, Sampler.DPMPP_2M_SDE_KARRAS, Sampler.LCM, Sampler.LCM_SGM_UNIFORM}
)
"""Samplers that draw fresh noise at every step; their `step()` takes a generator."""

# Options that override the base model's config. Everything the base config says about
# the noise schedule (betas, training steps, prediction_type, zero-SNR rescaling) is kept.
_SAMPLER_OPTIONS: dict[Sampler, tuple[type[SchedulerMixin], dict[str, Any]]] = {
    # k-diffusion's DPM++ 2M on Karras sigmas (rho 7) between the model's own σ_min and
    # σ_max, ending at σ = 0 with a first-order last step (diffusers does that whenever
    # final_sigmas_type is "zero", at any step count, like k-diffusion).
    Sampler.DPMPP_2M_KARRAS: (
        DPMSolverMultistepScheduler,
        {
            "algorithm_type": "dpmsolver++",
            "solver_order": 2,
            "solver_type": "midpoint",
            "use_karras_sigmas": True,
            "final_sigmas_type": "zero",
            "lower_order_final": True,
            "euler_at_final": False,
        },
    ),
    # The SDE variant with eta 1 and the midpoint correction, as k-diffusion's default.
    Sampler.DPMPP_2M_SDE_KARRAS: (
        DPMSolverMultistepScheduler,
        {
            "algorithm_type": "sde-dpmsolver++",
            "solver_order": 2,
            "solver_type": "midpoint",
            "use_karras_sigmas": True,
            "final_sigmas_type": "zero",
            "lower_order_final": True,
            "euler_at_final": False,
        },
    ),
    # Euler and Euler a use k-diffusion's default schedule: timesteps evenly spaced from
    # 999 to 0 ("linspace"; SDXL configs say "leading"), then σ = 0. k-diffusion
    # interpolates log σ between integer timesteps, diffusers σ itself.
    Sampler.EULER_A: (
        EulerAncestralDiscreteScheduler,
        {"timestep_spacing": "linspace", "steps_offset": 0},
    ),
    Sampler.EULER: (
        EulerDiscreteScheduler,
        {
            "timestep_spacing": "linspace",
            "steps_offset": 0,
            "interpolation_type": "linear",
            "use_karras_sigmas": False,
            "final_sigmas_type": "zero",
        },
    ),
    # A1111's UniPC defaults: variant bh1, order 3, time-uniform steps (linspace over
    # 999..0 with the end point dropped), lower-order final steps, and the last step
    # ending at σ_min rather than 0, as A1111's does. diffusers' bh1 cannot step to
    # σ = 0 (log σ = -inf makes the last sample NaN).
    Sampler.UNIPC: (
        UniPCMultistepScheduler,
        {
            "solver_type": "bh1",
            "solver_order": 3,
            "predict_x0": True,
            "lower_order_final": True,
            "timestep_spacing": "linspace",
            "steps_offset": 0,
            "use_karras_sigmas": False,
            "final_sigmas_type": "sigma_min",
        },
    ),
    # A1111's DDIM: timesteps 1, 1 + 1000 // n, ... ("leading" with offset 1), eta 0,
    # the last step to ᾱ_0 rather than 1, and no clipping of the predicted latent.
    Sampler.DDIM: (
        DDIMScheduler,
        {
            "timestep_spacing": "leading",
            "steps_offset": 1,
            "set_alpha_to_one": False,
            "clip_sample": False,
            "thresholding": False,
        },
    ),
    # The few-step samplers of the distilled LoRAs, as their authors run them in diffusers.
    # LCM-LoRA: `LCMScheduler.from_config(base config)` (50 original steps, "leading":
    # 4 steps are 999, 759, 499, 259), re-noising between steps with the row's generator.
    Sampler.LCM: (LCMScheduler, {}),
    # DMD2 samples as LCM does at the evenly spaced 999, 749, 499, 249 (its README passes
    # them to LCMScheduler): the distillation schedule of `steps` original steps, set by
    # `schedule.plan_schedule` (k·(1000 // steps) − 1, the same for steps dividing 1000).
    Sampler.LCM_SGM_UNIFORM: (LCMScheduler, {}),
    # SDXL-Lightning, Hyper-SD, DMD2: Euler with "trailing" spacing, steps evenly spaced
    # and ending at 999 (4 steps: 999, 749, 499, 249; A1111's "SGM Uniform"), then σ = 0.
    Sampler.EULER_SGM_UNIFORM: (
        EulerDiscreteScheduler,
        {
            "timestep_spacing": "trailing",
            "interpolation_type": "linear",
            "use_karras_sigmas": False,
            "final_sigmas_type": "zero",
        },
    ),
}


def make_scheduler(sampler: Sampler, scheduler_config: Mapping[str, Any]) -> SchedulerMixin:
    """Build the diffusers scheduler equivalent to an A1111 sampler.

    The base model's scheduler config supplies the noise schedule and
    `prediction_type`; the sampler supplies how it integrates. Config keys the chosen
    scheduler class does not accept (those of another class, such as PNDM's
    `skip_prk_steps`, and the `_class_name`-style metadata) are dropped before it
    is built, so nothing is logged or warned about them.

    Args:
        sampler: the sampler to build.
        scheduler_config: a base model's scheduler config, e.g. the contents of its
            `scheduler/scheduler_config.json` or `pipeline.scheduler.config`.

    Returns:
        A fresh scheduler; call `set_timesteps` before use. Its `init_noise_sigma`
        scales the initial noise.

    Raises:
        ValueError: the sampler is not one of `Sampler`.
    """
    if sampler not in _SAMPLER_OPTIONS:
        raise ValueError(f"unknown sampler {sampler!r}")
    scheduler_class, options = _SAMPLER_OPTIONS[sampler]
    accepted = _init_parameters(scheduler_class)
    kwargs = {key: value for key, value in scheduler_config.items() if key in accepted}
    kwargs.update(options)
    return scheduler_class(**kwargs)


def _init_parameters(scheduler_class: type[SchedulerMixin]) -> frozenset[str]:
    parameters = inspect.signature(scheduler_class.__init__).parameters
    return frozenset(
        name
        for name, parameter in parameters.items()
        if name != "self"
        and parameter.kind in (parameter.POSITIONAL_OR_KEYWORD, parameter.KEYWORD_ONLY)
    )
