"""The `layerdiffuse` command: files written, exit codes, one-line errors, no network."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from backend.cli import main
from backend.methods.registry import run_method
from backend.methods.request import GenerationRequest
from backend.model_set import ModelSet
from backend.store.catalogue import RELEASED_FILES
from protocol import LayerRole, Method

REPOSITORY = Path(__file__).resolve().parents[2]
DEMO_NOTE = "using the demo model set: tiny random models, so the pictures are noise"
# A1111's own pattern for the "Key: value, …" line (modules/infotext_utils.py re_param)
A1111_PARAMETER = re.compile(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')


def _generate(output: Path, *options: str) -> int:
    return main(
        [
            "generate",
            "--demo",
            "--device",
            "cpu",
            "--prompt",
            "a glass of water, clear",
            "--width",
            "80",
            "--height",
            "48",
            "--steps",
            "2",
            "--seed",
            "77",
            "--output",
            str(output),
            *options,
        ]
    )


def _parse_parameters(text: str) -> tuple[str, str, dict[str, str]]:
    """Split a parameters text as A1111 reads it: prompt, negative prompt, settings."""
    prompt, negative, settings = text.split("\n")
    values = {}
    for key, value in A1111_PARAMETER.findall(settings):
        values[key] = json.loads(value) if value.startswith('"') else value
    return prompt, negative.removeprefix("Negative prompt: "), values


def _output_lines(capsys: pytest.CaptureFixture[str]) -> tuple[list[str], list[str]]:
    captured = capsys.readouterr()
    return captured.out.splitlines(), captured.err.splitlines()


@pytest.mark.usefixtures("demo_xdg_cache")
def test_generate_writes_rgba_pngs_and_previews_and_prints_their_paths(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], demo_models: ModelSet
) -> None:
    output = tmp_path / "out"
    assert _generate(output, "--batch-size", "2") == 0
    out, err = _output_lines(capsys)
    names = [
        "sd15_transparent-77-foreground.png",
        "sd15_transparent-77-foreground-preview.png",
        "sd15_transparent-78-foreground.png",
        "sd15_transparent-78-foreground-preview.png",
    ]
    assert out == [str(output / name) for name in names]
    assert sorted(path.name for path in output.iterdir()) == sorted(names)
    assert err[0] == DEMO_NOTE
    assert re.fullmatch(r"2 image\(s\) in \d+\.\d s", err[-1])

    request = GenerationRequest(
        method=Method.SD15_TRANSPARENT,
        prompt="a glass of water, clear",
        negative_prompt="bad, ugly",
        width=80,
        height=48,
        steps=2,
        seed=77,
        batch_size=2,
    )
    expected = run_method(request, demo_models)
    for index, seed in enumerate((77, 78)):
        with Image.open(output / f"sd15_transparent-{seed}-foreground.png") as image:
            assert (image.mode, image.size) == ("RGBA", (80, 48))
            pixels = np.asarray(image)
            parameters = image.text["parameters"]
        assert np.array_equal(pixels, expected.images[index][LayerRole.FOREGROUND])
        prompt, negative, values = _parse_parameters(parameters)
        assert (prompt, negative) == ("a glass of water, clear", "bad, ugly")
        assert values["Seed"] == str(seed)
        assert (values["Steps"], values["Size"]) == ("2", "64x64")
        assert values["Model"] == "demo-sd15 (tiny random weights: pictures are noise)"
        assert values["layerdiffusion_method"] == (
            "(SD1.5) Only Generate Transparent Image (Attention Injection)"
        )
        with Image.open(output / f"sd15_transparent-{seed}-foreground-preview.png") as preview:
            assert (preview.mode, preview.size) == ("RGB", (80, 48))


@pytest.mark.usefixtures("demo_xdg_cache")
def test_generate_never_overwrites_a_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _generate(tmp_path) == 0
    first = tmp_path / "sd15_transparent-77-foreground.png"
    first.write_bytes(b"keep me")
    capsys.readouterr()
    assert _generate(tmp_path) == 0
    out, _ = _output_lines(capsys)
    assert out == [
        str(tmp_path / "sd15_transparent-77-foreground-2.png"),
        str(tmp_path / "sd15_transparent-77-foreground-2-preview.png"),
    ]
    assert first.read_bytes() == b"keep me"
    assert len(list(tmp_path.iterdir())) == 4


@pytest.mark.parametrize("option", ["init", "foreground", "background"])
@pytest.mark.usefixtures("empty_caches")
def test_an_unreadable_input_file_is_a_one_line_usage_error(
    option: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "missing.png"
    assert _generate(tmp_path / "out", f"--{option}", str(missing)) == 2
    out, err = _output_lines(capsys)
    assert out == []
    assert err == [
        f"error: {option}: cannot read {missing}: [Errno 2] No such file or directory: '{missing}'"
    ]
    assert not (tmp_path / "out").exists()


@pytest.mark.usefixtures("empty_caches")
def test_init_and_foreground_together_are_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    image = tmp_path / "layer.png"
    Image.new("RGBA", (8, 8)).save(image)
    assert _generate(tmp_path / "out", "--init", str(image), "--foreground", str(image)) == 2
    assert _output_lines(capsys)[1] == [
        "error: init: give --init or --foreground, not both (both are the foreground)"
    ]


@pytest.mark.usefixtures("empty_caches")
def test_an_init_file_that_is_not_an_image_is_a_one_line_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = tmp_path / "notes.png"
    text.write_text("not a picture")
    assert _generate(tmp_path / "out", "--init", str(text)) == 2
    _, err = _output_lines(capsys)
    assert err == [f"error: init: cannot read {text}: cannot identify image file '{text}'"]


@pytest.mark.usefixtures("demo_xdg_cache")
def test_steps_0_is_refused_with_the_requests_message(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _generate(tmp_path / "out", "--steps", "0") == 2
    out, err = _output_lines(capsys)
    assert out == []
    assert err[-1] == "error: steps: 0 outside 1..150"
    assert not (tmp_path / "out").exists()


@pytest.mark.usefixtures("empty_caches", "no_connections")
def test_an_invalid_request_is_refused_before_any_model_is_looked_for(
    capsys: pytest.CaptureFixture[str],
) -> None:
    # No --demo and no --base: the default hub model is neither cached nor reachable, so
    # only a check made before loading can give the usage error.
    assert main(["generate", "--steps", "0", "--device", "cpu"]) == 2
    assert _output_lines(capsys)[1] == ["error: steps: 0 outside 1..150"]


@pytest.mark.parametrize(
    "argv", [["--help"], ["generate", "--help"], ["models", "list", "--help"], ["bench", "--help"]]
)
def test_help_exits_0(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 0
    assert capsys.readouterr().out.startswith("usage: layerdiffuse")


@pytest.mark.parametrize(
    "argv", [[], ["generate", "--no-such-option"], ["models"], ["bench", "--repeat", "x"]]
)
def test_usage_errors_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 2
    assert "usage: layerdiffuse" in capsys.readouterr().err


@pytest.mark.usefixtures("empty_caches")
def test_a_missing_base_checkpoint_exits_3_with_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "nonexistent.safetensors"
    assert main(["generate", "--base", str(missing), "--offline", "--device", "cpu"]) == 3
    out, err = _output_lines(capsys)
    assert out == []
    assert err == [
        f"error: base model {str(missing)!r} not found: no such file or folder, and not a "
        "hugging face repo id like 'org/name'"
    ]


def _list_lines(out: list[str]) -> dict[str, str]:
    """`models list` output: name → its summary line (the description lines dropped)."""
    return {line.split()[0]: line for line in out if line and not line.startswith(" ")}


@pytest.mark.usefixtures("empty_caches")
def test_models_list_shows_all_14_files_and_where_they_are(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    models_dir = tmp_path / "models"
    models_dir.mkdir()
    present = models_dir / "layer_sd15_joint.safetensors"
    present.write_bytes(b"x")
    assert main(["models", "list", "--models-dir", str(models_dir), "--offline"]) == 0
    out, _ = _output_lines(capsys)
    lines = _list_lines(out)
    assert sorted(lines) == sorted(RELEASED_FILES)
    assert len(lines) == 14
    assert len(out) == 2 * 14  # each file's summary line and its description
    assert lines["layer_sd15_joint"].endswith(f"  {present}")
    others = [line for name, line in lines.items() if name != "layer_sd15_joint"]
    assert all(line.endswith("  not downloaded") for line in others)


@pytest.mark.usefixtures("empty_caches")
def test_models_verify_on_an_empty_machine_says_nothing_is_downloaded(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["models", "verify", "--offline"]) == 0
    assert _output_lines(capsys) == (
        [],
        ["no released files are on this machine yet: run `layerdiffuse models download`"],
    )


@pytest.mark.usefixtures("empty_caches")
def test_models_verify_reports_a_damaged_file_and_exits_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    models_dir = tmp_path / "models"
    models_dir.mkdir()
    (models_dir / "layer_sd15_vae_transparent_encoder.safetensors").write_bytes(b"not the file")
    argv = [
        "models",
        "verify",
        "layer_sd15_vae_transparent_encoder",
        "--models-dir",
        str(models_dir),
    ]
    assert main([*argv, "--offline"]) == 1
    out, _ = _output_lines(capsys)
    assert len(out) == 1 and "mismatch" in out[0]


@pytest.mark.usefixtures("empty_caches", "no_connections")
def test_models_download_offline_with_nothing_cached_exits_3(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["models", "download", "layer_sd15_joint", "--offline"]) == 3
    out, err = _output_lines(capsys)
    assert out == []
    assert len(err) == 1
    assert err[0].startswith("error: layer_sd15_joint.safetensors is not")
    assert "layerdiffuse models download layer_sd15_joint" in err[0]


@pytest.mark.usefixtures("empty_caches", "no_connections")
def test_models_download_of_an_unknown_name_lists_the_known_ones(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["models", "download", "layer_sd99_magic", "--offline"]) == 3
    (line,) = _output_lines(capsys)[1]
    assert "layer_sd99_magic" in line and "layer_sd15_joint" in line


def test_bench_writes_the_reference_and_our_variants_with_ratios(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    report = tmp_path / "bench.json"
    argv = ["bench", "--device", "cpu", "--size", "64", "--repeat", "1", "--stages", "decoder"]
    assert main([*argv, "--json", str(report)]) == 0
    table = capsys.readouterr().out
    data = json.loads(report.read_text())
    assert (data["device"], data["size"]) == ("cpu", 64)
    decode = [t for t in data["timings"] if t["stage"] == "transparent decode"]
    reference = decode[0]
    assert reference["variant"] == "reference: 8 passes in a loop" and reference["ratio"] is None
    ours = [t for t in decode if t["variant"].startswith("ours:")]
    assert len(ours) == 4
    for timing in ours:
        assert timing["baseline"] == reference["variant"]
        assert timing["ratio"] == pytest.approx(reference["milliseconds"] / timing["milliseconds"])
        assert timing["variant"] in table


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (
            ["--stages", "nope"],
            "error: stages: unknown stage 'nope'; known: "
            "decoder, sd15, sdxl, methods, sdxl_methods, transport",
        ),
        (["--repeat", "0"], "error: repeat: 0 is not a positive count"),
        (["--size", "0"], "error: size: 0 is not a positive multiple of 64"),
    ],
)
def test_bench_refuses_bad_options_in_one_line(
    options: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["bench", "--device", "cpu", *options]) == 2
    assert _output_lines(capsys)[1] == [message]


def test_bench_refuses_a_size_that_is_not_a_multiple_of_64(
    capsys: pytest.CaptureFixture[str],
) -> None:
    argv = ["bench", "--device", "cpu", "--size", "32", "--repeat", "1", "--stages", "decoder"]
    assert main(argv) == 2
    assert _output_lines(capsys)[1][0].startswith("error: size: ")


def test_python_m_backend_help_exits_0() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "backend", "--help"],
        cwd=REPOSITORY,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert (done.returncode, done.stderr) == (0, "")
    assert done.stdout.startswith("usage: layerdiffuse")


def test_importing_the_cli_does_not_import_torch() -> None:
    code = (
        "import sys, backend.cli\n"
        "print(sorted(m for m in ('torch', 'diffusers', 'transformers', 'numpy') "
        "if m in sys.modules))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPOSITORY,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert done.stdout == "[]\n"
