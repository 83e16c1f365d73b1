"""The denoising loop every method shares, and the noise it starts from.

Classifier-free guidance runs as one UNet call on [uncond rows | cond rows]. With
frames, each half is frame-interleaved, so the halves line up with the frame
layout as long as rows are a multiple of the frame count.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import torch

from protocol import NoiseSource, Sampler

from ..layerdiffuse import TileGrid, tiled_map
from .samplers import SAMPLERS_WITH_NOISE
from .schedule import plan_schedule

if TYPE_CHECKING:
    from ..model_set import ModelSet
    from .masking import KeptLatents
    from .request import GenerationRequest


class StepCallback(Protocol):
    """Called after every sampler step; raising `Cancelled` stops the run."""

    def __call__(self, step: int, total: int, latents: torch.Tensor) -> None: ...


def no_progress(step: int, total: int, latents: torch.Tensor) -> None:
    """A `StepCallback` that does nothing."""


@dataclass(frozen=True)
class UNetTiles:
    """The UNet's prediction computed on overlapping tiles of the sample and blended
    (`layerdiffuse.tiled_map`), every step, for generations too large to run whole.

    Attributes:
        grid: the tiles, on the latent grid.
        conditions: spatial inputs of the layer model, cropped like the sample: (tensor,
            pixels per latent pixel), e.g. SDXL's condition latents (1) or SD1.5's control
            image (8).
        prepare: called with each tile's crops of `conditions` before its UNet call
            (sets the layer model's condition or control for that tile).
    """

    grid: TileGrid
    conditions: tuple[tuple[torch.Tensor, int], ...] = ()
    prepare: Callable[..., None] | None = None


def noise_device(source: NoiseSource, device: torch.device) -> torch.device:
    """Where noise of `source` is drawn for a run on `device`: the CPU, or with GPU noise
    the run's own accelerator (A1111's `create_generator`: not MPS, where it uses the CPU)."""
    if source is NoiseSource.GPU and device.type not in ("cpu", "mps"):
        return device
    return torch.device("cpu")


def seeded_noise(
    seeds: Sequence[int],
    shape: tuple[int, ...],
    device: torch.device,
    dtype: torch.dtype,
    source: NoiseSource = NoiseSource.CPU,
) -> tuple[torch.Tensor, list[torch.Generator]]:
    """Initial noise, one row per seed, and the per-row generators the noise samplers
    continue with, as A1111's `ImageRNG` draws them: a generator per seed, float32.

    CPU noise (the default) gives a seed the same image on every device. GPU noise is
    drawn on the run's accelerator, as A1111 and Forge draw it by default, so their
    seeds reproduce on an NVIDIA card; on a CPU-only run it is CPU noise.

    Returns:
        (len(seeds), *shape) noise on `device` in `dtype`, and the generators.
    """
    where = noise_device(source, device)
    generators = [torch.Generator(where).manual_seed(seed) for seed in seeds]
    rows = [torch.randn(shape, generator=generator, device=where) for generator in generators]
    return torch.stack(rows).to(device=device, dtype=dtype), generators


def stop_timestep(ending_step: float) -> float | None:
    """The timestep below which the layer model is switched off ("Stop At").

    The original switches at σ(t = (1 − p)·999); σ falls with t, so comparing
    timesteps is the same test. 1.0 never stops (None); 0 never starts.
    """
    if ending_step >= 1.0:
        return None
    if ending_step <= 0.0:
        return math.inf
    return (1.0 - ending_step) * 999.0


@torch.no_grad()
def denoise(
    *,
    unet: torch.nn.Module,
    sampler: Sampler,
    scheduler_config: dict[str, Any],
    latents: torch.Tensor | None,
    noise: torch.Tensor,
    generators: list[torch.Generator],
    context: torch.Tensor,
    uncond_context: torch.Tensor,
    cfg_scale: float,
    steps: int,
    strength: float = 1.0,
    on_step: StepCallback = no_progress,
    use_layer_model: Callable[[bool], None] | None = None,
    ending_step: float = 1.0,
    added_conditions: tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]] | None = None,
    layer_context: torch.Tensor | None = None,
    keep: KeptLatents | None = None,
    tiles: UNetTiles | None = None,
) -> torch.Tensor:
    """Run the sampler.

    Args:
        unet: the (possibly patched) UNet.
        sampler: which sampler; built from `scheduler_config`.
        latents: (B, 4, h, w) scaled source latents for img2img, or None for txt2img.
        noise: (B, 4, h, w) from `seeded_noise`.
        generators: one per row, for samplers that draw noise at each step.
        context / uncond_context: (B, tokens, hidden) positive and negative rows.
        cfg_scale: guidance scale; 1 skips the negative pass.
        steps: sampler steps for the full schedule.
        strength: img2img denoising strength: how far into the schedule the run starts,
            as A1111 counts it (`schedule.plan_schedule`: 0.7 of 20 DPM++ steps is 15 calls).
        on_step: progress callback.
        use_layer_model: switches the layer model on/off (for Stop At); None if unused.
        ending_step: fraction of the schedule with the layer model.
        added_conditions: SDXL's `added_cond_kwargs` rows (text_embeds, time_ids) for the
            negative and the positive rows, or None for SD1.5.
        layer_context: (B, tokens, hidden) positive rows while the layer model is on (the
            per-layer prompts); after Stop At the positive rows are `context`. The
            negative rows are `uncond_context` throughout.
        keep: latents kept outside a selection (`masking`): before every UNet call the
            sample there is `keep.latents` noised with `noise` to that call's timestep
            (the scheduler's own `add_noise`), and after the last step `keep.latents`.
        tiles: compute each UNet prediction on these tiles (the scheduler steps the
            whole sample), or None for one call.

    Returns:
        (B, 4, h, w) denoised latents, scaled (divide by the VAE's scaling factor to decode).
    """
    schedule = plan_schedule(
        sampler,
        scheduler_config,
        steps,
        img2img=latents is not None,
        strength=strength,
        device=noise.device,
    )
    scheduler, timesteps = schedule.scheduler, schedule.timesteps
    sample = schedule.start(latents, noise)

    stop_at = stop_timestep(ending_step)
    step_kwargs: dict[str, Any] = {}
    if sampler in SAMPLERS_WITH_NOISE:
        step_kwargs["generator"] = generators
    guided = cfg_scale != 1.0
    full_context = torch.cat([uncond_context, context]) if guided else context
    full_layer_context = full_context
    if layer_context is not None:
        full_layer_context = torch.cat([uncond_context, layer_context]) if guided else layer_context
    unet_kwargs: dict[str, Any] = {}
    if added_conditions is not None:
        negative_rows, positive_rows = added_conditions
        unet_kwargs["added_cond_kwargs"] = {
            key: torch.cat([negative_rows[key], value]) if guided else value
            for key, value in positive_rows.items()
        }

    total = len(timesteps)
    for index, timestep in enumerate(timesteps):
        if keep is not None:
            sample = keep.blend(sample, scheduler.add_noise(keep.latents, noise, timestep[None]))
        layer_model_on = stop_at is None or float(timestep) >= stop_at
        if use_layer_model is not None:
            use_layer_model(layer_model_on)
        model_input = torch.cat([sample, sample]) if guided else sample
        model_input = scheduler.scale_model_input(model_input, timestep)
        step_context = full_layer_context if layer_model_on else full_context
        prediction = _predict(unet, model_input, timestep, step_context, unet_kwargs, tiles)
        if guided:
            negative, positive = prediction.chunk(2)
            prediction = negative + cfg_scale * (positive - negative)
        sample = scheduler.step(prediction, timestep, sample, **step_kwargs).prev_sample
        on_step(index + 1, total, sample)
    if keep is not None:
        sample = keep.blend(sample, keep.latents)
    return sample


def _predict(
    unet: torch.nn.Module,
    model_input: torch.Tensor,
    timestep: torch.Tensor,
    context: torch.Tensor,
    unet_kwargs: dict[str, Any],
    tiles: UNetTiles | None,
) -> torch.Tensor:
    """The UNet's prediction for the whole sample: in one call, or tile by tile."""

    def predict(crop: torch.Tensor, *conditions: torch.Tensor) -> torch.Tensor:
        if tiles is not None and tiles.prepare is not None:
            tiles.prepare(*conditions)
        return unet(crop, timestep, encoder_hidden_states=context, **unet_kwargs).sample

    if tiles is None:
        return predict(model_input)
    inputs = [(model_input, 1), *tiles.conditions]
    return tiled_map(predict, inputs, output_scale=1, grid=tiles.grid)


@dataclass(frozen=True)
class Conditioning:
    """What the UNet is conditioned on for every pass of a job (rows of one pass).

    Attributes:
        context / uncond_context: the positive and negative rows.
        added_conditions: SDXL's added conditions (negative rows, positive rows).
        layer_context: positive rows while the layer model is on, if they differ from
            `context` (SD1.5's per-layer prompts).
    """

    context: torch.Tensor
    uncond_context: torch.Tensor
    added_conditions: tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]] | None = None
    layer_context: torch.Tensor | None = None


