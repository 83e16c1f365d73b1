"""load_base_model and detect_family on tiny models written the ways users have them."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from backend.errors import ModelNotFound, UnsupportedModel
from backend.model_set import BaseModel
from backend.store.checkpoints import detect_family, load_base_model
from backend.store.configs import config_path
from backend.store.single_file import PICKLE_ADVICE
from protocol.methods import ModelFamily
from tests.backend.store.fake_hub import FakeHub
from tests.backend.store.tiny_models import TinySet, build_tiny_set

SD_FAMILIES = (ModelFamily.SD15, ModelFamily.SDXL)  # single-file checkpoints, shipped configs


@pytest.fixture(scope="module")
def tiny_sets(tmp_path_factory: pytest.TempPathFactory) -> dict[ModelFamily, TinySet]:
    root = tmp_path_factory.mktemp("tiny-models")
    return {family: build_tiny_set(family, root) for family in SD_FAMILIES}


def assert_same_weights(loaded: BaseModel, tiny: TinySet, dtype: torch.dtype) -> None:
    for name, original in tiny.components.items():
        expected = original.state_dict()
        got = getattr(loaded, name).state_dict()
        assert got.keys() == expected.keys(), name
        for key, tensor in expected.items():
            assert torch.equal(got[key], tensor.to(dtype)), f"{name}.{key}"
        assert all(not p.requires_grad for p in getattr(loaded, name).parameters())


def assert_same_text_features(loaded: BaseModel, tiny: TinySet) -> None:
    """A forward pass also covers what state dicts leave out: CLIP's position ids."""
    ids = loaded.tokenizer("a photo of a cat", return_tensors="pt").input_ids
    assert ids.tolist() == [[49406, 320, 1125, 539, 320, 2368, 49407]]
    with torch.no_grad():
        expected = tiny.components["text_encoder"](ids).last_hidden_state
        assert torch.equal(loaded.text_encoder(ids).last_hidden_state, expected)


@pytest.mark.usefixtures("hub_offline", "no_network")
@pytest.mark.parametrize("family", SD_FAMILIES)
def test_a_single_checkpoint_file_loads_the_same_tensors(
    tiny_sets: dict[ModelFamily, TinySet], family: ModelFamily
) -> None:
    tiny = tiny_sets[family]
    loaded = load_base_model(tiny.checkpoint, config_root=tiny.config_root)
    assert (loaded.family, loaded.name) == (family, f"tiny-{family.value}")
    assert_same_weights(loaded, tiny, torch.float32)
    assert_same_text_features(loaded, tiny)
    shipped = json.loads(config_path(family, "scheduler").read_text(encoding="utf-8"))
    assert loaded.scheduler_config == shipped
    if family is ModelFamily.SDXL:
        assert loaded.tokenizer_2 is not None
        assert loaded.tokenizer_2.pad_token_id == 0
    else:
        assert (loaded.text_encoder_2, loaded.tokenizer_2) == (None, None)


@pytest.mark.usefixtures("hub_offline", "no_network")
@pytest.mark.parametrize("family", SD_FAMILIES)
def test_a_diffusers_folder_loads_the_same_tensors(
    tiny_sets: dict[ModelFamily, TinySet], family: ModelFamily
) -> None:
    tiny = tiny_sets[family]
    loaded = load_base_model(tiny.folder)
    assert (loaded.family, loaded.name) == (family, f"tiny-{family.value}")
    assert_same_weights(loaded, tiny, torch.float32)
    assert_same_text_features(loaded, tiny)
    if family is ModelFamily.SDXL:  # its folder has no tokenizer: the built-in one is used
        assert loaded.tokenizer_2 is not None
        assert loaded.tokenizer_2.pad_token_id == 0


@pytest.mark.usefixtures("hub_offline")
@pytest.mark.parametrize("kind", ["folder", "checkpoint"])
def test_the_dtype_is_applied(tiny_sets: dict[ModelFamily, TinySet], kind: str) -> None:
    tiny = tiny_sets[ModelFamily.SD15]
    source = tiny.folder if kind == "folder" else tiny.checkpoint
    loaded = load_base_model(source, dtype=torch.float16, config_root=tiny.config_root)
    assert_same_weights(loaded, tiny, torch.float16)


def test_weights_that_do_not_fit_the_configs_are_refused(
    tiny_sets: dict[ModelFamily, TinySet],
) -> None:
    # the tiny file against the shipped full-size SD1.5 configs
    with pytest.raises(UnsupportedModel) as caught:
        load_base_model(tiny_sets[ModelFamily.SD15].checkpoint)
    message = str(caught.value)
    assert message.startswith(
        "the unet weights of tiny-sd15.safetensors do not fit its architecture: "
    )
    assert "size mismatch" in message


