"""`layerdiffuse generate` for Split into Layers and the matting fallback (issue #19)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from backend.cli import main
from backend.model_set import LayeredModelSet, ModelSet

pytestmark = pytest.mark.usefixtures("demo_xdg_cache")


def picture_file(path: Path, width: int = 64, height: int = 48) -> Path:
    rng = np.random.default_rng(3)
    rgba = rng.integers(0, 256, (height, width, 4), dtype=np.uint8)
    rgba[..., 3] = 255
    Image.fromarray(rgba, "RGBA").save(path)
    return path


def split(output: Path, *options: str) -> int:
    command = ["generate", "--method", "split_layers", "--device", "cpu", "--output", str(output)]
    return main([*command, *options])


def test_split_writes_one_rgba_png_per_layer_bottom_first(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], demo_layered_models: LayeredModelSet
) -> None:
    image = picture_file(tmp_path / "flat.png")
    output = tmp_path / "out"
    code = split(
        output,
        *("--demo", "qwen_layered", "--image", str(image), "--layers", "3"),
        *("--steps", "2", "--seed", "5", "-W", "64", "-H", "48", "-p", "a cup"),
    )
    assert code == 0
    captured = capsys.readouterr()
    out = captured.out.splitlines()
    assert re.fullmatch(r"1 split\(s\) into 3 layers in \d+\.\d s", captured.err.splitlines()[-1])
    layers = [f"split_layers-5-layer{i}.png" for i in (1, 2, 3)]
    previews = [name.replace(".png", "-preview.png") for name in layers]
    assert out == [
        str(output / name) for pair in zip(layers, previews, strict=True) for name in pair
    ]
    stack = []
    for name in layers:
        with Image.open(output / name) as written:
            assert (written.mode, written.size) == ("RGBA", (64, 48))
            stack.append(np.asarray(written))
            parameters = written.text["parameters"]
        assert "Split layers: 3" in parameters and "True CFG scale: 4" in parameters
        assert "Steps: 2" in parameters and "Seed: 5" in parameters
    assert not np.array_equal(stack[0], stack[1])


def test_split_refusals_name_the_flag_before_any_model(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    image = picture_file(tmp_path / "flat.png")
    cases = [
        (["--demo", "qwen_layered"], r"--image: split_layers needs a layer layer"),
        (["--demo", "sdxl", "--image", str(image)], r"--demo sdxl: split_layers runs on"),
        (["--demo", "qwen_layered", "--image", str(image), "--layers", "0"], r"--layers"),
    ]
    for options, message in cases:
        assert split(tmp_path / "never", *options) == 2
        err = capsys.readouterr().err
        assert re.search(message, err), err
    assert not (tmp_path / "never").exists()


def test_the_card_s_steps_and_cfg_apply_unless_typed() -> None:
    import argparse

    from backend.cli import _parameters_from, _parser, _split_defaults

    def parameters(*options: str):
        args: argparse.Namespace = _parser().parse_args(
            ["generate", "--method", "split_layers", *options]
        )
        return _split_defaults(args, _parameters_from(args))

    assert (parameters().steps, parameters().cfg_scale) == (50, 4.0)
    typed = parameters("--steps", "8", "--cfg", "1")
    assert (typed.steps, typed.cfg_scale) == (8, 1.0)


def test_a_known_failing_checkpoint_is_explained_and_the_fallback_runs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], demo_illustrious_models: ModelSet
) -> None:
    output = tmp_path / "out"
    options = ["--device", "cpu", "-W", "64", "-H", "64", "--steps", "2", "--output", str(output)]
    command = ["generate", "--demo", "sdxl-illustrious", "--method", "sdxl_matted", "-p", "a fox"]
    code = main([*command, *options])
    assert code == 0
    err = capsys.readouterr().err
    assert "LayerDiffuse is known to fail on Illustrious-XL checkpoints" in err
    assert "(sdxl_matted)" in err
    with Image.open(output / "sdxl_matted-12345-foreground.png") as written:
        assert written.mode == "RGBA"
        assert 'layerdiffusion_fallback: "generated on neutral gray' in written.text["parameters"]
