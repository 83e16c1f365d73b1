"""The `layerdiffuse` command: generate, models, bench.

Exit codes: 0 done, 1 failed, 2 usage error, 3 could not start (a model is missing
or unusable). Expected failures print one readable line, no traceback. torch is
imported only inside the commands that need it, so `--help` is instant.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from protocol import METHOD_SPECS, LayerRole, Method, ModelFamily, ResizeMode, Sampler

from .config import DEFAULT_HOST, DEFAULT_PORT, TOKEN_ENVIRONMENT, ServerConfig
from .errors import BackendError, InvalidRequest, ModelError

if TYPE_CHECKING:
    import numpy as np
    import torch

    from .methods.request import GenerationRequest, GenerationResult
    from .store.download import ModelStore

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_NO_START = 0, 1, 2, 3
DEFAULT_BASES = {
    ModelFamily.SD15: "stable-diffusion-v1-5/stable-diffusion-v1-5",
    ModelFamily.SDXL: "stabilityai/stable-diffusion-xl-base-1.0",
}
DEFAULT_NEGATIVE = "bad, ugly"

log = logging.getLogger("backend.cli")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code."""
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:
        return EXIT_OK if exit_.code in (0, None) else EXIT_USAGE
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        return int(args.command(args))
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


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="layerdiffuse",
        description="Transparent-layer diffusion (LayerDiffuse) on a local GPU, for Krita.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log what happens")
    commands = parser.add_subparsers(title="commands", required=True, metavar="COMMAND")

    generate = commands.add_parser(
        "generate",
        help="generate images to PNG files",
        description="Generate transparent layers and write them as RGBA PNGs with a "
        "checkerboard preview, the parameters stored in each PNG (A1111 style).",
    )
    _add_model_options(generate)
    method_names = [method.value for method in Method]
    generate.add_argument("--method", choices=method_names, default=Method.SD15_TRANSPARENT.value)
    generate.add_argument("--prompt", "-p", default="", help="what to generate")
    generate.add_argument("--negative-prompt", "-n", default=DEFAULT_NEGATIVE)
    generate.add_argument("--seed", type=int, default=12345, help="first seed; image i uses seed+i")
    generate.add_argument("--steps", type=int, default=20)
    generate.add_argument("--cfg", type=float, default=7.0, help="classifier-free guidance scale")
    generate.add_argument(
        "--sampler", choices=[s.value for s in Sampler], default=Sampler.DPMPP_2M_KARRAS.value
    )
    generate.add_argument("--width", "-W", type=int, default=512)
    generate.add_argument("--height", "-H", type=int, default=512)
    generate.add_argument(
        "--fit-to-native",
        action="store_true",
        help="generate near the model's native area and resize to --width/--height",
    )
    generate.add_argument(
        "--resize-mode",
        choices=[m.value for m in ResizeMode],
        default=ResizeMode.CROP_AND_RESIZE.value,
    )
    generate.add_argument("--batch-size", type=int, default=1, help="images diffused together")
    generate.add_argument("--batch-count", type=int, default=1, help="batches one after another")
    generate.add_argument("--weight", type=float, default=1.0, help="layer model weight (SDXL)")
    generate.add_argument(
        "--stop-at", type=float, default=1.0, help="fraction of the steps that use the layer model"
    )
    generate.add_argument(
        "--init", type=Path, help="a transparent PNG to rework (transparent img2img)"
    )
    generate.add_argument(
        "--foreground", type=Path, help="foreground layer PNG (sd15_fg2bg's condition)"
    )
    generate.add_argument(
        "--background", type=Path, help="background layer PNG (sd15_bg2fg's condition)"
    )
    generate.add_argument(
        "--blend", type=Path, help="blended image PNG (sdxl_fgble2bg / sdxl_bgble2fg condition)"
    )
    generate.add_argument("--fg-prompt", default="", help="foreground layer prompt (SD1.5 layers)")
    generate.add_argument("--bg-prompt", default="", help="background layer prompt (SD1.5 layers)")
    generate.add_argument("--blend-prompt", default="", help="blended image prompt (SD1.5 layers)")
    generate.add_argument("--denoise", type=float, default=0.7, help="img2img denoising strength")
    generate.add_argument("--output", "-o", type=Path, default=Path("outputs"))
    generate.set_defaults(command=_generate)

    server = commands.add_parser(
        "serve",
        help="run the websocket backend the Krita plugin talks to",
        description="Serve generation jobs over a websocket (docs/protocol.md). Binds "
        "127.0.0.1 by default; any other address needs a token.",
    )
    _add_model_options(server)
    server.add_argument(
        "--host", default=DEFAULT_HOST, help=f"address to bind (default {DEFAULT_HOST})"
    )
    server.add_argument(
        "--port", type=int, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT}; 0 picks one)"
    )
    server.add_argument(
        "--token", help=f"secret clients must send (default: ${TOKEN_ENVIRONMENT} if set)"
    )
    server.add_argument(
        "--allow-origin",
        action="append",
        default=[],
        metavar="ORIGIN",
        help="a browser origin allowed to connect (browsers are refused otherwise)",
    )
    server.set_defaults(command=_serve)

    models = commands.add_parser("models", help="list, download or verify the LayerDiffuse files")
    # The options belong to each action, so they go after it: `models list --offline`.
    store_options = argparse.ArgumentParser(add_help=False)
    store_options.add_argument("--models-dir", type=Path, help="a folder with released files")
    store_options.add_argument(
        "--offline", action="store_true", default=None, help="never use the network"
    )
    actions = models.add_subparsers(title="actions", required=True, metavar="ACTION")
    listing = actions.add_parser(
        "list", parents=[store_options], help="every released file and where it is"
    )
    listing.set_defaults(command=_models_list)
    download = actions.add_parser(
        "download", parents=[store_options], help="download files (checked by sha256)"
    )
    download.add_argument("names", nargs="*", help="file names; none means all")
    download.add_argument("--family", choices=["sd15", "sdxl"], help="only this family's files")
    download.set_defaults(command=_models_download)
    verify = actions.add_parser(
        "verify", parents=[store_options], help="re-hash files and compare with the catalogue"
    )
    verify.add_argument("names", nargs="*", help="file names; none means all present")
    verify.set_defaults(command=_models_verify)

    bench = commands.add_parser(
        "bench",
        help="time each stage, ours beside the reference's way",
        description="Per-stage timings with random weights at real size (or small on a CPU).",
    )
    bench.add_argument("--device", default=None, help="cuda, cpu, … (default: CUDA if present)")
    bench.add_argument("--dtype", choices=["float16", "bfloat16", "float32"], default=None)
    bench.add_argument("--size", type=int, default=None, help="image side (default 1024 on CUDA)")
    bench.add_argument("--repeat", type=int, default=5, help="timed runs per variant")
    bench.add_argument(
        "--stages",
        default=None,
        help="comma-separated: decoder, sd15, sdxl, methods, sdxl_methods, transport "
        "(default: all on CUDA; decoder and transport on a CPU)",
    )
    bench.add_argument("--json", type=Path, help="also write the report as JSON")
    bench.set_defaults(command=_bench)
    return parser


