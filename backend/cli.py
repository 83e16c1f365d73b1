"""The `layerdiffuse` command: generate, serve, models, bench, cluster.

Exit codes: 0 done; 1 failed; 2 usage: a bad flag or value, or a start that is refused
(an output folder that cannot take the results, an unsafe bind, a bad origin, a busy
port); 3 could not start (a model is missing or unusable). Expected failures print one
readable line, no traceback.

Everything that can be checked without the models is checked first, before torch or
diffusers is imported (they take seconds): each flag as it is parsed (`backend.flags`,
ranges from `protocol.PARAMETERS`), then what ties flags together, the input files and
the output folder.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import logging
import os
import re
import socket
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from protocol import (
    MAX_INPUT_SIDE,
    METHOD_SPECS,
    PARAMETERS,
    GenerationParameters,
    Hires,
    InvalidParameter,
    LayerRole,
    Method,
    ModelFamily,
    NoiseSource,
    ResizeMode,
    Sampler,
    check_input_roles,
    check_mask_size,
    check_parameters,
)

from .config import DEFAULT_HOST, DEFAULT_PORT, TOKEN_ENVIRONMENT, ServerConfig
from .errors import BackendError, InvalidRequest, ModelError, ModelNotFound, OutputError
from .flags import (
    Parser,
    UsageError,
    choice_flag,
    number_flag,
    parameter_flag,
    path_flag,
    typed_flag,
)
from .outputs import FILE_OVERHEAD_BYTES, OutputFile, check_output_folder, write_files
from .startup import importing_libraries

if TYPE_CHECKING:
    import numpy as np
    import torch

    from .cluster.cluster import Cluster
    from .cluster.config import ClusterConfig
    from .methods.request import GenerationRequest, GenerationResult
    from .store.download import ModelStore

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_NO_START = 0, 1, 2, 3
DEFAULT_BASES = {
    ModelFamily.SD15: "stable-diffusion-v1-5/stable-diffusion-v1-5",
    ModelFamily.SDXL: "stabilityai/stable-diffusion-xl-base-1.0",
    ModelFamily.FLUX: "black-forest-labs/FLUX.1-dev",
    ModelFamily.QWEN_LAYERED: "Qwen/Qwen-Image-Layered",
}
DEMO_FAMILIES = {
    "sd15": ModelFamily.SD15,
    "sdxl": ModelFamily.SDXL,
    "flux": ModelFamily.FLUX,
    "qwen_layered": ModelFamily.QWEN_LAYERED,
    "sdxl-illustrious": ModelFamily.SDXL,
}
"""`--demo`'s values and the family of each."""
DEMO_LOOKALIKES = {"sdxl-illustrious": "demo-illustriousXL_v01"}
"""Demo sets opened under the name of a checkpoint LayerDiffuse is known to fail on."""
DEFAULT_NEGATIVE = "bad, ugly"
DEFAULT_OUTPUT = Path("outputs")
BENCH_STAGES = (
    "decoder",
    "sd15",
    "sdxl",
    "methods",
    "sdxl_methods",
    "transport",
    "demo",
    "cluster",
    "hires",
    "fewstep",
    "compile",
)
"""`backend.bench.STAGES`, here so that `--stages` is checked without importing torch."""

METHOD_SUMMARIES: dict[Method, str] = {
    Method.SD15_TRANSPARENT: "a transparent image (attention injection); --init reworks one",
    Method.SD15_JOINT: "a foreground, a background and their blend, diffused together",
    Method.SD15_FG_TO_BG: "a background for --foreground, and the blend",
    Method.SD15_BG_TO_FG: "a foreground for --background, and the blend",
    Method.SDXL_TRANSPARENT_ATTN: "a transparent image (attention LoRA); --init reworks one",
    Method.SDXL_TRANSPARENT_CONV: "a transparent image (conv injection); --init reworks one",
    Method.SDXL_FG_TO_BLEND: "--foreground blended into a scene",
    Method.SDXL_FG_BLEND_TO_BG: "the background of --blend without --foreground",
    Method.SDXL_BG_TO_BLEND: "a foreground blended into --background",
    Method.SDXL_BG_BLEND_TO_FG: "the foreground of --blend over --background",
    Method.SDXL_FG_TO_BG: "a background for --foreground, and the blend (two passes)",
    Method.SDXL_BG_TO_FG: "a foreground for --background, and the blend (two passes)",
    Method.FLUX_TRANSPARENT: "a transparent image on FLUX.1-dev (LayerDiffuse-Flux); "
    "--init reworks one; --cfg is FLUX's guidance",
    Method.SPLIT_LAYERS: "--image split into --layers transparent layers "
    "(Qwen-Image-Layered; 50 steps, --cfg 4 unless given; no --prompt: it captions)",
    Method.SD15_MATTED: "a transparent image generated on gray and matted, for a "
    "checkpoint LayerDiffuse fails on",
    Method.SDXL_MATTED: "a transparent image generated on gray and matted, for a "
    "checkpoint LayerDiffuse fails on (Illustrious, NoobAI)",
}
"""One line per method for `generate --help`: what it makes."""

# How a message names a request field: the flag of `generate` that sets it.
_FLAGS = {
    "method": "--method",
    "prompt": "--prompt",
    "negative_prompt": "--negative-prompt",
    "width": "--width",
    "height": "--height",
    "fit_to_native": "--fit-to-native",
    "resize_mode": "--resize-mode",
    "seed": "--seed",
    "steps": "--steps",
    "cfg_scale": "--cfg",
    "sampler": "--sampler",
    "batch_size": "--batch-size",
    "batch_count": "--batch-count",
    "weight": "--weight",
    "ending_step": "--stop-at",
    "denoise_strength": "--denoise",
    "noise_source": "--noise",
    "second_prompt": "--second-prompt",
    "second_negative_prompt": "--second-negative-prompt",
    "second_sampler": "--second-sampler",
    "second_ending_step": "--second-stop-at",
    "hires": "--hires",
    "hires_strength": "--hires-strength",
    "lora": "--lora",
    "lora_weight": "--lora-weight",
    "layers": "--layers",
    "inputs.mask": "--mask",
    "inputs.layer": "--image",
}
_ROLE_FLAGS = {
    LayerRole.FOREGROUND: ("foreground", "fg_prompt"),
    LayerRole.BACKGROUND: ("background", "bg_prompt"),
    LayerRole.BLENDED: ("blend", "blend_prompt"),
}
_DEVICE = re.compile(r"auto|cpu|mps|(cuda|xpu)(:\d+)?")
_TRANSPARENT_ROLES = (LayerRole.FOREGROUND, LayerRole.LAYER)
"""Roles whose results are transparent, and so get a checkerboard preview."""

