"""`layerdiffuse generate --mask`, `--hires`, `--hires-strength`, `--tile-above`, `--tile-size`."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from backend.cli import main

SIZE = 64


def _png(path: Path, pixels: np.ndarray, mode: str) -> Path:
    Image.fromarray(pixels, mode).save(path)
    return path


def _selection() -> np.ndarray:
    mask = np.zeros((SIZE, SIZE), dtype=np.uint8)
    mask[:, 24:40] = np.linspace(0, 255, 18)[1:-1].astype(np.uint8)
    mask[:, 40:] = 255
    return mask


def _generate(output: Path, *options: str) -> int:
    return main(
        [
            "generate",
            "--demo",
            "-p",
            "a glass cup",
            "--steps",
            "1",
            "--seed",
            "3",
            "--output",
            str(output),
            *options,
        ]
    )


def _read(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        assert image.mode == "RGBA"
        return np.asarray(image)


@pytest.mark.usefixtures("demo_xdg_cache")
@pytest.mark.parametrize("kind", ["alpha", "luminance"])
def test_a_mask_png_shapes_the_layers(
    kind: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Its alpha, or for an image without alpha its luminance, is the selection."""
    torch.set_num_threads(1)
    selection = _selection()
    if kind == "alpha":
        rgba = np.zeros((SIZE, SIZE, 4), dtype=np.uint8)
        rgba[..., :3] = 255 - selection[..., None]  # the colour is not what counts
        rgba[..., 3] = selection
        mask = _png(tmp_path / "mask.png", rgba, "RGBA")
    else:
        mask = _png(tmp_path / "mask.png", selection, "L")
    rng = np.random.default_rng(2)
    scene = rng.integers(0, 256, (SIZE, SIZE, 4), dtype=np.uint8)
    scene[..., 3] = 255
    background = _png(tmp_path / "background.png", scene, "RGBA")
    output = tmp_path / "out"
    options = ["--method", "sd15_bg2fg", "--background", str(background), "--mask", str(mask)]
    assert _generate(output, "-W", str(SIZE), "-H", str(SIZE), *options) == 0
    capsys.readouterr()
    foreground = _read(output / "sd15_bg2fg-3-foreground.png")
    blended = _read(output / "sd15_bg2fg-3-blended.png")
    assert (foreground[..., 3][selection == 0] == 0).all()
    assert (foreground[..., 3].astype(int) <= selection).all()
    assert np.array_equal(blended[:, :24], scene[:, :24])


@pytest.mark.usefixtures("demo_xdg_cache")
def test_a_mask_of_another_size_is_refused_before_the_models_load(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    mask = _png(tmp_path / "mask.png", np.zeros((32, 32), dtype=np.uint8), "L")
    assert _generate(tmp_path / "out", "-W", "64", "-H", "48", "--mask", str(mask)) == 2
    assert capsys.readouterr().err.splitlines() == [
        "error: --mask: the mask is 32x32, the request 64x48 (a mask is sent at the request's size)"
    ]
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--hires", "always"], "error: --hires: 'always' is not one of auto, on, off"),
        (["--hires-strength", "2"], "error: --hires-strength: 2.0 outside 0.0..1.0"),
        (["--tile-size", "100"], "error: --tile-size: 100 is not a multiple of 64, 256..4096"),
        (["--tile-above", "-1"], "error: --tile-above: -1 is not at least 0"),
    ],
)
def test_bad_values_are_refused_naming_the_flag(
    options: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _generate(tmp_path / "out", *options) == 2
    assert capsys.readouterr().err.splitlines() == [message]


@pytest.mark.usefixtures("demo_xdg_cache")
def test_a_transparent_png_through_the_second_pass(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """576², above SD1.5's native area: 512² first, then 576² from it (the 2048² run of
    docs/benchmarks.md is the same command, its decodes in tiles)."""
    torch.set_num_threads(1)
    output = tmp_path / "out"
    options = ["-W", "576", "-H", "576", "--steps", "2", "--hires-strength", "0.5"]
    assert _generate(output, *options) == 0
    capsys.readouterr()
    layer = _read(output / "sd15_transparent-3-foreground.png")
    assert layer.shape == (576, 576, 4) and 0 < layer[..., 3].mean() < 255
    with Image.open(output / "sd15_transparent-3-foreground.png") as image:
        parameters = image.text["parameters"]
    assert "Size: 576x576, " in parameters
    assert "Hires resize: 576x576, Hires strength: 0.5, " in parameters


def test_the_tile_flags_are_the_model_sets_tiling() -> None:
    from backend import cli
    from backend.layerdiffuse import Tiling

    args = cli._parser().parse_args(["generate", "--tile-above", "0", "--tile-size", "256"])
    assert cli._tiling(args) == Tiling(above_pixels=0, tile=256)
    assert cli._tiling(cli._parser().parse_args(["serve"])) == Tiling()