def _add_model_options(parser: argparse.ArgumentParser) -> None:
    source = parser.add_mutually_exclusive_group()
    source.add_argument(
        "--demo",
        nargs="?",
        const="auto",
        choices=["auto", "sd15", "sdxl"],
        help="tiny random models shaped like SD1.5 or SDXL, no download (pictures are "
        "noise); the family defaults to the method's",
    )
    source.add_argument(
        "--base",
        help="base model: a diffusers folder, a hub repo id or a .safetensors checkpoint "
        "(default: the SD1.5 or SDXL base model on the hub, by the method's family)",
    )
    parser.add_argument("--models-dir", type=Path, help="a folder with released LayerDiffuse files")
    parser.add_argument(
        "--offline", action="store_true", default=None, help="never use the network"
    )
    parser.add_argument("--device", default="auto", help="cuda, cpu, mps (default: auto)")
    parser.add_argument(
        "--dtype", choices=["auto", "float16", "bfloat16", "float32"], default="auto"
    )


def _generate(args: argparse.Namespace) -> int:
    from .methods.registry import check_request, run_method
    from .store.model_sets import open_model_set

    request = _request_from(args)
    check_request(request)  # before any model is looked for, let alone downloaded

    _quiet_libraries()
    started = time.perf_counter()
    family = METHOD_SPECS[request.method].family
    models = open_model_set(
        base=None if args.demo else (args.base or DEFAULT_BASES[family]),
        demo=args.demo is not None,
        demo_family=family if args.demo in (None, "auto") else ModelFamily(args.demo),
        models_dir=args.models_dir,
        offline=args.offline,
        device=args.device,
        dtype=args.dtype,
    )
    if models.is_demo:
        _say("using the demo model set: tiny random models, so the pictures are noise")
    check_request(request, models)
    progress = _ProgressBar()
    result = run_method(request, models, progress)
    progress.finish()
    written = _write_results(args.output, request, result, models.base.name)
    for path in written:
        print(path)
    _say(f"{len(result.images)} image(s) in {time.perf_counter() - started:.1f} s")
    return EXIT_OK