def _write_header(path: Path, keys: dict[str, tuple[int, ...]]) -> Path:
    save_file({key: torch.zeros(shape) for key, shape in keys.items()}, str(path))
    return path


_UNET = {"model.diffusion_model.input_blocks.0.0.weight": (8, 4, 1, 1)}
_VAE = {"first_stage_model.decoder.conv_in.weight": (1,)}
_SD15 = {"cond_stage_model.transformer.text_model.final_layer_norm.weight": (1,)}
_SDXL = {
    "conditioner.embedders.0.transformer.text_model.final_layer_norm.weight": (1,),
    "conditioner.embedders.1.model.ln_final.weight": (1,),
}


@pytest.mark.parametrize(
    ("keys", "family"),
    [
        ({**_UNET, **_VAE, **_SD15}, ModelFamily.SD15),
        ({**_UNET, **_VAE, **_SDXL}, ModelFamily.SDXL),
    ],
)
def test_the_family_is_told_by_key_names(
    tmp_path: Path, keys: dict[str, tuple[int, ...]], family: ModelFamily
) -> None:
    assert detect_family(_write_header(tmp_path / "model.safetensors", keys)) is family


@pytest.mark.parametrize(
    ("keys", "message"),
    [
        (
            {**_UNET, **_VAE, "cond_stage_model.model.ln_final.weight": (1,)},
            "model.safetensors is a stable diffusion 2.x checkpoint (open clip text encoder "
            "under cond_stage_model.model); layerdiffuse supports sd1.5 and sdxl",
        ),
        (
            {**_UNET, **_VAE, **_SDXL, "v_pred": (1,)},
            "model.safetensors is a v-prediction model; layerdiffuse was trained on "
            "epsilon-prediction sd1.5 and sdxl models",
        ),
        (
            {**_UNET, **_VAE, "conditioner.embedders.0.model.ln_final.weight": (1,)},
            "model.safetensors is an sdxl refiner; layerdiffuse needs an sdxl base model",
        ),
        (
            {"model.diffusion_model.input_blocks.0.0.weight": (8, 9, 1, 1), **_VAE, **_SD15},
            "model.safetensors has a unet with 9 input channels (an inpainting or instruction "
            "model); layerdiffuse needs a standard 4-channel model",
        ),
        (
            {"lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": (1,)},
            "model.safetensors holds no stable diffusion unet (no model.diffusion_model.* keys); "
            "a full sd1.5 or sdxl checkpoint is needed, not a lora, vae or embedding",
        ),
        (
            {**_UNET, **_SD15},
            "model.safetensors holds no vae (first_stage_model.*); use a checkpoint with its "
            "vae baked in",
        ),
    ],
)
def test_other_layouts_are_refused_by_name(
    tmp_path: Path, keys: dict[str, tuple[int, ...]], message: str
) -> None:
    path = _write_header(tmp_path / "model.safetensors", keys)
    with pytest.raises(UnsupportedModel) as caught:
        detect_family(path)
    assert str(caught.value) == message
    with pytest.raises(UnsupportedModel):
        load_base_model(path)


def test_a_file_that_is_not_safetensors_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "broken.safetensors"
    path.write_bytes(b"\xff" * 64)
    with pytest.raises(UnsupportedModel, match=r"^broken.safetensors is not a readable"):
        detect_family(path)


@pytest.mark.parametrize("suffix", [".ckpt", ".pt", ".pth", ".bin"])
def test_pickles_are_refused_without_being_opened(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, suffix: str
) -> None:
    def forbidden(*args: object, **kwargs: object) -> None:
        raise AssertionError("a pickle was opened")

    monkeypatch.setattr(torch, "load", forbidden)
    path = tmp_path / f"model{suffix}"
    path.write_bytes(b"not even read")
    expected = f"model{suffix} is a pickle checkpoint ({suffix}); {PICKLE_ADVICE}"
    for call in (load_base_model, detect_family):
        with pytest.raises(UnsupportedModel) as caught:
            call(path)
        assert str(caught.value) == expected
    with pytest.raises(UnsupportedModel, match="is a pickle checkpoint"):
        load_base_model(tmp_path / f"missing{suffix}")


