"""`layerdiffuse generate`'s flags for step 2 of the one-click workflows and for GPU noise."""

from __future__ import annotations

import pytest

from backend.cli import main
from backend.methods.request import GenerationRequest
from backend.methods.sdxl_blending import second_step
from protocol import NoiseSource, Sampler


def _parameters(*argv: str) -> GenerationRequest:
    """The request `generate` would run for argv (parsed, not run)."""
    from backend import cli

    args = cli._parser().parse_args(["generate", *argv])
    parameters = cli._parameters_from(args)
    fields = {name: getattr(parameters, name) for name in cli.PARAMETERS}
    return GenerationRequest(**fields)


def test_the_seed_readmes_two_steps_are_one_command_line() -> None:
    request = _parameters(
        "--method",
        "sdxl_fg2bg",
        "-p",
        "a dog sitting in room, high quality",
        "--second-prompt",
        "room, high quality",
        "--sampler",
        "dpmpp_2m_sde_karras",
    )
    settings = second_step(request)
    assert (request.prompt, request.sampler, request.ending_step) == (
        "a dog sitting in room, high quality",
        Sampler.DPMPP_2M_SDE_KARRAS,
        1.0,
    )
    assert settings.prompt == "room, high quality"
    assert (settings.negative_prompt, settings.sampler, settings.ending_step) == (
        "bad, ugly",
        Sampler.UNIPC,
        0.5,
    )


def test_each_of_step_2s_settings_has_a_flag() -> None:
    request = _parameters(
        "--method",
        "sdxl_bg2fg",
        "--second-negative-prompt",
        "blurry",
        "--second-sampler",
        "euler_a",
        "--second-stop-at",
        "0.7",
        "--noise",
        "gpu",
    )
    assert (request.second_negative_prompt, request.second_sampler) == ("blurry", Sampler.EULER_A)
    assert (request.second_ending_step, request.second_prompt) == (0.7, None)
    assert request.noise_source is NoiseSource.GPU
    assert _parameters().noise_source is NoiseSource.CPU  # the default: CPU noise


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["--second-prompt", "room"],
            "error: --second-prompt: sd15_transparent has no step 2 "
            "(only sdxl_fg2bg and sdxl_bg2fg have)",
        ),
        (["--second-stop-at", "2"], "error: --second-stop-at: 2.0 outside 0.0..1.0"),
        (
            ["--noise", "nv"],
            "error: --noise: 'nv' is not one of cpu, gpu",
        ),
    ],
)
def test_a_wrong_step_2_or_noise_flag_is_refused_naming_it(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["generate", "--demo", *argv]) == 2
    assert capsys.readouterr().err.strip() == message