log = logging.getLogger("backend.cli")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code."""
    try:
        args = _parser().parse_args(argv)
    except SystemExit as exit_:  # --help
        return EXIT_OK if exit_.code in (0, None) else EXIT_USAGE
    except UsageError as error:
        _say(f"error: {error}")
        return EXIT_USAGE
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        return int(args.command(args))
    except UsageError as error:
        _say(f"error: {error}")
        return EXIT_USAGE
    except ModelError as error:
        _say(f"error: {error}")
        return EXIT_NO_START
    except InvalidRequest as error:
        _say(f"error: {error}")
        return EXIT_USAGE
    except BackendError as error:
        _say(f"error: {error}")
        return EXIT_FAILED
    except KeyboardInterrupt:
        _say("interrupted")
        return EXIT_FAILED


# -- the parser ----------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="layerdiffuse",
        description="Transparent-layer diffusion (LayerDiffuse) on a local GPU, for Krita.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log what happens")
    commands = parser.add_subparsers(title="commands", required=True, metavar="COMMAND")
    _add_generate(commands)
    _add_serve(commands)
    _add_models(commands)
    _add_bench(commands)
    _add_cluster(commands)
    return parser


def _add_generate(commands: Any) -> None:
    generate = commands.add_parser(
        "generate",
        help="generate images to PNG files",
        description="Generate layers and write them as RGBA PNGs (straight alpha), the\n"
        "parameters stored in each (A1111 style); transparent layers also get a preview\n"
        "over a checkerboard. Every flag is checked before any model is loaded.",
        epilog=_methods_epilog(),
    )
    choice_flag(
        generate,
        "--method",
        dest="method",
        choices=[method.value for method in Method],
        default=Method.SD15_TRANSPARENT.value,
        help="what to make, one of the methods listed below",
        list_choices=False,
    )
    parameter_flag(generate, "--prompt", "-p", field="prompt", help="what to generate")
    parameter_flag(
        generate,
        "--negative-prompt",
        "-n",
        field="negative_prompt",
        help="what to avoid",
        default=DEFAULT_NEGATIVE,
    )
    parameter_flag(generate, "--seed", field="seed")
    parameter_flag(generate, "--steps", field="steps")
    parameter_flag(generate, "--cfg", field="cfg_scale")
    parameter_flag(generate, "--sampler", field="sampler")
    parameter_flag(generate, "--width", "-W", field="width")
    parameter_flag(generate, "--height", "-H", field="height")
    generate.add_argument(
        "--fit-to-native",
        action="store_true",
        dest="fit_to_native",
        help=PARAMETERS["fit_to_native"].meaning + " to --width x --height",
    )
    parameter_flag(generate, "--resize-mode", field="resize_mode")
    parameter_flag(generate, "--batch-size", field="batch_size")
    parameter_flag(generate, "--batch-count", field="batch_count")
    parameter_flag(generate, "--weight", field="weight")
    parameter_flag(generate, "--stop-at", field="ending_step")
    parameter_flag(
        generate, "--denoise", field="denoise_strength", help="with --init: how much is reworked"
    )
    parameter_flag(generate, "--noise", field="noise_source")
    # Step 2 of sdxl_fg2bg / sdxl_bg2fg; unset (None), each is the seed README recipe's.
    step_2 = "sdxl_fg2bg / sdxl_bg2fg, step 2 (the layer from the blend): "
    parameter_flag(
        generate,
        "--second-prompt",
        field="second_prompt",
        help=step_2 + "its prompt, unset: --prompt",
    )
    parameter_flag(
        generate,
        "--second-negative-prompt",
        field="second_negative_prompt",
        help=step_2 + "its negative prompt, unset: --negative-prompt",
    )
    parameter_flag(
        generate,
        "--second-sampler",
        field="second_sampler",
        metavar="SAMPLER",
        help=step_2 + "its sampler, unset: unipc",
    )
    parameter_flag(
        generate,
        "--second-stop-at",
        field="second_ending_step",
        help=step_2 + "its Stop At, unset: 0.5 for a background, 1 for a foreground",
    )
    parameter_flag(generate, "--hires", field="hires")
    parameter_flag(generate, "--hires-strength", field="hires_strength")
    parameter_flag(
        generate,
        "--lora",
        field="lora",
        metavar="NAME|FILE",
        help="a LoRA merged into the base model: a few-step one by name (its sampler, "
        "steps and CFG apply unless given; `models list` names them) or a .safetensors file",
    )
    parameter_flag(generate, "--lora-weight", field="lora_weight")
    parameter_flag(generate, "--layers", field="layers", help="split_layers: how many layers")
    path_flag(
        generate,
        "--image",
        dest="image",
        metavar="PNG",
        help="the picture to split into layers, for split_layers",
    )
    path_flag(
        generate,
        "--mask",
        dest="mask",
        metavar="PNG",
        help="the selection, at -W x -H: its alpha (an image without alpha: its "
        "luminance), 0 outside, 255 inside, soft edges kept; results are shaped by it and "
        "the blend outside it is the scene input (any method)",
    )
    path_flag(
        generate,
        "--init",
        dest="init",
        metavar="PNG",
        help="a transparent PNG to rework (transparent img2img), for "
        + _methods_with(LayerRole.FOREGROUND, optional=True),
    )
    for role, (dest, _) in _ROLE_FLAGS.items():
        path_flag(
            generate,
            f"--{dest}",
            dest=dest,
            metavar="PNG",
            help=f"the {role.value} layer (composited on 50%% gray), for "
            + _methods_with(role, optional=False),
        )
    for role, (_, dest) in _ROLE_FLAGS.items():
        readers = [m.value for m, spec in METHOD_SPECS.items() if role in spec.layer_prompts]
        generate.add_argument(
            f"--{dest.replace('_', '-')}",
            dest=dest,
            default="",
            metavar="TEXT",
            help=f'an extra prompt for the {role.value} layer only ("TEXT, PROMPT"), for '
            + ", ".join(readers),
        )
    path_flag(
        generate,
        "--output",
        "-o",
        dest="output",
        default=DEFAULT_OUTPUT,
        metavar="FOLDER",
        help="the folder for the results, made if missing; existing files are never "
        f"replaced (default: {DEFAULT_OUTPUT})",
    )
    _add_model_options(generate, serve=False)
    generate.set_defaults(command=_generate)


def _methods_epilog() -> str:
    lines = ["methods (--method), what each makes, and its layers:"]
    for method, summary in METHOD_SUMMARIES.items():
        spec = METHOD_SPECS[method]
        outputs = ", ".join(role.value for role in spec.outputs)
        lines.append(f"  {method.value:<22} {summary}")
        lines.append(f"  {'':<22} ({spec.family.value}) -> {outputs}")
    lines += [
        "",
        "The sdxl methods need an SDXL --base (or --demo). Files: <method>-<seed>-<layer>.png",
        "per result and layer, and <method>-<seed>-<layer>-preview.png for a transparent one;",
        "when any of a job's names is taken, all of them get one shared -2, -3, ...",
    ]
    return "\n".join(lines)


def _methods_with(role: LayerRole, *, optional: bool) -> str:
    names = [
        method.value
        for method, spec in METHOD_SPECS.items()
        if role in (spec.optional_inputs if optional else spec.required_inputs)
    ]
    return ", ".join(names)


def _add_serve(commands: Any) -> None:
    server = commands.add_parser(
        "serve",
        help="run the websocket backend the Krita plugin talks to",
        description="Serve generation jobs over a websocket (docs/protocol.md). Binds\n"
        "127.0.0.1 by default; any other address needs a token. One base model per\n"
        "server: it offers the methods of that model's family (SD1.5 or SDXL). Every\n"
        "refusal (a flag, an unsafe bind, an origin, a busy port) comes before any model loads.",
    )
    server.add_argument(
        "--host",
        default=DEFAULT_HOST,
        help=f"address to bind; anything but loopback needs --token (default: {DEFAULT_HOST})",
    )
    number_flag(
        server,
        "--port",
        dest="port",
        low=0,
        high=65535,
        default=DEFAULT_PORT,
        help="TCP port; 0 picks a free one",
    )
    server.add_argument(
        "--token",
        help="the secret clients must send (Authorization: Bearer ...) "
        f"(default: ${TOKEN_ENVIRONMENT} if set, else none)",
    )
    server.add_argument(
        "--allow-origin",
        action="append",
        default=[],
        metavar="ORIGIN",
        help="a browser origin allowed to connect, as scheme://host[:port]; may be repeated "
        "(default: none, browsers are refused)",
    )
    _add_model_options(server, serve=True)
    _add_cluster_options(server)
    server.set_defaults(command=_serve)


def _add_cluster_options(server: argparse.ArgumentParser) -> None:
    # A studio's GPUs (docs/cluster.md); they need pip install -e '.[cluster]'.
    server.add_argument(
        "--cluster",
        metavar="ADDRESS",
        help="run jobs on a Ray cluster's GPUs, one replica per GPU, this server being their "
        "gateway: the head's HOST:PORT, or 'local' for a one-node Ray started here on "
        "127.0.0.1 (default: this machine's GPU, no Ray)",
    )
    number_flag(
        server,
        "--gpus",
        dest="gpus",
        low=1,
        high=4096,
        default=None,
        help="GPU replicas to run (default: every GPU of the cluster); with --cluster local "
        "on a machine without a GPU, that many stand-ins running on the CPU",
    )
    number_flag(
        server,
        "--jobs-per-client",
        dest="jobs_per_client",
        low=1,
        high=4096,
        default=None,
        help="jobs of one client running at once (default: one less than the GPUs, at least 1)",
    )
    number_flag(
        server,
        "--cluster-queue",
        dest="cluster_queue",
        low=1,
        high=100_000,
        default=None,
        help="jobs waiting for a GPU, all clients together, before more are refused as busy "
        "(default: 64)",
    )


def _add_cluster(commands: Any) -> None:
    cluster = commands.add_parser(
        "cluster",
        help="a studio's Ray cluster: its GPUs, models and queues",
        description="What runs on a Ray cluster that `layerdiffuse serve --cluster` uses "
        "(docs/cluster.md; needs pip install -e '.[cluster]').",
    )
    actions = cluster.add_subparsers(title="actions", required=True, metavar="ACTION")
    status = actions.add_parser(
        "status", help="the GPUs, the models on them, and each gateway's queue"
    )
    status.add_argument(
        "--address",
        default="local",
        help="the Ray head as HOST:PORT; auto for one `ray start` runs on this machine; local "
        "for the one a `serve --cluster local` gateway runs here (default: local)",
    )
    status.set_defaults(command=_cluster_status)


def _add_model_options(parser: argparse.ArgumentParser, *, serve: bool) -> None:
    family = "SD1.5" if serve else "the family of --method"
    base = (
        DEFAULT_BASES[ModelFamily.SD15]
        if serve
        else f"{DEFAULT_BASES[ModelFamily.SD15]} for SD1.5 methods, "
        f"{DEFAULT_BASES[ModelFamily.SDXL]} for SDXL ones, "
        f"{DEFAULT_BASES[ModelFamily.FLUX]} for FLUX (a non-commercial licence)"
    )
    source = parser.add_mutually_exclusive_group()
    source.add_argument(
        "--demo",
        nargs="?",
        const="auto",
        choices=["auto", *DEMO_FAMILIES],
        help="tiny random models shaped like SD1.5, SDXL, FLUX.1 or Qwen-Image-Layered, no "
        "download (pictures are noise); sdxl-illustrious is the SDXL set named as an "
        "Illustrious-XL checkpoint, on which LayerDiffuse fails (default without a value: "
        f"{family})",
    )
    source.add_argument(
        "--base",
        metavar="MODEL",
        help="base model: a .safetensors checkpoint, a diffusers folder or a hub repo id "
        f"(default: {base})",
    )
    _add_store_options(parser)
    parser.add_argument(
        "--device",
        default="auto",
        type=_device,
        help="cpu, cuda, cuda:N, mps (default: auto, CUDA if present, else mps, else cpu)",
    )
    choice_flag(
        parser,
        "--dtype",
        dest="dtype",
        choices=["auto", "float16", "bfloat16", "float32"],
        default="auto",
        help="compute precision, auto being float16 on a GPU and float32 on a CPU",
    )
    number_flag(
        parser,
        "--tile-above",
        dest="tile_above",
        low=0,
        high=None,
        default=None,
        metavar="PIXELS",
        help="decode and encode an image of more pixels than this in overlapping tiles "
        "(the VAE, the transparent decoder and encoder); 0 always (default: when it would "
        "not fit half the free CUDA memory, above 2 MP off CUDA"
        + ("; not with --cluster)" if serve else ")"),
    )
    number_flag(
        parser,
        "--tile-size",
        dest="tile_size",
        low=256,
        high=4096,
        multiple_of=64,
        default=1024,
        metavar="PIXELS",
        help="the side of those tiles, which overlap by 128 pixels",
    )
    if serve:
        choice_flag(
            parser,
            "--warm-up",
            dest="warm_up",
            choices=["auto", "on", "off"],
            default="auto",
            help="run one small transparent layer before listening, so the first painter's "
            "job does not pay for loading (auto: on for a real model on a GPU)",
        )
        parser.add_argument(
            "--compile",
            action="store_true",
            help="compile the SD UNet with torch.compile at start (the warm-up runs, taking a "
            "minute or more per job shape), for faster steps afterwards; not with --cluster",
        )
        parser.add_argument(
            "--lora-dir",
            type=_folder,
            metavar="FOLDER",
            help="offer every .safetensors LoRA of this folder by its file name, besides "
            "the few-step LoRAs of `models list` (default: none; not with --cluster)",
        )


def _add_store_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--models-dir",
        type=_folder,
        metavar="FOLDER",
        help="a folder holding released LayerDiffuse files, used before the Hugging Face "
        "cache (default: none)",
    )
    parser.add_argument(
        "--offline",
        action="store_true",
        default=None,
        help="never use the network (default: follow HF_HUB_OFFLINE)",
    )


def _add_models(commands: Any) -> None:
    models = commands.add_parser(
        "models",
        help="list, download or verify the LayerDiffuse files",
        description="The 14 released LayerDiffuse files (LayerDiffusion/layerdiffusion-v1): "
        "downloads go to the Hugging Face cache, checked by sha256.",
    )
    actions = models.add_subparsers(title="actions", required=True, metavar="ACTION")
    listing = actions.add_parser(
        "list", help="every released file, and the folder it is in or would go to"
    )
    _add_store_options(listing)
    listing.set_defaults(command=_models_list)
    download = actions.add_parser("download", help="download files (checked by sha256)")
    download.add_argument("names", nargs="*", metavar="NAME", help="file names (default: all)")
    choice_flag(
        download,
        "--family",
        dest="family",
        choices=["sd15", "sdxl", "flux"],
        default=None,
        help="only this family's files",
    )
    _add_store_options(download)
    download.set_defaults(command=_models_download)
    verify = actions.add_parser("verify", help="re-hash files and compare with the catalogue")
    verify.add_argument(
        "names", nargs="*", metavar="NAME", help="file names (default: all present)"
    )
    _add_store_options(verify)
    verify.set_defaults(command=_models_verify)


def _add_bench(commands: Any) -> None:
    bench = commands.add_parser(
        "bench",
        help="time each stage, ours beside the reference's way",
        description="Per-stage timings with random weights at real size (or small on a CPU).",
    )
    bench.add_argument(
        "--device",
        type=_device,
        default=None,
        help="cpu, cuda, cuda:N, mps (default: cuda if present, else cpu)",
    )
    choice_flag(
        bench,
        "--dtype",
        dest="dtype",
        choices=["float16", "bfloat16", "float32"],
        default=None,
        help="precision, float16 on CUDA and float32 on a CPU if not given",
    )
    number_flag(
        bench,
        "--size",
        dest="size",
        low=64,
        high=4096,
        multiple_of=64,
        default=None,
        help="image side in pixels (default: 1024 on CUDA, 128 on a CPU)",
    )
    number_flag(
        bench, "--repeat", dest="repeat", low=1, high=1000, default=5, help="timed runs per variant"
    )
    bench.add_argument(
        "--stages",
        type=_stages,
        default=None,
        help=f"comma-separated, of {', '.join(BENCH_STAGES)} "
        "(default: all but demo, cluster, hires and compile on CUDA; decoder and transport on a "
        "CPU)",
    )
    bench.add_argument(
        "--json", type=_new_file, metavar="FILE", help="also write the report as JSON"
    )
    bench.set_defaults(command=_bench)


# Value types for add_argument(type=...): argparse turns their ArgumentTypeError into
# "argument --flag: <message>" (both spellings of the flag: they take no option string).


def _device(text: str) -> str:
    if not _DEVICE.fullmatch(text):
        raise argparse.ArgumentTypeError(f"{text!r} is not a device: auto, cpu, cuda, cuda:N, mps")
    return text


def _folder(text: str) -> Path:
    path = Path(text)
    if not path.is_dir():
        what = "is a file, not a folder" if path.exists() else "does not exist"
        raise argparse.ArgumentTypeError(f"{text} {what}")
    return path


def _new_file(text: str) -> Path:
    path = Path(text)
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{text} is a folder, not a file")
    if not path.parent.is_dir():
        raise argparse.ArgumentTypeError(f"{text}: its folder {path.parent} does not exist")
    return path


def _stages(text: str) -> tuple[str, ...]:
    stages = tuple(stage.strip() for stage in text.split(",") if stage.strip())
    unknown = [stage for stage in stages if stage not in BENCH_STAGES]
    if unknown or not stages:
        raise argparse.ArgumentTypeError(
            f"unknown stage {unknown[0] if unknown else text!r}; known: {', '.join(BENCH_STAGES)}"
        )
    return stages


# -- generate ------------------------------------------------------------------------


def _generate(args: argparse.Namespace) -> int:
    # 1. What the flags say together, and the files they name: no model needed.
    parameters = _parameters_from(args)
    parameters = _split_defaults(args, _flux_defaults(args, _few_step_defaults(args, parameters)))
    label = _labeller(args)
    sources = _input_paths(args)
    family = METHOD_SPECS[parameters.method].family
    lora_files = _lora_files(args, family)
    try:
        check_parameters(parameters, label)
        check_input_roles(parameters.method, sources, label)
    except InvalidParameter as error:
        raise UsageError(str(error)) from None
    demo_family = None if args.demo in (None, "auto") else DEMO_FAMILIES[args.demo]
    if demo_family is not None and demo_family != family:
        raise UsageError(
            f"--demo {args.demo}: {parameters.method.value} runs on {family.value} models; "
            f"give --demo {family.value}, or a method of the {demo_family.value} family"
        )
    inputs = {
        role: _read_rgba(flag, path, mask=role is LayerRole.MASK)
        for role, (flag, path) in sources.items()
    }
    if LayerRole.MASK in inputs:
        height, width = inputs[LayerRole.MASK].shape[:2]
        try:
            check_mask_size(parameters, width, height, label)
        except InvalidParameter as error:
            raise UsageError(str(error)) from None
    try:
        check_output_folder(args.output, _output_bytes(parameters))
    except OutputError as error:
        raise UsageError(f"{typed_flag(args, 'output', '--output')}: {error}") from None

    # 2. The models, then the work.
    with importing_libraries():
        from .methods.registry import check_request, run_method
        from .methods.request import GenerationRequest
        from .store.model_sets import open_model_set

    request = GenerationRequest(
        **{name: getattr(parameters, name) for name in PARAMETERS}, inputs=inputs
    )
    check_request(request)
    _quiet_libraries()
    started = time.perf_counter()
    models = open_model_set(
        base=None if args.demo else (args.base or DEFAULT_BASES[family]),
        demo=args.demo is not None,
        demo_family=family,
        models_dir=args.models_dir,
        offline=args.offline,
        device=args.device,
        dtype=args.dtype,
        lora_files=lora_files,
        family=family,
        demo_lookalike=DEMO_LOOKALIKES.get(args.demo or ""),
    )
    if models.is_demo:
        _say("using the demo model set: tiny random models, so the pictures are noise")
    if models.warning is not None:
        _say(models.warning)
    models.tiling = _tiling(args)
    check_request(request, models)
    progress = _ProgressBar()
    result = run_method(request, models, progress)
    progress.finish()
    written = write_files(args.output, _result_files(request, result, models.base.name))
    for path in written:
        print(path)
    seconds = time.perf_counter() - started
    if request.method is Method.SPLIT_LAYERS:
        _say(f"{len(result.images)} split(s) into {request.layers} layers in {seconds:.1f} s")
    else:
        _say(f"{len(result.images)} image(s) in {seconds:.1f} s")
    return EXIT_OK


def _tiling(args: argparse.Namespace) -> Any:
    """`--tile-above` and `--tile-size` as the model set's `Tiling`."""
    from .layerdiffuse import Tiling

    return Tiling(above_pixels=args.tile_above, tile=args.tile_size)