def _serve(args: argparse.Namespace) -> int:
    import asyncio
    import signal

    from .server.serve import run_server
    from .store.model_sets import open_model_set

    config = ServerConfig(
        host=args.host,
        port=args.port,
        token=args.token,
        allowed_origins=tuple(args.allow_origin),
        demo=args.demo is not None,
        demo_family=ModelFamily.SD15 if args.demo in (None, "auto") else ModelFamily(args.demo),
        base=None if args.demo else (args.base or DEFAULT_BASES[ModelFamily.SD15]),
        models_dir=args.models_dir,
        offline=args.offline,
        device=args.device,
        dtype=args.dtype,
    ).with_environment()
    try:
        config.check()
    except ValueError as error:
        _say(f"error: {error}")
        return EXIT_NO_START
    _quiet_libraries()
    models = open_model_set(
        base=config.base,
        demo=config.demo,
        demo_family=config.demo_family,
        models_dir=config.models_dir,
        offline=config.offline,
        device=config.device,
        dtype=config.dtype,
    )
    if models.is_demo:
        _say("serving the demo model set: tiny random models, so the pictures are noise")

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

        await run_server(config, models, stop, listening)

    try:
        asyncio.run(main())
    except OSError as error:
        _say(f"error: cannot listen on {config.host}:{config.port}: {error.strerror or error}")
        return EXIT_NO_START
    return EXIT_OK


def _request_from(args: argparse.Namespace) -> GenerationRequest:
    from .methods.request import GenerationRequest

    if args.init is not None and args.foreground is not None:
        raise InvalidRequest(
            "init", "give --init or --foreground, not both (both are the foreground)"
        )
    inputs: dict[LayerRole, np.ndarray] = {}
    for option, role, path in (
        ("init", LayerRole.FOREGROUND, args.init),
        ("foreground", LayerRole.FOREGROUND, args.foreground),
        ("background", LayerRole.BACKGROUND, args.background),
        ("blend", LayerRole.BLENDED, args.blend),
    ):
        if path is not None:
            inputs[role] = _read_rgba(option, path)
    texts = {
        LayerRole.FOREGROUND: args.fg_prompt,
        LayerRole.BACKGROUND: args.bg_prompt,
        LayerRole.BLENDED: args.blend_prompt,
    }
    return GenerationRequest(
        method=Method(args.method),
        prompt=args.prompt,
        negative_prompt=args.negative_prompt,
        layer_prompts={role: text for role, text in texts.items() if text},
        inputs=inputs,
        width=args.width,
        height=args.height,
        fit_to_native=args.fit_to_native,
        resize_mode=ResizeMode(args.resize_mode),
        seed=args.seed,
        steps=args.steps,
        cfg_scale=args.cfg,
        sampler=Sampler(args.sampler),
        batch_size=args.batch_size,
        batch_count=args.batch_count,
        weight=args.weight,
        ending_step=args.stop_at,
        denoise_strength=args.denoise,
    )


