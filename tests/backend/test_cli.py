"""The `layerdiffuse` command: files written, exit codes, one-line errors, no network."""

from __future__ import annotations

import gc
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from backend.cli import BENCH_STAGES, METHOD_SUMMARIES, main
from backend.methods.registry import run_method
from backend.methods.request import GenerationRequest
from backend.model_set import ModelSet
from backend.store.catalogue import CATALOGUE
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


@pytest.mark.usefixtures("demo_xdg_cache")
def test_generate_imports_the_libraries_then_keeps_them_out_of_collections(
    tmp_path: Path,
) -> None:
    """With the collector off while torch and diffusers load, then frozen (backend.startup)."""
    gc.unfreeze()
    try:
        assert _generate(tmp_path) == 0
        assert gc.get_freeze_count() > 0 and gc.isenabled()
    finally:
        gc.unfreeze()


@pytest.mark.usefixtures("demo_xdg_cache")
def test_a_folder_holding_only_a_preview_keeps_it_and_gets_a_matching_pair(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Issue #20: the preview's name alone being taken moves the layer and its preview."""
    earlier = tmp_path / "sd15_transparent-77-foreground-preview.png"
    earlier.write_bytes(b"an earlier preview")
    assert _generate(tmp_path) == 0
    out, _ = _output_lines(capsys)
    assert out == [
        str(tmp_path / "sd15_transparent-77-foreground-2.png"),
        str(tmp_path / "sd15_transparent-77-foreground-2-preview.png"),
    ]
    assert earlier.read_bytes() == b"an earlier preview"
    assert len(list(tmp_path.iterdir())) == 3


@pytest.mark.usefixtures("demo_xdg_cache")
def test_opaque_layers_get_no_preview_and_all_files_share_one_suffix(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """sd15_joint: the transparent foreground has a preview, background and blend do not."""
    (tmp_path / "sd15_joint-77-blended.png").write_bytes(b"keep me")
    assert _generate(tmp_path, "--method", "sd15_joint") == 0
    out, _ = _output_lines(capsys)
    assert out == [
        str(tmp_path / name)
        for name in (
            "sd15_joint-77-foreground-2.png",
            "sd15_joint-77-foreground-2-preview.png",
            "sd15_joint-77-background-2.png",
            "sd15_joint-77-blended-2.png",
        )
    ]
    assert (tmp_path / "sd15_joint-77-blended.png").read_bytes() == b"keep me"
    for name in out[2:]:
        with Image.open(name) as image:
            assert image.mode == "RGBA" and (np.asarray(image)[..., 3] == 255).all()


@pytest.mark.parametrize(
    ("output", "reason"),
    [
        ("afile", "{o} is a file, not a folder"),
        ("afile/sub", "{o} is inside {f}, which is a file, not a folder"),
    ],
)
@pytest.mark.usefixtures("empty_caches", "no_connections")
def test_a_bad_output_folder_fails_before_any_model_is_looked_for(
    output: str, reason: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # No --demo: the default hub model is neither cached nor reachable, so only a check
    # made before loading can give this line.
    afile = tmp_path / "afile"
    afile.write_text("not a folder")
    target = tmp_path / output
    assert main(["generate", "--device", "cpu", "-o", str(target)]) == 2
    assert _output_lines(capsys) == ([], [f"error: -o: {reason.format(o=target, f=afile)}"])
    assert afile.read_text() == "not a folder"


@pytest.mark.parametrize(
    ("option", "method"),
    [("init", "sd15_transparent"), ("foreground", "sd15_fg2bg"), ("background", "sd15_bg2fg")],
)
@pytest.mark.usefixtures("empty_caches")
def test_an_unreadable_input_file_is_a_one_line_usage_error(
    option: str, method: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "missing.png"
    assert _generate(tmp_path / "out", "--method", method, f"--{option}", str(missing)) == 2
    out, err = _output_lines(capsys)
    assert out == []
    assert err == [
        f"error: --{option}: cannot read {missing}: [Errno 2] No such file or directory: "
        f"'{missing}'"
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
        "error: --init: give --init or --foreground, not both (both are the foreground)"
    ]


@pytest.mark.usefixtures("empty_caches")
def test_an_init_file_that_is_not_an_image_is_a_one_line_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = tmp_path / "notes.png"
    text.write_text("not a picture")
    assert _generate(tmp_path / "out", "--init", str(text)) == 2
    _, err = _output_lines(capsys)
    assert err == [f"error: --init: cannot read {text}: cannot identify image file '{text}'"]


@pytest.mark.usefixtures("demo_xdg_cache")
def test_steps_0_is_refused_naming_the_flag(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _generate(tmp_path / "out", "--steps", "0") == 2
    out, err = _output_lines(capsys)
    assert out == []
    assert err == ["error: --steps: 0 outside 1..150"]
    assert not (tmp_path / "out").exists()


@pytest.mark.usefixtures("empty_caches", "no_connections")
def test_an_invalid_request_is_refused_before_any_model_is_looked_for(
    capsys: pytest.CaptureFixture[str],
) -> None:
    # No --demo and no --base: the default hub model is neither cached nor reachable, so
    # only a check made before loading can give the usage error.
    assert main(["generate", "--steps", "0", "--device", "cpu"]) == 2
    assert _output_lines(capsys)[1] == ["error: --steps: 0 outside 1..150"]


@pytest.mark.parametrize(
    "argv", [["--help"], ["generate", "--help"], ["models", "list", "--help"], ["bench", "--help"]]
)
def test_help_exits_0(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 0
    assert capsys.readouterr().out.startswith("usage: layerdiffuse")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        ([], "the following arguments are required: COMMAND (see `layerdiffuse --help`)"),
        (
            ["models"],
            "the following arguments are required: ACTION (see `layerdiffuse models --help`)",
        ),
        (["bench", "--repeat", "x"], "--repeat: 'x' is not an integer in 1..1000"),
        (
            ["generate", "-W"],
            "argument --width/-W: expected one argument (see `layerdiffuse generate --help`)",
        ),
    ],
)
def test_usage_errors_exit_2_with_one_line(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv) == 2
    assert _output_lines(capsys) == ([], [f"error: {message}"])


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


def test_models_list_shows_all_24_files_and_the_folder_each_is_in_or_would_go_to(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], empty_caches: Path
) -> None:
    models_dir = tmp_path / "models"
    models_dir.mkdir()
    present = models_dir / "layer_sd15_joint.safetensors"
    present.write_bytes(b"x")
    assert main(["models", "list", "--models-dir", str(models_dir), "--offline"]) == 0
    out, _ = _output_lines(capsys)
    lines = _list_lines(out)
    assert sorted(lines) == sorted(CATALOGUE)
    # LayerDiffuse's, the few-step LoRAs, LayerDiffuse-Flux's, the matting model
    assert len(lines) == 14 + 7 + 2 + 1
    assert len(out) == 2 * 24  # each file's summary line and its description
    assert lines["layer_sd15_joint"].endswith(f"  {present}")
    others = [line for name, line in lines.items() if name != "layer_sd15_joint"]
    for name, line in lines.items():
        if name == "layer_sd15_joint":
            continue
        folder = empty_caches / f"models--{CATALOGUE[name].repo_id.replace('/', '--')}"
        assert line.endswith(f"  missing from {models_dir}; a download goes to {folder}"), line
    assert "few_step_lora" in lines["sdxl_lightning_4step"]
    assert len(others) == 23
    assert "flux_transparent_vae" in lines["flux_transparent_vae"]
    assert "  matting  " in lines["birefnet_hr_matting"]


def test_models_list_without_a_models_folder_names_the_download_folder(
    capsys: pytest.CaptureFixture[str], empty_caches: Path
) -> None:
    assert main(["models", "list"]) == 0
    lines = _list_lines(_output_lines(capsys)[0])
    for name, line in lines.items():
        folder = empty_caches / f"models--{CATALOGUE[name].repo_id.replace('/', '--')}"
        assert line.endswith(f"  missing: a download goes to {folder}"), line


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
    assert main(["models", "download", "layer_sd99_magic", "--offline"]) == 2
    (line,) = _output_lines(capsys)[1]
    assert line.startswith("error: NAME: unknown model file 'layer_sd99_magic'; known names: ")
    assert "layer_sd15_joint" in line


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


def test_generate_help_shows_every_default_and_range_and_one_line_per_method(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["generate", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    for shown in (
        "sampler steps; 1..150 (default: 20)",
        "classifier-free guidance scale; 1.0..30.0 (default: 7.0)",
        "in pixels; 8..4096 (default: 512)",
        '(default: "bad, ugly")',
        "0..4294967295 (default: 12345)",
        "0.0..1.0 (default: 1.0)",
        "(default: outputs)",
        "(default: dpmpp_2m_karras)",
        "(default: sd15_transparent)",
    ):
        assert shown in text
    for method in Method:
        assert f"{method.value} {METHOD_SUMMARIES[method]}" in text


@pytest.mark.parametrize("command", ["serve", "bench", "models", "models list", "models download"])
def test_every_subcommand_help_exits_0(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([*command.split(), "--help"]) == 0
    assert capsys.readouterr().out.startswith(f"usage: layerdiffuse {command}")


def test_the_cli_knows_the_bench_stages_without_importing_the_bench() -> None:
    from backend.bench import STAGES

    assert STAGES == BENCH_STAGES


@pytest.mark.slow
def test_bench_times_the_demo_job_stage_by_stage(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], demo_xdg_cache: Path
) -> None:
    report = tmp_path / "bench.json"
    argv = ["bench", "--device", "cpu", "--size", "64", "--repeat", "1", "--stages", "demo"]
    assert main([*argv, "--json", str(report)]) == 0
    timings = {(t["stage"], t["variant"]): t for t in json.loads(report.read_text())["timings"]}
    for key in (
        ("demo start-up", "import torch, diffusers, methods"),
        ("demo start-up", "open the demo model set"),
        ("SD1.5 job breakdown", "sampler, 20 steps"),
        ("SD1.5 job breakdown", "VAE decode"),
        ("demo command", "layerdiffuse generate --demo … at 64², whole"),
    ):
        assert timings[key]["milliseconds"] > 0, key
    for key, baseline in (
        (
            ("demo start-up", "… collector off, then frozen (the CLI)"),
            "import torch, diffusers, methods",
        ),
        (("demo start-up", "… frozen (the CLI)"), "exit after those imports"),
        (
            ("demo decode 64²", "ours: … and the min/max median, 1 view per pass"),
            "before: 1×1 convs by oneDNN, torch.median",
        ),
        (("median of 8 views at 64²", "min/max network"), "torch.median"),
    ):
        assert timings[key]["baseline"] == baseline and timings[key]["ratio"] > 0, key


def test_bench_times_the_large_canvas_paths_side_by_side(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], demo_xdg_cache: Path
) -> None:
    """`--stages hires` at one small side (`--size`): each decode whole and in tiles, and
    one pass against two, each tiled or second-pass row with its ratio to the first."""
    report = tmp_path / "bench.json"
    argv = ["bench", "--device", "cpu", "--size", "640", "--repeat", "1", "--stages", "hires"]
    assert main([*argv, "--json", str(report)]) == 0
    timings = {(t["stage"], t["variant"]): t for t in json.loads(report.read_text())["timings"]}
    tiles = "tiles of 1024², overlap 128"
    for stage in ("VAE decode 640²", "transparent decode 640²"):
        assert timings[(stage, "whole")]["milliseconds"] > 0
        assert timings[(stage, tiles)]["baseline"] == "whole"
        assert timings[(stage, tiles)]["ratio"] > 0
    stage = "SD1.5 transparent 640², 2 steps"
    second = timings[(stage, "two passes, the second at full size (strength 0.5)")]
    assert second["baseline"] == "one pass near 512², scaled up" and second["ratio"] > 0
    assert "SD1.5 transparent 640²" in capsys.readouterr().out


def test_bench_sets_each_few_step_lora_beside_the_20_step_job(
    tmp_path: Path, demo_xdg_cache: Path
) -> None:
    """`--stages fewstep`: the 20-step baseline, then each SD1.5 few-step LoRA at its
    advised settings with its ratio and how far its alpha moved (|Δα|, IoU)."""
    report = tmp_path / "bench.json"
    argv = ["bench", "--device", "cpu", "--repeat", "1", "--stages", "fewstep"]
    assert main([*argv, "--json", str(report)]) == 0
    timings = json.loads(report.read_text())["timings"]
    baseline, *rows = timings
    assert baseline["variant"] == "20 steps, DPM++ 2M Karras, CFG 7"
    assert [row["variant"].split(":")[0] for row in rows] == [
        "Hyper-SD 8 steps",
        "Hyper-SD 8 steps, with CFG",
    ]
    for row in rows:
        assert row["baseline"] == baseline["variant"] and row["ratio"] > 0
        match = re.search(r"\(\|Δα\| (\d+\.\d), IoU (\d\.\d\d)\)$", row["variant"])
        assert match is not None and 0 <= float(match[2]) <= 1, row["variant"]