def _parameters_from(args: argparse.Namespace) -> GenerationParameters:
    texts = {role: getattr(args, dest) for role, (_, dest) in _ROLE_FLAGS.items()}
    return GenerationParameters(
        method=Method(args.method),
        prompt=args.prompt,
        negative_prompt=args.negative_prompt,
        layer_prompts={role: text for role, text in texts.items() if text},
        width=args.width,
        height=args.height,
        fit_to_native=args.fit_to_native,
        resize_mode=ResizeMode(args.resize_mode),
        seed=args.seed,
        steps=args.steps,
        cfg_scale=float(args.cfg_scale),
        sampler=Sampler(args.sampler),
        batch_size=args.batch_size,
        batch_count=args.batch_count,
        weight=float(args.weight),
        ending_step=float(args.ending_step),
        denoise_strength=float(args.denoise_strength),
        noise_source=NoiseSource(args.noise_source),
        second_prompt=args.second_prompt,
        second_negative_prompt=args.second_negative_prompt,
        second_sampler=None if args.second_sampler is None else Sampler(args.second_sampler),
        second_ending_step=None
        if args.second_ending_step is None
        else float(args.second_ending_step),
        hires=Hires(args.hires),
        hires_strength=float(args.hires_strength),
        lora=_lora_name(args.lora),
        lora_weight=float(args.lora_weight),
        layers=args.layers,
    )


