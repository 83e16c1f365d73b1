"""The shipped SD1.5 and SDXL-base configs, so that no config is ever fetched.

One folder per family in the diffusers pipeline layout (`sd15/unet/config.json`, ...,
`sdxl/scheduler/scheduler_config.json`). The values are those of the hub repositories
`runwayml/stable-diffusion-v1-5` and `stabilityai/stable-diffusion-xl-base-1.0`; the
tests build each model on the meta device from them and check the parameter counts.
`clip_bpe/` holds the CLIP BPE merges the tokenizer is built from.
"""

from __future__ import annotations

from pathlib import Path

from protocol.methods import ModelFamily

CONFIG_ROOT = Path(__file__).parent
"""The folder holding `sd15/` and `sdxl/`."""

COMPONENTS = {
    ModelFamily.SD15: ("unet", "vae", "text_encoder", "scheduler"),
    ModelFamily.SDXL: ("unet", "vae", "text_encoder", "text_encoder_2", "scheduler"),
}
"""The config folders each family has."""


def config_path(family: ModelFamily | str, component: str, *, root: Path | None = None) -> Path:
    """Return the path of one component's config file.

    Args:
        family: `sd15` or `sdxl`.
        component: `unet`, `vae`, `text_encoder`, `text_encoder_2` or `scheduler`.
        root: A folder laid out like `CONFIG_ROOT`, in place of the shipped one.

    Returns:
        `<root>/<family>/<component>/config.json`, or `scheduler_config.json` for the
        scheduler.

    Raises:
        ValueError: The family has no such component.
    """
    family = ModelFamily(family)
    if component not in COMPONENTS[family]:
        known = ", ".join(COMPONENTS[family])
        raise ValueError(f"{family.value} has no {component!r} config; known: {known}")
    filename = "scheduler_config.json" if component == "scheduler" else "config.json"
    return (root or CONFIG_ROOT) / family.value / component / filename
