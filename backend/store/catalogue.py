"""The released LayerDiffuse files: where they live, how big they are, what they hold.

Every file of `LayerDiffusion/layerdiffusion-v1` on Hugging Face is listed here with its
byte size and sha256. The store (`backend.store.download`) downloads and checks them; the
library (`backend.layerdiffuse`) knows no file names and receives state dicts.

Sources of the facts below:

- sha256 and byte sizes are the Git LFS pointers of the repository (commits `40b205e`,
  "Upload 8 files", 2024-03-01, for the SDXL files and `e337e9d`, "Upload 6 files",
  2024-03-08, for the SD1.5 files; `e337e9d` is the head of `main`). Where the official
  commit page was not readable, the pointer was taken from a mirror that holds the same
  sha256 (the LFS pointer fixes the size for a given sha256).
- The one size that is not exact is `layer_xl_transparent_conv`: the listing shows
  3.62 GB; the figure here is `layer_xl_bgble2fg` less its 8 extra conv_in input channels
  (320 x 8 x 3 x 3 fp16 = 46,080 bytes), which holds the same tensors otherwise.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum

from backend.errors import ModelNotFound
from protocol.methods import ModelFamily, Sampler

log = logging.getLogger(__name__)

LAYERDIFFUSION_REPO = "LayerDiffusion/layerdiffusion-v1"
"""The Hugging Face repository that holds every released file."""

SAFETENSORS_SUFFIX = ".safetensors"


class FileKind(str, Enum):
    """What a released file holds, which decides how the library applies it."""

    ATTENTION_SHARING = "attention_sharing"
    LORA = "lora"
    DIFF = "diff"
    TRANSPARENT_DECODER = "transparent_decoder"
    TRANSPARENT_ENCODER = "transparent_encoder"
    FEW_STEP_LORA = "few_step_lora"
    FLUX_LORA = "flux_lora"
    FLUX_TRANSPARENT_VAE = "flux_transparent_vae"
    MATTING = "matting"


@dataclass(frozen=True)
class FewStepSettings:
    """How a distilled LoRA samples, as its authors advise (in this backend's samplers).

    Attributes:
        label: shown to the painter, e.g. "Hyper-SD 8 steps".
        sampler / steps / cfg_scale: the schedule it was distilled for; CFG 1 where the
            authors say guidance 0 (no negative pass).
        weight: the LoRA's strength.
    """

    label: str
    sampler: Sampler
    steps: int
    cfg_scale: float
    weight: float = 1.0


@dataclass(frozen=True, kw_only=True)
class ReleasedFile:
    """One released weight file.

    Attributes:
        name: The file stem, e.g. `layer_sd15_transparent_attn`; the name users type.
        filename: The file name in the repository, the stem plus `.safetensors`.
        kind: What the file holds.
        family: The base model family it patches or decodes for.
        size_bytes: Size in bytes; exact unless `size_exact` is false.
        sha256: Lowercase hex sha256 of the whole file, or None where unknown.
        description: One line for `layerdiffuse models list`.
        size_exact: Whether `size_bytes` is the exact size rather than an estimate.
        offset_scale: For encoders, the factor the official code applies to the encoder's
            output before adding it to the latent (1.0 for every layerdiffusion-v1 file).
        repo_id: The Hugging Face repository.
        revision: The branch, tag or commit to download from.
        few_step: For a distilled LoRA, the settings it samples with.
        licence: Where it is not the permissive default, the licence users must know.
    """

    name: str
    filename: str
    kind: FileKind
    family: ModelFamily
    size_bytes: int
    sha256: str | None
    description: str
    size_exact: bool = True
    offset_scale: float = 1.0
    repo_id: str = LAYERDIFFUSION_REPO
    revision: str = "main"
    few_step: FewStepSettings | None = None
    licence: str | None = None

    def summary(self) -> str:
        """Return a one-line summary: name, family, kind and size.

        Returns:
            For example `layer_xl_transparent_attn  sdxl  lora  743.4 MB`.
        """
        size = format_size(self.size_bytes)
        if not self.size_exact:
            size = f"~{size}"
        return f"{self.name}  {self.family.value}  {self.kind.value}  {size}"


def format_size(size_bytes: int) -> str:
    """Format a byte count with a decimal unit, as Hugging Face lists files.

    Args:
        size_bytes: A non-negative byte count.

    Returns:
        For example `2.4 MB`, `743.4 MB` or `3.62 GB`.
    """
    if size_bytes >= 1_000_000_000:
        return f"{size_bytes / 1e9:.2f} GB"
    if size_bytes >= 1_000_000:
        return f"{size_bytes / 1e6:.1f} MB"
    if size_bytes >= 1_000:
        return f"{size_bytes / 1e3:.1f} kB"
    return f"{size_bytes} B"


def _entry(
    name: str,
    kind: FileKind,
    family: ModelFamily,
    size_bytes: int,
    sha256: str,
    description: str,
    *,
    size_exact: bool = True,
) -> ReleasedFile:
    return ReleasedFile(
        name=name,
        filename=name + SAFETENSORS_SUFFIX,
        kind=kind,
        family=family,
        size_bytes=size_bytes,
        sha256=sha256,
        description=description,
        size_exact=size_exact,
    )


_SD15 = ModelFamily.SD15
_SDXL = ModelFamily.SDXL

RELEASED_FILES: dict[str, ReleasedFile] = {
    entry.name: entry
    for entry in (
        _entry(
            "layer_sd15_transparent_attn",
            FileKind.ATTENTION_SHARING,
            _SD15,
            350_266_608,
            "cc9ee87452bf1ccdd419035bf9618f6bdcaac1a2d3e23694d62e5a9c721da295",
            "sd1.5 attention sharing, one frame: transparent image",
        ),
        _entry(
            "layer_sd15_joint",
            FileKind.ATTENTION_SHARING,
            _SD15,
            554_404_208,
            "2cc81c33c1a786bdc376c6d1bfb43dbdffda2f610f7c6b4ebd776505a29712bd",
            "sd1.5 attention sharing, three frames: foreground, background and blend together",
        ),
        _entry(
            "layer_sd15_fg2bg",
            FileKind.ATTENTION_SHARING,
            _SD15,
            562_982_312,
            "5bade856ec3e55d6ceb0e35bbc97cea7fa4953f7776c8032f2fe52ba740ed580",
            "sd1.5 attention sharing with control: background from a foreground",
        ),
        _entry(
            "layer_sd15_bg2fg",
            FileKind.ATTENTION_SHARING,
            _SD15,
            562_982_312,
            "8367f976da1cc4275e513c7fb40f977ca312e79e720d7db7ae94978a9359fb62",
            "sd1.5 attention sharing with control: foreground from a background",
        ),
        _entry(
            "layer_sd15_vae_transparent_decoder",
            FileKind.TRANSPARENT_DECODER,
            _SD15,
            208_266_320,
            "6df4712dfbb3783231b22f869a5da5cbfea782ebb05f782bd9e8744bfb0cdf03",
            "sd1.5 transparent vae decoder: latent and rgb to rgba",
        ),
        _entry(
            "layer_sd15_vae_transparent_encoder",
            FileKind.TRANSPARENT_ENCODER,
            _SD15,
            2_365_008,
            "4c6bd4fa714bcdc83ee73fac9092f0723c5cafc60befccf490c697c0a378725a",
            "sd1.5 transparent vae encoder: rgba to a latent offset",
        ),
        _entry(
            "layer_xl_transparent_attn",
            FileKind.LORA,
            _SDXL,
            743_352_688,
            "b7919c5b4837fb64f24c97a7abdf1a9c6e8d60de080a5dae089dde098266df95",
            "sdxl rank-256 attention lora: transparent image",
        ),
        _entry(
            "layer_xl_transparent_conv",
            FileKind.DIFF,
            _SDXL,
            3_619_745_776,
            "5ee958d80dcd515fa7ac915274c536fadd3db5d919adeb5ff45107b6169aacc7",
            "sdxl weight offsets outside attention q/k/v: transparent image",
            size_exact=False,
        ),
        _entry(
            "layer_xl_fg2ble",
            FileKind.DIFF,
            _SDXL,
            701_981_624,
            "50a29851ad56308f14d6c9ed375be17df6921efeca240b31f567f6b8c76d1e70",
            "sdxl conditional offsets: blend from a foreground",
        ),
        _entry(
            "layer_xl_bg2ble",
            FileKind.DIFF,
            _SDXL,
            701_981_624,
            "2901d1353cc4ca763c8bedc48453b36e88680605f417c7f7ec730a7c36845d7c",
            "sdxl conditional offsets: blend from a background",
        ),
        _entry(
            "layer_xl_fgble2bg",
            FileKind.DIFF,
            _SDXL,
            702_004_664,
            "179a61fdcdb149af1897b2840f24ba09466ab6265b2c792b0e99df557f0439be",
            "sdxl conditional offsets: background from a foreground and a blend",
        ),
        _entry(
            "layer_xl_bgble2fg",
            FileKind.DIFF,
            _SDXL,
            3_619_791_856,
            "1688f0c17447f74662686fadd431f24d26a1ba8ffea322c6f56c8b5ed581b78d",
            "sdxl conditional offsets: transparent foreground from a background and a blend",
        ),
        _entry(
            "vae_transparent_decoder",
            FileKind.TRANSPARENT_DECODER,
            _SDXL,
            208_266_320,
            "59dc8feefe40d26b6cb7186aed7af70c60d94ac4f9db8ebe7f121a01ba27a2fc",
            "sdxl transparent vae decoder: latent and rgb to rgba",
        ),
        _entry(
            "vae_transparent_encoder",
            FileKind.TRANSPARENT_ENCODER,
            _SDXL,
            2_365_008,
            "47d048bd7c6f873b55d123ff424c0b584bbfb8a666f20aa634336e922f5c821c",
            "sdxl transparent vae encoder: rgba to a latent offset",
        ),
    )
}
"""All 14 released files, keyed by stem."""


def _few_step(
    name: str,
    repo_id: str,
    filename: str,
    family: ModelFamily,
    size_bytes: int,
    sha256: str,
    settings: FewStepSettings,
    *,
    size_exact: bool = True,
    licence: str | None = None,
) -> ReleasedFile:
    return ReleasedFile(
        name=name,
        filename=filename,
        kind=FileKind.FEW_STEP_LORA,
        family=family,
        size_bytes=size_bytes,
        sha256=sha256,
        description=f"{family.value} few-step lora: {settings.label}, {repo_id}",
        size_exact=size_exact,
        repo_id=repo_id,
        few_step=settings,
        licence=licence,
    )


_HYPER = "ByteDance/Hyper-SD"
_LIGHTNING = "ByteDance/SDXL-Lightning"
_SGM_EULER = Sampler.EULER_SGM_UNIFORM

FEW_STEP_LORAS: dict[str, ReleasedFile] = {
    entry.name: entry
    for entry in (
        _few_step(
            "hyper_sd15_8steps",
            _HYPER,
            "Hyper-SD15-8steps-lora.safetensors",
            _SD15,
            269_127_064,
            "91fc3186236e956d64dbb4357f2e120c69b968b78af7d2db9884a5ca74d3cd13",
            FewStepSettings("Hyper-SD 8 steps", _SGM_EULER, 8, 1.0),
        ),
        _few_step(
            "hyper_sd15_8steps_cfg",
            _HYPER,
            "Hyper-SD15-8steps-CFG-lora.safetensors",
            _SD15,
            269_127_064,
            "f6123d5b950d5250ab6c33600e27f4dcf71b3099ebf888685e01e9e8117ce482",
            FewStepSettings("Hyper-SD 8 steps, with CFG", _SGM_EULER, 8, 5.0),
            size_exact=False,
        ),
        _few_step(
            "hyper_sdxl_8steps",
            _HYPER,
            "Hyper-SDXL-8steps-lora.safetensors",
            _SDXL,
            787_359_648,
            "ca689190e8c46038550384b5675488526cfe5a40d35f82b27acb75c100f417c1",
            FewStepSettings("Hyper-SDXL 8 steps", _SGM_EULER, 8, 1.0),
        ),
        _few_step(
            "hyper_sdxl_8steps_cfg",
            _HYPER,
            "Hyper-SDXL-8steps-CFG-lora.safetensors",
            _SDXL,
            787_359_648,
            "55b51334c85061afff5eff7c550b61963c8b8607a5868bbe4f26db49374719b1",
            FewStepSettings("Hyper-SDXL 8 steps, with CFG", _SGM_EULER, 8, 5.0),
            size_exact=False,
        ),
        _few_step(
            "sdxl_lightning_4step",
            _LIGHTNING,
            "sdxl_lightning_4step_lora.safetensors",
            _SDXL,
            393_854_592,
            "bf56cf2657efb15e465d81402ed481d1e11c4677e4bcce1bc11fe71ad8506b79",
            FewStepSettings("SDXL-Lightning 4 steps", _SGM_EULER, 4, 1.0),
        ),
        _few_step(
            "sdxl_lightning_8step",
            _LIGHTNING,
            "sdxl_lightning_8step_lora.safetensors",
            _SDXL,
            393_854_592,
            "5aa30d94cdf7950a8b53a693682650ee061eddb128c5435a8f88defea73b2ac6",
            FewStepSettings("SDXL-Lightning 8 steps", _SGM_EULER, 8, 1.0),
        ),
        _few_step(
            "dmd2_sdxl_4step",
            "tianweiy/DMD2",
            "dmd2_sdxl_4step_lora_fp16.safetensors",
            _SDXL,
            393_854_592,
            "b3d9173815a4b595991c3a7a0e0e63ad821080f314a0b2a3cc31ecd7fcf2cbb8",
            FewStepSettings("DMD2 4 steps", Sampler.LCM_SGM_UNIFORM, 4, 1.0),
            licence="CC BY-NC 4.0: non-commercial use only",
        ),
    )
}
"""Distilled LoRAs for few-step sampling, with the settings their authors advise.

Sources: the Git LFS pointers (sha256, size) of each repository's files (Hyper-SD commit
`2900d27` for the SDXL files; SDXL-Lightning's file pages; DMD2 commit `19179ac`, "fix
lora ckpt", which replaced broken earlier files); the settings from each model card and
README: Hyper-SD and SDXL-Lightning sample with "trailing" timesteps at guidance 0, the
CFG variants at guidance 5–8, DMD2 with LCMScheduler at 999, 749, 499, 249 and guidance 0.
The two CFG files' sizes are the family's size, not read from their pointers. LCM-LoRA is
not listed: no sha256 of its released files could be confirmed (a file of it given by
path works, as any LoRA does).
"""

FLUX_REPO = "RedAIGC/Flux-version-LayerDiffuse"
_FLUX = ModelFamily.FLUX
_AFL = "LayerDiffuse-Flux files: AFL-3.0; FLUX.1-dev itself: non-commercial licence"

FLUX_FILES: dict[str, ReleasedFile] = {
    entry.name: entry
    for entry in (
        ReleasedFile(
            name="flux_layerlora",
            filename="layerlora.safetensors",
            kind=FileKind.FLUX_LORA,
            family=_FLUX,
            size_bytes=1_230_000_000,
            sha256="ffa34d60e92c7bcd6414dc7a8735e27d5138bcda5248b3131329b3f405aadb53",
            description="flux.1-dev lora: the transformer into the transparent latent space",
            size_exact=False,
            repo_id=FLUX_REPO,
            licence=_AFL,
        ),
        ReleasedFile(
            name="flux_transparent_vae",
            filename="TransparentVAE.pth",
            kind=FileKind.FLUX_TRANSPARENT_VAE,
            family=_FLUX,
            size_bytes=379_000_000,
            sha256="557c68a36b84ca604b9232824eea720fba002281bd9b0007a444137359538b4e",
            description="flux.1 transparent vae decoder and encoder (a pickle: converted once)",
            size_exact=False,
            repo_id=FLUX_REPO,
            licence=_AFL,
        ),
    )
}
"""LayerDiffuse-Flux's two files (issue #17). The LoRA's sha256 is its Hugging Face file
page's; the `.pth`'s is a mirror's (the `ginigen/Flux-LayerDiffuse` space), not yet
compared with RedAIGC's own pointer; both sizes are the listing's rounded figures. The
`.pth` is a pickle: the store downloads and hash-checks it like any file, and
`layerdiffuse.flux_weights.load_released_pickle` reads it once (`weights_only=True`,
after the sha256 matched) into a safetensors file that is loaded from then on."""

MATTING_FILES: dict[str, ReleasedFile] = {
    "birefnet_hr_matting": ReleasedFile(
        name="birefnet_hr_matting",
        filename="model.safetensors",
        kind=FileKind.MATTING,
        family=ModelFamily.SDXL,
        size_bytes=444_473_596,
        sha256="a5a4de698739ea5e0e8bbab28e1b293dde95092b87a442d566cbc585c53cef55",
        description="BiRefNet HR matting (2048², MIT): the matte of sdxl_matted / sd15_matted",
        repo_id="ZhengPeng7/BiRefNet_HR-matting",
        revision="5d6b6f8adcb5b417c871b1d84ceaae9871355b7f",
    ),
}
"""The matting model of the fallback where LayerDiffuse fails (issue #19), read into
`split.birefnet.BiRefNet` (no remote code). Its size and sha256 at that revision agree in
several independent public downloaders; its family is SDXL's, whose anime retrains need
it most (`models download --family sdxl` fetches it), though SD1.5's matted method uses
it too. In a `--models-dir` it may also be called `birefnet_hr_matting.safetensors`."""

CATALOGUE: dict[str, ReleasedFile] = RELEASED_FILES | FEW_STEP_LORAS | FLUX_FILES | MATTING_FILES
"""Every file the store can fetch by name: the LayerDiffuse files, the few-step LoRAs,
LayerDiffuse-Flux's and the matting model."""


def find_released_file(name: str, catalogue: Mapping[str, ReleasedFile]) -> ReleasedFile:
    """Look a file up in a catalogue by stem or by file name.

    Args:
        name: A stem (`layer_sd15_joint`) or a file name (`layer_sd15_joint.safetensors`).
        catalogue: The catalogue to search, keyed by stem.

    Returns:
        The matching entry.

    Raises:
        ModelNotFound: No entry has that stem or file name; the message lists the known names.
    """
    entry = catalogue.get(name)
    if entry is not None:
        return entry
    for candidate in catalogue.values():
        if candidate.filename == name:
            return candidate
    known = ", ".join(sorted(catalogue))
    raise ModelNotFound(f"unknown model file {name!r}; known names: {known}")


def released_file(name: str) -> ReleasedFile:
    """Look a released LayerDiffuse file up by stem or by file name.

    Args:
        name: A stem (`vae_transparent_decoder`) or a file name.

    Returns:
        The catalogue entry.

    Raises:
        ModelNotFound: The name is not one of the 14 released files or the few-step LoRAs.
    """
    return find_released_file(name, CATALOGUE)