FLUX_GUIDANCE = 3.5
"""FLUX.1-dev's usual embedded guidance, `--cfg`'s value for FLUX unless typed."""


def _flux_defaults(
    args: argparse.Namespace, parameters: GenerationParameters
) -> GenerationParameters:
    """FLUX's guidance for `--cfg` where it was not typed (SD's 7 is far too strong)."""
    if METHOD_SPECS[parameters.method].family is not ModelFamily.FLUX:
        return parameters
    if typed_flag(args, "cfg_scale", "") == "":
        parameters = dataclasses.replace(parameters, cfg_scale=FLUX_GUIDANCE)
    if args.demo is None:
        _say("FLUX.1-dev is under a non-commercial licence; LayerDiffuse-Flux is AFL-3.0")
    return parameters


SPLIT_STEPS = 50
SPLIT_CFG = 4.0
"""Qwen-Image-Layered's card settings, `--steps` and `--cfg` for split_layers unless typed."""


def _split_defaults(
    args: argparse.Namespace, parameters: GenerationParameters
) -> GenerationParameters:
    """The model card's steps and true CFG for a split where they were not typed."""
    if parameters.method is not Method.SPLIT_LAYERS:
        return parameters
    card = {"steps": SPLIT_STEPS, "cfg_scale": SPLIT_CFG}
    kept = {name: value for name, value in card.items() if typed_flag(args, name, "") == ""}
    return dataclasses.replace(parameters, **kept)