def _read_rgba(option: str, path: Path) -> np.ndarray:
    import numpy as np
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            return np.asarray(image.convert("RGBA")).copy()
    except (OSError, UnidentifiedImageError) as error:
        raise InvalidRequest(option, f"cannot read {path}: {error}") from error


def _write_results(
    folder: Path, request: GenerationRequest, result: GenerationResult, model_name: str
) -> list[Path]:
    from PIL import Image
    from PIL.PngImagePlugin import PngInfo

    from .layerdiffuse import checkerboard_preview
    from .methods.infotext import format_parameters

    folder.mkdir(parents=True, exist_ok=True)
    spec = METHOD_SPECS[request.method]
    written = []
    for layers, seed in zip(result.images, result.seeds, strict=True):
        info = PngInfo()
        info.add_text(
            "parameters", format_parameters(request, seed, model_name, result.generation_size)
        )
        for role in spec.outputs:
            rgba = layers[role]
            stem = f"{request.method.value}-{seed}-{role.value}"
            path = _free_path(folder / f"{stem}.png")
            Image.fromarray(rgba, "RGBA").save(path, pnginfo=info, compress_level=4)
            written.append(path)
            if (rgba[..., 3] < 255).any():
                preview = path.with_name(path.stem + "-preview.png")
                Image.fromarray(checkerboard_preview(rgba), "RGB").save(preview, compress_level=4)
                written.append(preview)
    return written


def _free_path(path: Path) -> Path:
    """`path`, or `name-2.png`, `name-3.png`, … if it exists: never overwrite a result."""
    candidate, number = path, 2
    while candidate.exists():
        candidate = path.with_name(f"{path.stem}-{number}{path.suffix}")
        number += 1
    return candidate


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


def _store(args: argparse.Namespace) -> ModelStore:
    from .store.download import ModelStore

    return ModelStore(models_dir=args.models_dir, offline=args.offline)


def _models_list(args: argparse.Namespace) -> int:
    store = _store(args)
    for entry, path in store.list():
        where = str(path) if path is not None else "not downloaded"
        print(f"{entry.summary()}  {where}")
        print(f"    {entry.description}")
    return EXIT_OK


def _models_download(args: argparse.Namespace) -> int:
    store = _store(args)
    names = args.names or [
        entry.name
        for entry in store.catalogue.values()
        if args.family is None or entry.family.value == args.family
    ]
    for name in names:
        entry = store.entry(name)
        progress = _ByteProgress(entry.name)
        path = store.fetch(entry.name, progress)
        progress.finish()
        print(f"{entry.name}  ok  {path}")
    return EXIT_OK


def _models_verify(args: argparse.Namespace) -> int:
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


def _bench(args: argparse.Namespace) -> int:
    from .bench import STAGES, run_bench

    _quiet_libraries()
    if args.size is not None and (args.size < 64 or args.size % 64):
        raise InvalidRequest("size", f"{args.size} is not a positive multiple of 64")
    if args.repeat < 1:
        raise InvalidRequest("repeat", f"{args.repeat} is not a positive count")
    stages = None
    if args.stages is not None:
        stages = tuple(stage.strip() for stage in args.stages.split(",") if stage.strip())
    unknown = set(stages or ()) - set(STAGES)
    if unknown:
        raise InvalidRequest(
            "stages", f"unknown stage {sorted(unknown)[0]!r}; known: {', '.join(STAGES)}"
        )
    report = run_bench(
        device=args.device, dtype=args.dtype, size=args.size, repeat=args.repeat, stages=stages
    )
    print(report.table())
    if args.json is not None:
        report.write_json(args.json)
    return EXIT_OK


def _say(message: str) -> None:
    print(message, file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