def test_a_folder_with_only_bin_weights_is_refused(
    tiny_sets: dict[ModelFamily, TinySet], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = shutil.copytree(tiny_sets[ModelFamily.SD15].folder, tmp_path / "bin-only")
    (folder / "unet" / "diffusion_pytorch_model.safetensors").unlink()
    (folder / "unet" / "diffusion_pytorch_model.bin").write_bytes(b"pickled weights")
    monkeypatch.setattr(torch, "load", lambda *args, **kwargs: pytest.fail("a pickle was opened"))
    with pytest.raises(UnsupportedModel) as caught:
        load_base_model(folder)
    assert str(caught.value) == (
        f"{folder / 'unet'} holds only pickle weights (diffusion_pytorch_model.bin); "
        f"{PICKLE_ADVICE}"
    )


@pytest.mark.parametrize(
    ("index", "unet", "scheduler", "message"),
    [
        (
            "StableDiffusionPipeline",
            {"cross_attention_dim": 1024},
            {},
            "is a stable diffusion 2.x pipeline; layerdiffuse supports sd1.5 and sdxl",
        ),
        (
            "StableDiffusionXLPipeline",
            {"in_channels": 9},
            {},
            "has a unet with 9 input channels (an inpainting or instruction model); "
            "layerdiffuse needs a standard 4-channel model",
        ),
        (
            "StableDiffusionPipeline",
            {},
            {"prediction_type": "v_prediction"},
            "is a v-prediction model; layerdiffuse was trained on epsilon-prediction sd1.5 and "
            "sdxl models",
        ),
        (
            "StableDiffusionXLImg2ImgPipeline",
            {},
            {},
            "holds a StableDiffusionXLImg2ImgPipeline pipeline; layerdiffuse loads "
            "StableDiffusionPipeline (sd1.5) and StableDiffusionXLPipeline (sdxl base) folders",
        ),
    ],
)
def test_other_pipeline_folders_are_refused(
    tmp_path: Path, index: str, unet: dict[str, object], scheduler: dict[str, object], message: str
) -> None:
    for name, data in [
        ("model_index.json", {"_class_name": index}),
        ("unet/config.json", {"cross_attention_dim": 768, **unet}),
        ("scheduler/scheduler_config.json", scheduler),
    ]:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(json.dumps(data))
    with pytest.raises(UnsupportedModel) as caught:
        load_base_model(tmp_path)
    assert str(caught.value) == f"{tmp_path} {message}"


def test_a_folder_without_model_index_is_refused(tmp_path: Path) -> None:
    with pytest.raises(UnsupportedModel) as caught:
        load_base_model(tmp_path)
    assert str(caught.value) == (
        f"{tmp_path} has no model_index.json, so it is not a diffusers pipeline folder; pass "
        "a diffusers folder, a hugging face repo id or a .safetensors checkpoint"
    )


@pytest.mark.parametrize("source", ["./nowhere/model.safetensors", "not a repo id"])
def test_a_missing_source_is_not_found(source: str) -> None:
    with pytest.raises(ModelNotFound) as caught:
        load_base_model(source)
    assert str(caught.value) == (
        f"base model {source!r} not found: no such file or folder, and not a hugging face "
        "repo id like 'org/name'"
    )


@pytest.mark.usefixtures("hub_offline")
def test_a_hub_id_offline_with_an_empty_cache_says_what_to_do(isolated_caches: Path) -> None:
    with pytest.raises(ModelNotFound) as caught:
        load_base_model("test-org/tiny-sd15")
    assert str(caught.value) == (
        "'test-org/tiny-sd15' is no local file or folder, and as a hugging face repo its "
        f"model_index.json is not in the cache {isolated_caches} while downloads are off "
        "(offline mode); load it once on a connected machine, or pass a local diffusers folder "
        "or a .safetensors checkpoint, or unset HF_HUB_OFFLINE"
    )


def test_a_hub_id_is_fetched_once_then_works_offline(
    tiny_sets: dict[ModelFamily, TinySet], fake_hub: FakeHub, monkeypatch: pytest.MonkeyPatch
) -> None:
    tiny = tiny_sets[ModelFamily.SD15]
    for path in tiny.folder.rglob("*"):
        if path.is_file():
            fake_hub.add(
                "test-org/tiny-sd15", path.relative_to(tiny.folder).as_posix(), path.read_bytes()
            )
    loaded = load_base_model("test-org/tiny-sd15")
    assert (loaded.family, loaded.name) == (ModelFamily.SD15, "test-org/tiny-sd15")
    assert_same_weights(loaded, tiny, torch.float32)

    fake_hub.stop()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    again = load_base_model("test-org/tiny-sd15")
    assert_same_weights(again, tiny, torch.float32)
    assert_same_text_features(again, tiny)


def test_a_hub_id_that_does_not_exist_says_so(fake_hub: FakeHub) -> None:
    fake_hub.add("test-org/other", "model_index.json", b"{}")
    with pytest.raises(ModelNotFound) as caught:
        load_base_model("test-org/missing")
    assert str(caught.value) == (
        "'test-org/missing' is no local file or folder, and as a hugging face repo its "
        "model_index.json could not be fetched: the repository does not exist on the hub, or "
        "it is private; check the name and the network, or pass a local diffusers folder or "
        "a .safetensors checkpoint"
    )