def _lora_name(value: str | None) -> str | None:
    """A LoRA flag's name: a file's stem, or the few-step LoRA's name as given."""
    if value is None or not value.endswith(".safetensors"):
        return value
    return Path(value).stem


def _lora_files(args: argparse.Namespace, family: ModelFamily) -> dict[str, Path]:
    """`--lora FILE` as the model set's extra LoRA file, or a few-step LoRA's name of the
    method's family; both checked before any model loads."""
    from .store.catalogue import FEW_STEP_LORAS

    if args.lora is None:
        return {}
    flag = typed_flag(args, "lora", "--lora")
    if not args.lora.endswith(".safetensors"):
        entry = FEW_STEP_LORAS.get(args.lora)
        names = ", ".join(n for n, e in FEW_STEP_LORAS.items() if e.family is family)
        if entry is None:
            raise UsageError(
                f"{flag}: {args.lora!r} is neither a few-step LoRA of {family.value} "
                f"({names}) nor a .safetensors file"
            )
        if entry.family is not family:
            raise UsageError(
                f"{flag}: {args.lora} is a {entry.family.value} LoRA, and the method runs on "
                f"{family.value} models ({names})"
            )
        return {}
    path = Path(args.lora)
    if not path.is_file():
        raise UsageError(f"{flag}: no such file: {path}")
    return {path.stem: path}


