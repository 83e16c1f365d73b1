"""`flux_transparent` as every method runs: through the registry, the CLI and the server."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from backend.cli import EXIT_USAGE, main
from backend.errors import InvalidRequest
from backend.methods.previews import latent_preview
from backend.methods.registry import run_method
from backend.methods.request import GenerationRequest
from backend.model_set import FluxModelSet
from backend.store.model_sets import open_model_set
from protocol import LayerRole, Method, ModelFamily

FG, MASK = LayerRole.FOREGROUND, LayerRole.MASK


@pytest.fixture(scope="module")
def flux_set(demo_cache_dir: Path) -> FluxModelSet:
    torch.set_num_threads(1)
    models = open_model_set(
        demo=True, demo_family=ModelFamily.FLUX, cache_dir=demo_cache_dir, device="cpu"
    )
    assert isinstance(models, FluxModelSet)
    return models


def request(**changes: object) -> GenerationRequest:
    fields: dict[str, object] = {
        "method": Method.FLUX_TRANSPARENT,
        "prompt": "a glass",
        "width": 100,
        "height": 70,
        "steps": 2,
        "cfg_scale": 3.5,
        "seed": 4,
    }
    return GenerationRequest(**(fields | changes))  # type: ignore[arg-type]


def test_results_come_back_at_the_requested_size_one_seed_each(flux_set) -> None:
    """100x70 runs at 128x64 (multiples of 64) and comes back at 100x70; 2 x 2 results
    with consecutive seeds, the same seed the same layer."""
    steps: list[tuple[int, int]] = []
    result = run_method(
        request(batch_size=2, batch_count=2), flux_set, lambda s, t, _: steps.append((s, t))
    )
    assert result.generation_size == (128, 64)
    assert result.seeds == [4, 5, 6, 7]
    assert steps == [(1, 4), (2, 4), (3, 4), (4, 4)]
    for layers in result.images:
        assert set(layers) == {FG}
        assert layers[FG].shape == (70, 100, 4) and layers[FG].dtype == np.uint8
    # seed 6 alone is seed 6 of the batch, up to the float rounding of batched matmuls
    # (which the decoder's 8-view median can turn into a few levels at a few pixels)
    alone = run_method(request(seed=6), flux_set).images[0][FG].astype(int)
    assert np.abs(alone - result.images[2][FG]).mean() < 0.5
    assert np.abs(alone - result.images[3][FG]).mean() > 5
    assert not np.array_equal(result.images[0][FG], result.images[1][FG])


def test_a_foreground_is_reworked_and_a_selection_shapes_the_alpha(flux_set) -> None:
    source = np.zeros((70, 100, 4), np.uint8)
    source[10:60, 20:80] = (200, 40, 40, 255)
    mask = np.zeros((70, 100, 4), np.uint8)
    mask[:, 50:, 3] = 255
    plain = run_method(request(), flux_set).images[0][FG]
    reworked = run_method(request(inputs={FG: source}, denoise_strength=0.5), flux_set)
    assert reworked.images[0][FG].shape == (70, 100, 4)
    assert not np.array_equal(reworked.images[0][FG], plain)
    masked = run_method(request(inputs={MASK: mask}), flux_set).images[0][FG]
    assert (masked[:, :50, 3] == 0).all()
    assert np.array_equal(masked[:, 50:], plain[:, 50:])


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        (
            {"inputs": {FG: np.zeros((8, 8, 4), np.uint8)}, "denoise_strength": 0.0},
            "denoise_strength: flux_transparent reworks a foreground with a strength above 0",
        ),
        ({"lora": "hyper_sd15_8steps"}, "lora: 'hyper_sd15_8steps' is not a LoRA this"),
        ({"method": Method.SD15_TRANSPARENT}, "method: sd15_transparent needs a sd15 base"),
    ],
)
def test_what_flux_cannot_do_is_refused_naming_the_field(flux_set, changes, message) -> None:
    with pytest.raises(InvalidRequest, match="^" + message):
        run_method(request(**changes), flux_set)


def test_the_sd_set_refuses_the_flux_method(demo_models) -> None:
    with pytest.raises(InvalidRequest, match=r"^method: flux_transparent needs a flux base"):
        run_method(request(), demo_models)


def test_a_flux_preview_is_an_image_of_the_latents() -> None:
    latents = torch.randn(1, 16, 8, 12, generator=torch.Generator().manual_seed(0))
    width, height, data = latent_preview(latents, ModelFamily.FLUX, 48)
    assert (width, height, len(data)) == (48, 32, 48 * 32 * 4)
    pixels = np.frombuffer(data, np.uint8).reshape(32, 48, 4)
    assert (pixels[..., 3] == 255).all() and pixels[..., :3].std() > 1


@pytest.mark.usefixtures("demo_xdg_cache")
def test_the_cli_makes_a_flux_png_with_forges_fields(tmp_path: Path) -> None:
    argv = ["generate", "--demo", "flux", "--method", "flux_transparent", "-p", "a glass"]
    options = ["-W", "64", "-H", "64", "--steps", "2", "-o", str(tmp_path)]
    assert main([*argv, *options]) == 0
    with Image.open(tmp_path / "flux_transparent-12345-foreground.png") as image:
        assert image.mode == "RGBA"
        text = image.info["parameters"]
    assert "Sampler: Euler, Schedule type: Simple, CFG scale: 1, Distilled CFG Scale: 3.5" in text
    assert "layerdiffusion_method: (FLUX.1) Only Generate Transparent Image" in text


@pytest.mark.usefixtures("demo_xdg_cache")
def test_the_cli_refuses_a_flux_method_on_an_sd_demo(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["generate", "--demo", "sd15", "--method", "flux_transparent", "-p", "x"]
    assert main(argv) == EXIT_USAGE
    assert "flux_transparent runs on flux models" in capsys.readouterr().err


def test_a_diffusers_folder_and_the_stores_files_open_as_the_real_model_would(
    tmp_path: Path, empty_caches: Path
) -> None:
    """The real path (`flux_sets.open_flux_set`): a FLUX diffusers folder, offline, and
    LayerDiffuse-Flux's two files through the store under their catalogue names, hash
    checked; the `.pth` converted once, then only the conversion read. The demo set's
    files stand in for the released ones (their own sha256 in the catalogue)."""
    from dataclasses import replace

    from backend.errors import ModelHashMismatch
    from backend.store.catalogue import FLUX_FILES
    from backend.store.download import ModelStore
    from backend.store.flux_demo import build_flux_demo_set
    from backend.store.flux_sets import is_flux_source, open_flux_set

    demo = build_flux_demo_set(tmp_path / "demo")
    hashes = {
        "flux_transparent_vae": demo.transparent_vae_sha256,
        "flux_layerlora": demo.lora_sha256,
    }
    catalogue = {name: replace(entry, sha256=hashes[name]) for name, entry in FLUX_FILES.items()}
    store = ModelStore(
        models_dir=demo.lora.parent, offline=True, catalogue=catalogue, state_dir=tmp_path
    )
    assert is_flux_source(demo.base_dir) and is_flux_source("black-forest-labs/FLUX.1-dev")
    assert not is_flux_source(tmp_path)
    cache = tmp_path / "cache"
    models = open_flux_set(
        demo.base_dir, store, device=torch.device("cpu"), dtype=torch.float32, offline=True,
        cache_dir=cache,
    )  # fmt: skip
    assert (cache / "flux_transparent_vae.safetensors").is_file()
    assert len(models.layer_lora.patched_names) > 0
    result = run_method(request(width=64, height=64), models)
    assert result.images[0][FG].shape == (64, 64, 4)
    # A file that does not match its catalogue hash is refused, naming it.
    wrong = {**catalogue, "flux_layerlora": replace(catalogue["flux_layerlora"], sha256="0" * 64)}
    damaged = ModelStore(
        models_dir=demo.lora.parent, offline=True, catalogue=wrong, state_dir=tmp_path
    )
    with pytest.raises(ModelHashMismatch, match="layerlora"):
        open_flux_set(
            demo.base_dir, damaged, device=torch.device("cpu"), dtype=torch.float32,
            offline=True, cache_dir=cache,
        )  # fmt: skip