def sample_passes(
    request: GenerationRequest,
    models: ModelSet,
    on_step: StepCallback,
    *,
    rows: int,
    size: tuple[int, int],
    conditioning: Conditioning,
    use_layer_model: Callable[[bool], None],
    source: torch.Tensor | None = None,
    keep: KeptLatents | None = None,
    tiles: UNetTiles | None = None,
) -> Iterator[tuple[list[int], torch.Tensor]]:
    """Run the request's `batch_count` passes of `rows` rows; yield each pass's seeds and latents.

    Row r of pass b uses seed `request.seed + b·rows + r`, consecutive across the job as
    A1111 numbers a batch, so any row can be reproduced alone. Progress counts steps
    across all passes.

    Args:
        rows: latent rows per pass (results × frames).
        size: (width, height) of the generation.
        conditioning: contexts (and SDXL's added conditions) for `rows` rows.
        use_layer_model: switches the layer model on and off (Stop At).
        source: (1, 4, h, w) scaled img2img latents for every row, or one per row of
            a result's frames, (frames, 4, h, w), repeated for each result; or None.
        keep: latents kept outside a selection, one row per frame of a result, or None.
        tiles: the UNet's tiles for a generation too large to predict whole, or None.
    """
    width, height = size
    if source is not None:
        source = _per_row(source, rows)
    if keep is not None:
        keep = keep.repeated(rows // keep.latents.shape[0])
    for index in range(request.batch_count):
        first = request.seed + index * rows
        seeds = list(range(first, first + rows))
        noise, generators = seeded_noise(
            seeds,
            (4, height // 8, width // 8),
            models.device,
            models.dtype,
            request.noise_source,
        )

        def report(step: int, total: int, latents: torch.Tensor, index: int = index) -> None:
            on_step(index * total + step, request.batch_count * total, latents)

        latents = denoise(
            unet=models.base.unet,
            sampler=request.sampler,
            scheduler_config=models.base.scheduler_config,
            latents=source,
            noise=noise,
            generators=generators,
            context=conditioning.context,
            uncond_context=conditioning.uncond_context,
            cfg_scale=request.cfg_scale,
            steps=request.steps,
            strength=request.denoise_strength if source is not None else 1.0,
            on_step=report,
            use_layer_model=use_layer_model,
            ending_step=request.ending_step,
            added_conditions=conditioning.added_conditions,
            layer_context=conditioning.layer_context,
            keep=keep,
            tiles=tiles,
        )
        yield seeds, latents


def _per_row(latents: torch.Tensor, rows: int) -> torch.Tensor:
    """(1 or n, 4, h, w) → (rows, 4, h, w): one row for all, or n repeated rows // n times."""
    if latents.shape[0] == 1:
        return latents.expand(rows, -1, -1, -1)
    return latents.repeat(rows // latents.shape[0], 1, 1, 1)