def _few_step_defaults(
    args: argparse.Namespace, parameters: GenerationParameters
) -> GenerationParameters:
    """A few-step LoRA named by `--lora` brings its sampler, steps, CFG and weight, except
    where a flag for them was typed."""
    from .store.catalogue import FEW_STEP_LORAS

    entry = FEW_STEP_LORAS.get(parameters.lora or "")
    if entry is None or entry.few_step is None:
        return parameters
    settings = entry.few_step
    advised = {
        "sampler": settings.sampler,
        "steps": settings.steps,
        "cfg_scale": settings.cfg_scale,
        "lora_weight": settings.weight,
    }
    kept = {name: value for name, value in advised.items() if typed_flag(args, name, "") == ""}
    if entry.licence is not None:
        _say(f"{entry.name}: {entry.licence}")
    return dataclasses.replace(parameters, **kept)


def _labeller(args: argparse.Namespace) -> Any:
    """Names a request field (or `inputs.<role>`, `layer_prompts.<role>`) by its flag."""
    flags = dict(_FLAGS)
    for role, (image, prompt) in _ROLE_FLAGS.items():
        flags[f"inputs.{role.value}"] = f"--{image}"
        flags[f"layer_prompts.{role.value}"] = f"--{prompt.replace('_', '-')}"
    if args.init is not None:
        flags["inputs.foreground"] = "--init"

    def label(path: str) -> str:
        flag = flags.get(path, path)
        return typed_flag(args, path, flag)

    return label


def _input_paths(args: argparse.Namespace) -> dict[LayerRole, tuple[str, Path]]:
    if args.init is not None and args.foreground is not None:
        raise UsageError("--init: give --init or --foreground, not both (both are the foreground)")
    paths = {}
    if args.init is not None:
        paths[LayerRole.FOREGROUND] = ("--init", args.init)
    for role, (dest, _) in _ROLE_FLAGS.items():
        path = getattr(args, dest)
        if path is not None:
            paths[role] = (f"--{dest}", path)
    if args.mask is not None:
        paths[LayerRole.MASK] = (typed_flag(args, "mask", "--mask"), args.mask)
    if args.image is not None:
        paths[LayerRole.LAYER] = (typed_flag(args, "image", "--image"), args.image)
    return paths


def _read_rgba(flag: str, path: Path, mask: bool = False) -> np.ndarray:
    """An input PNG as (H, W, 4) uint8 straight RGBA; with `mask`, an RGBA image whose
    alpha is the selection: the PNG's alpha, or for an image without one its luminance."""
    import numpy as np
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            width, height = image.size
            if not (1 <= width <= MAX_INPUT_SIDE and 1 <= height <= MAX_INPUT_SIDE):
                raise UsageError(
                    f"{flag}: {path} is {width}x{height}, sides must be 1..{MAX_INPUT_SIDE}"
                )
            if not mask:
                return np.asarray(image.convert("RGBA")).copy()
            has_alpha = image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info
            selection = image.convert("RGBA").getchannel("A") if has_alpha else image.convert("L")
            rgba = np.zeros((height, width, 4), dtype=np.uint8)
            rgba[..., 3] = np.asarray(selection)
            return rgba
    except (OSError, UnidentifiedImageError) as error:
        raise UsageError(f"{flag}: cannot read {path}: {error}") from None


def _output_bytes(parameters: GenerationParameters) -> int:
    """At most what a job's files take: raw pixels (noise does not compress) and overhead."""
    pixels = parameters.width * parameters.height
    per_result = 0
    for role in METHOD_SPECS[parameters.method].outputs:
        count = parameters.layers if role is LayerRole.LAYER else 1
        per_result += count * (4 * pixels + FILE_OVERHEAD_BYTES)
        if role in _TRANSPARENT_ROLES:
            per_result += count * (3 * pixels + FILE_OVERHEAD_BYTES)
    return per_result * parameters.batch_size * parameters.batch_count


def _result_files(
    request: GenerationRequest, result: GenerationResult, model_name: str
) -> list[OutputFile]:
    """Every file of the job: per result, each layer and each transparent layer's preview."""
    from PIL.PngImagePlugin import PngInfo

    from .methods.infotext import format_parameters

    spec = METHOD_SPECS[request.method]
    files = []
    for layers, seed in zip(result.images, result.seeds, strict=True):
        info = PngInfo()
        info.add_text(
            "parameters", format_parameters(request, seed, model_name, result.generation_size)
        )
        for role in spec.outputs:
            named = [(role.value, layers[role])]
            if role is LayerRole.LAYER:  # a split: one stack, bottom first
                named = [(f"layer{i + 1}", image) for i, image in enumerate(layers[role])]
            for name, image in named:
                stem = f"{request.method.value}-{seed}-{name}"
                files.append(OutputFile(stem, ".png", _png_writer(image, info)))
                if role in _TRANSPARENT_ROLES:
                    files.append(OutputFile(stem, "-preview.png", _preview_writer(image)))
    return files


def _png_writer(rgba: np.ndarray, info: Any) -> Any:
    from PIL import Image

    def write(stream: Any) -> None:
        Image.fromarray(rgba, "RGBA").save(stream, format="PNG", pnginfo=info, compress_level=4)

    return write


def _preview_writer(rgba: np.ndarray) -> Any:
    from PIL import Image

    from .layerdiffuse import checkerboard_preview

    def write(stream: Any) -> None:
        preview = checkerboard_preview(rgba)
        Image.fromarray(preview, "RGB").save(stream, format="PNG", compress_level=4)

    return write


class _ProgressBar:
    """A one-line progress bar on stderr."""

    def __init__(self, width: int = 30) -> None:
        self.width = width
        self.started = time.perf_counter()
        self.shown = False

    def __call__(self, step: int, total: int, latents: torch.Tensor) -> None:
        filled = self.width * step // max(total, 1)
        elapsed = time.perf_counter() - self.started
        bar = "#" * filled + "-" * (self.width - filled)
        sys.stderr.write(f"\r[{bar}] {step}/{total} steps  {elapsed:5.1f} s")
        sys.stderr.flush()
        self.shown = True

    def finish(self) -> None:
        if self.shown:
            sys.stderr.write("\n")


def _quiet_libraries() -> None:
    """No per-file progress bars or casting notes from diffusers/transformers in our output."""
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    diffusers_logging.disable_progress_bar()
    diffusers_logging.set_verbosity_error()
    transformers_logging.disable_progress_bar()
    transformers_logging.set_verbosity_error()


# -- serve ---------------------------------------------------------------------------


def _warms_up(choice: str, models: Any) -> bool:
    """`--warm-up`: auto is on for a real model on a GPU (where the first job pays for
    kernel selection and loading), off for the demo set and the CPU."""
    if choice != "auto":
        return choice == "on"
    return not models.is_demo and models.device.type != "cpu"


def _serve(args: argparse.Namespace) -> int:
    config = ServerConfig(
        host=args.host,
        port=args.port,
        token=args.token,
        allowed_origins=tuple(args.allow_origin),
        demo=args.demo is not None,
        demo_family=ModelFamily.SD15 if args.demo in (None, "auto") else DEMO_FAMILIES[args.demo],
        base=None if args.demo else (args.base or DEFAULT_BASES[ModelFamily.SD15]),
        models_dir=args.models_dir,
        offline=args.offline,
        device=args.device,
        dtype=args.dtype,
    ).with_environment()
    # Every refusal before the models load (seconds to minutes).
    try:
        config.check()
    except ValueError as error:
        raise UsageError(str(error)) from None
    cluster_config = _cluster_config(args)
    if cluster_config is not None and args.compile:
        raise UsageError(
            "--compile: a cluster's replicas load their own models; not with --cluster"
        )
    if cluster_config is not None and importlib.util.find_spec("ray") is None:
        _say(f"error: --cluster needs Ray Serve: {CLUSTER_INSTALL}")
        return EXIT_NO_START
    _check_port_free(config.host, config.port)

    import asyncio
    import signal

    with importing_libraries():
        from .server.serve import run_server

    _quiet_libraries()
    cluster = None
    if cluster_config is None:
        from .store.model_sets import lora_folder, open_model_set

        models = open_model_set(
            base=config.base,
            demo=config.demo,
            demo_family=config.demo_family,
            models_dir=config.models_dir,
            offline=config.offline,
            device=config.device,
            dtype=config.dtype,
            lora_files=lora_folder(args.lora_dir) if args.lora_dir else None,
            demo_lookalike=DEMO_LOOKALIKES.get(args.demo or ""),
        )
        models.tiling = _tiling(args)
        if models.warning is not None:
            _say(models.warning)
        if args.compile:
            from .methods.compiled import compile_unet

            try:
                compile_unet(models)
            except ValueError as error:
                _say(f"error: --compile: {error}")
                return EXIT_NO_START
        executor = None
        demo = models.is_demo
    else:
        from .cluster.cluster import ClusterError

        try:
            cluster = _open_cluster(config, cluster_config)
        except ClusterError as error:
            _say(f"error: {error}")
            return EXIT_NO_START
        models, executor, demo = None, cluster.executor(), cluster.replica.model.demo
    if demo:
        _say("serving the demo model set: tiny random models, so the pictures are noise")
    if models is not None and (args.compile or _warms_up(args.warm_up, models)):
        from .methods.warmup import warm_up

        _say(f"warmed up in {warm_up(models):.1f} s (a first transparent layer, thrown away)")

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        signals = 0

        def on_signal() -> None:
            nonlocal signals
            signals += 1
            if signals > 1:  # a second Ctrl-C does not wait for the running job
                raise SystemExit(EXIT_FAILED)
            _say("stopping: dropping queued jobs, interrupting the running one")
            stop.set()

        for number in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(number, on_signal)

        def listening(port: int) -> None:
            print(f"listening on ws://{config.host}:{port}", flush=True)

        await run_server(config, models, stop, listening, executor=executor)

    try:
        asyncio.run(main())
    except OSError as error:  # taken while the models loaded
        _say(f"error: cannot listen on {config.host}:{config.port}: {_os_reason(error)}")
        return EXIT_NO_START
    finally:
        if cluster is not None:
            cluster.close()
    return EXIT_OK


CLUSTER_INSTALL = "pip install -e '.[cluster]' (or pip install 'krita-layerdiffuse[cluster]')"


def _cluster_config(args: argparse.Namespace) -> ClusterConfig | None:
    """The cluster flags of `serve`, or None without --cluster (then none may be given)."""
    from .cluster.config import ClusterConfig  # no Ray in it

    flags = {"--gpus": args.gpus, "--jobs-per-client": args.jobs_per_client}
    flags["--cluster-queue"] = args.cluster_queue
    if args.cluster is None:
        given = [flag for flag, value in flags.items() if value is not None]
        if given:
            raise UsageError(f"{given[0]} needs --cluster (docs/cluster.md)")
        return None
    defaults = ClusterConfig()
    return ClusterConfig(
        address=args.cluster,
        gpus=args.gpus,
        jobs_per_client=args.jobs_per_client,
        max_waiting=defaults.max_waiting if args.cluster_queue is None else args.cluster_queue,
    )


def _open_cluster(config: ServerConfig, cluster_config: ClusterConfig) -> Cluster:
    """Connect to (or start) Ray, deploy the model on its GPUs; the lines say what happens."""
    from .cluster.cluster import open_cluster
    from .cluster.config import ModelOptions

    options = ModelOptions(
        base=config.base,
        demo=config.demo,
        demo_family=config.demo_family,
        models_dir=config.models_dir,
        offline=config.offline,
        device=config.device,
        dtype=config.dtype,
    )
    where = "a one-node Ray on 127.0.0.1" if cluster_config.is_local else cluster_config.address
    _say(f"starting the GPU workers on {where}: one per GPU, each loading the model")
    cluster = open_cluster(cluster_config, options, config.preview_side)
    if not logging.getLogger().isEnabledFor(logging.INFO):
        for name in ("ray", "ray.serve"):  # Serve logs every replica event at INFO
            logging.getLogger(name).setLevel(logging.WARNING)
    model = cluster.replica.model
    _say(f"{cluster.gpus} GPU worker(s) ready with {model.name} ({model.family.value})")
    return cluster


def _cluster_status(args: argparse.Namespace) -> int:
    if importlib.util.find_spec("ray") is None:
        _say(f"error: cluster status needs Ray Serve: {CLUSTER_INSTALL}")
        return EXIT_NO_START
    from .cluster.cluster import ClusterError
    from .cluster.status import read_status

    try:
        status = read_status(args.address)
    except ClusterError as error:
        _say(f"error: {error}")
        return EXIT_FAILED
    print(status.describe())
    return EXIT_OK


def _check_port_free(host: str, port: int) -> None:
    """Bind every address `host` resolves to as the server will, and let go at once.

    The server binds again once its models are loaded; a port taken in between still
    fails then, with the same line.

    Raises:
        UsageError: the host does not resolve, or an address is in use or refused.
    """
    try:
        addresses = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as error:
        raise UsageError(f"--host {host}: {_os_reason(error)}") from None
    for family, kind, proto, _, address in dict.fromkeys(addresses):
        with socket.socket(family, kind, proto) as probe:
            if os.name == "posix":  # as asyncio's create_server does
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                probe.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                probe.bind(address)
            except OSError as error:
                raise UsageError(f"cannot listen on {host}:{port}: {_os_reason(error)}") from None


def _os_reason(error: OSError) -> str:
    return (error.strerror or str(error)).lower()


# -- models --------------------------------------------------------------------------


def _store(args: argparse.Namespace) -> ModelStore:
    from .store.download import ModelStore

    return ModelStore(models_dir=args.models_dir, offline=args.offline)


def _check_names(names: list[str]) -> None:
    from .store.catalogue import CATALOGUE, find_released_file

    for name in names:
        try:
            find_released_file(name, CATALOGUE)
        except ModelNotFound as error:
            raise UsageError(f"NAME: {error}") from None


def _models_list(args: argparse.Namespace) -> int:
    from huggingface_hub import constants as hub_constants
    from huggingface_hub.file_download import repo_folder_name

    store = _store(args)
    cache = store.cache_dir or Path(hub_constants.HF_HUB_CACHE)
    for entry, path in store.list():
        if path is not None:
            where = str(path)
        else:
            folder = cache / repo_folder_name(repo_id=entry.repo_id, repo_type="model")
            where = f"missing: a download goes to {folder}"
            if store.models_dir is not None:
                where = f"missing from {store.models_dir}; a download goes to {folder}"
        print(f"{entry.summary()}  {where}")
        print(f"    {entry.description}")
    return EXIT_OK


def _models_download(args: argparse.Namespace) -> int:
    _check_names(args.names)
    store = _store(args)
    # Without names, the LayerDiffuse files; a few-step LoRA only when named (GBs each).
    names = args.names or [
        entry.name
        for entry in store.catalogue.values()
        if (args.family is None or entry.family.value == args.family) and entry.few_step is None
    ]
    for name in names:
        entry = store.entry(name)
        progress = _ByteProgress(entry.name)
        path = store.fetch(entry.name, progress)
        progress.finish()
        print(f"{entry.name}  ok  {path}")
    return EXIT_OK


def _models_verify(args: argparse.Namespace) -> int:
    _check_names(args.names)
    store = _store(args)
    names = args.names or [entry.name for entry, path in store.list() if path is not None]
    if not names:
        _say("no released files are on this machine yet: run `layerdiffuse models download`")
        return EXIT_OK
    failed = False
    for name in names:
        result = store.verify(name)
        print(result.describe())
        failed |= result.status.value in ("missing", "mismatch")
    return EXIT_FAILED if failed else EXIT_OK


class _ByteProgress:
    def __init__(self, name: str) -> None:
        self.name = name
        self.shown = False

    def __call__(self, done: int, total: int) -> None:
        percent = f"{100 * done / total:5.1f} %" if total else ""
        sys.stderr.write(f"\r{self.name}: {done / 1e6:8.1f} MB {percent}")
        sys.stderr.flush()
        self.shown = True

    def finish(self) -> None:
        if self.shown:
            sys.stderr.write("\n")


# -- bench ---------------------------------------------------------------------------


def _bench(args: argparse.Namespace) -> int:
    with importing_libraries():
        from .bench import run_bench

    _quiet_libraries()
    report = run_bench(
        device=args.device, dtype=args.dtype, size=args.size, repeat=args.repeat, stages=args.stages
    )
    print(report.table())
    if args.json is not None:
        report.write_json(args.json)
    return EXIT_OK


def _say(message: str) -> None:
    print(message, file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
