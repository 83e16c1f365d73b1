"""ModelStore against a local fake hub: download, hash check, record, offline, failures."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest
import torch
from huggingface_hub import constants as hub_constants
from safetensors.torch import save

from backend.errors import ModelHashMismatch, ModelNotFound
from backend.store import download
from backend.store.catalogue import FileKind, ReleasedFile
from backend.store.download import ModelStore, VerifyStatus
from protocol.methods import ModelFamily
from tests.backend.store.conftest import closed_port, point_hub_at
from tests.backend.store.fake_hub import FakeHub

REPO = "test-org/tiny-layers"


def _tensors(seed: int) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return {
        "blocks.0.weight": torch.randn(32, 4, 3, 3, generator=generator).half(),
        "blocks.0.bias": torch.randn(32, generator=generator).half(),
    }


def _entry(name: str, content: bytes, *, sha256: str | None = "auto") -> ReleasedFile:
    return ReleasedFile(
        name=name,
        filename=f"{name}.safetensors",
        kind=FileKind.TRANSPARENT_ENCODER,
        family=ModelFamily.SD15,
        size_bytes=len(content),
        sha256=hashlib.sha256(content).hexdigest() if sha256 == "auto" else sha256,
        description="a tiny test file",
        repo_id=REPO,
    )


ALPHA = save(_tensors(0))
BETA = save(_tensors(1))
CATALOGUE = {
    "tiny_alpha": _entry("tiny_alpha", ALPHA),
    "tiny_beta": _entry("tiny_beta", BETA),
    "tiny_nohash": _entry("tiny_nohash", BETA, sha256=None),
}


def _store(tmp_path: Path, **kwargs: object) -> ModelStore:
    options: dict[str, object] = {
        "cache_dir": tmp_path / "hub-cache",
        "state_dir": tmp_path / "state",
        "catalogue": CATALOGUE,
    }
    options.update(kwargs)
    return ModelStore(**options)  # type: ignore[arg-type]


def _serve_all(hub: FakeHub) -> None:
    hub.add(REPO, "tiny_alpha.safetensors", ALPHA)
    hub.add(REPO, "tiny_beta.safetensors", BETA)


def test_fetch_downloads_into_the_cache_and_checks_the_hash(
    fake_hub: FakeHub, tmp_path: Path
) -> None:
    _serve_all(fake_hub)
    seen: list[tuple[int, int]] = []
    path = _store(tmp_path).fetch(
        "tiny_alpha", progress=lambda done, total: seen.append((done, total))
    )
    assert path.read_bytes() == ALPHA
    assert path.is_relative_to(tmp_path / "hub-cache")
    assert seen[-1] == (len(ALPHA), len(ALPHA))
    assert (tmp_path / "state" / "verified_files.json").is_file()


def test_fetch_accepts_the_file_name(fake_hub: FakeHub, tmp_path: Path) -> None:
    _serve_all(fake_hub)
    assert _store(tmp_path).fetch("tiny_beta.safetensors").read_bytes() == BETA


def test_a_cached_file_is_used_with_no_server_even_offline(
    fake_hub: FakeHub, tmp_path: Path
) -> None:
    _serve_all(fake_hub)
    first = _store(tmp_path).fetch("tiny_alpha")
    fake_hub.stop()
    assert _store(tmp_path).fetch("tiny_alpha") == first
    assert _store(tmp_path, offline=True).fetch("tiny_alpha") == first


def test_corrupted_download_raises_hash_mismatch_naming_what_to_do(
    fake_hub: FakeHub, tmp_path: Path
) -> None:
    fake_hub.add(REPO, "tiny_alpha.safetensors", BETA)
    with pytest.raises(ModelHashMismatch) as caught:
        _store(tmp_path).fetch("tiny_alpha")
    message = str(caught.value)
    path = _store(tmp_path).locate("tiny_alpha")
    assert path is not None
    blob = path.resolve()  # the hugging face cache links snapshots to blobs
    assert message == (
        f"sha256 of {path} (stored at {blob}) is {hashlib.sha256(BETA).hexdigest()}, "
        f"expected {CATALOGUE['tiny_alpha'].sha256}; the file is damaged or not the released "
        "one: delete it and run `layerdiffuse models download tiny_alpha`"
    )


def test_force_replaces_a_damaged_cached_copy(fake_hub: FakeHub, tmp_path: Path) -> None:
    _serve_all(fake_hub)
    path = _store(tmp_path).fetch("tiny_alpha")
    path.write_bytes(BETA)  # damaged on disk, same size
    with pytest.raises(ModelHashMismatch):
        _store(tmp_path).fetch("tiny_alpha")
    assert _store(tmp_path).fetch("tiny_alpha", force=True) == path
    assert path.read_bytes() == ALPHA
    assert len(fake_hub.downloads("tiny_alpha.safetensors")) == 2


def test_a_verified_unchanged_file_is_not_hashed_again(
    fake_hub: FakeHub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _serve_all(fake_hub)
    path = _store(tmp_path).fetch("tiny_alpha")
    hashed: list[Path] = []
    real_sha256_of = download.sha256_of

    def counting_sha256_of(target: Path) -> str:
        hashed.append(target)
        return real_sha256_of(target)

    monkeypatch.setattr(download, "sha256_of", counting_sha256_of)
    _store(tmp_path).fetch("tiny_alpha")
    assert hashed == []

    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    _store(tmp_path).fetch("tiny_alpha")
    assert hashed == [path]


def test_a_changed_file_is_hashed_again_and_rejected(fake_hub: FakeHub, tmp_path: Path) -> None:
    _serve_all(fake_hub)
    path = _store(tmp_path).fetch("tiny_alpha")
    stat = path.stat()
    damaged = bytearray(ALPHA)
    damaged[-1] ^= 0xFF
    path.write_bytes(bytes(damaged))
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    with pytest.raises(ModelHashMismatch) as caught:
        _store(tmp_path).fetch("tiny_alpha")
    assert f"is {hashlib.sha256(bytes(damaged)).hexdigest()}, expected" in str(caught.value)


def test_offline_and_missing_says_where_it_looked_and_what_to_do(tmp_path: Path) -> None:
    models = tmp_path / "models"
    models.mkdir()
    with pytest.raises(ModelNotFound) as caught:
        _store(tmp_path, models_dir=models, offline=True).fetch("tiny_alpha")
    assert str(caught.value) == (
        f"tiny_alpha.safetensors is not in the models folder {models} or the hugging face "
        f"cache {tmp_path / 'hub-cache'} and downloads are off (offline mode); run "
        "`layerdiffuse models download tiny_alpha` on a connected machine, or copy the file "
        f"into {models}, or unset HF_HUB_OFFLINE"
    )


@pytest.mark.usefixtures("hub_offline")
def test_offline_none_follows_hf_hub_offline(fake_hub: FakeHub, tmp_path: Path) -> None:
    _serve_all(fake_hub)
    with pytest.raises(ModelNotFound, match="downloads are off"):
        _store(tmp_path).fetch("tiny_alpha")
    assert fake_hub.requests == []


def test_a_file_in_the_models_folder_is_used_without_any_hub(tmp_path: Path) -> None:
    models = tmp_path / "models"
    models.mkdir()
    (models / "tiny_alpha.safetensors").write_bytes(ALPHA)
    store = _store(tmp_path, models_dir=models)
    assert store.fetch("tiny_alpha") == models / "tiny_alpha.safetensors"
    assert store.load_state_dict("tiny_alpha").keys() == _tensors(0).keys()


def test_load_state_dict_returns_the_saved_tensors(fake_hub: FakeHub, tmp_path: Path) -> None:
    _serve_all(fake_hub)
    loaded = _store(tmp_path).load_state_dict("tiny_beta")
    for key, tensor in _tensors(1).items():
        assert torch.equal(loaded[key], tensor)


def test_verify_reports_each_status(fake_hub: FakeHub, tmp_path: Path) -> None:
    _serve_all(fake_hub)
    models = tmp_path / "models"
    models.mkdir()
    store = _store(tmp_path, models_dir=models)
    assert store.verify("tiny_alpha").status is VerifyStatus.MISSING

    (models / "tiny_alpha.safetensors").write_bytes(ALPHA)
    result = store.verify("tiny_alpha")
    assert (result.status, result.actual_sha256) == (
        VerifyStatus.OK,
        CATALOGUE["tiny_alpha"].sha256,
    )
    assert result.describe() == f"ok  tiny_alpha  {models / 'tiny_alpha.safetensors'}"

    (models / "tiny_beta.safetensors").write_bytes(ALPHA)
    assert store.verify("tiny_beta").status is VerifyStatus.MISMATCH

    (models / "tiny_nohash.safetensors").write_bytes(BETA)
    assert store.verify("tiny_nohash").status is VerifyStatus.UNKNOWN_HASH
    assert fake_hub.requests == []


def test_verify_hashes_again_even_when_recorded(tmp_path: Path) -> None:
    models = tmp_path / "models"
    models.mkdir()
    target = models / "tiny_alpha.safetensors"
    target.write_bytes(ALPHA)
    store = _store(tmp_path, models_dir=models)
    store.fetch("tiny_alpha")
    stat = target.stat()
    assert len(BETA) == len(ALPHA)
    target.write_bytes(BETA)
    os.utime(target, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # same size and mtime
    assert store.verify("tiny_alpha").status is VerifyStatus.MISMATCH


@pytest.mark.usefixtures("no_retry_sleep")
def test_server_down_becomes_model_not_found_in_words(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    endpoint = f"http://127.0.0.1:{closed_port()}"
    point_hub_at(monkeypatch, endpoint)
    with pytest.raises(ModelNotFound) as caught:
        _store(tmp_path).fetch("tiny_alpha")
    message = str(caught.value)
    assert message.startswith(
        f"could not download tiny_alpha.safetensors from {REPO}: cannot reach {endpoint} ("
    )
    assert "ConnectError" in message
    assert message.endswith("or run `layerdiffuse models download tiny_alpha` later")


@pytest.mark.usefixtures("no_retry_sleep")
def test_a_hub_error_status_is_reported(fake_hub: FakeHub, tmp_path: Path) -> None:
    _serve_all(fake_hub)
    fake_hub.status = 503
    with pytest.raises(ModelNotFound) as caught:
        _store(tmp_path).fetch("tiny_alpha")
    assert str(caught.value).startswith(
        f"could not download tiny_alpha.safetensors from {REPO}: the hub answered http 503; "
    )


def test_a_file_missing_on_the_hub_says_so(fake_hub: FakeHub, tmp_path: Path) -> None:
    fake_hub.add(REPO, "tiny_beta.safetensors", BETA)
    with pytest.raises(ModelNotFound, match="the file is not in the repository"):
        _store(tmp_path).fetch("tiny_alpha")


@pytest.mark.usefixtures("no_retry_sleep")
def test_a_dropped_download_resumes_with_a_range_request(
    fake_hub: FakeHub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # huggingface_hub keeps the bytes of whole chunks it has received (10 MB by default);
    # small chunks let a 2.5 kB file be cut after two of them.
    monkeypatch.setattr(hub_constants, "DOWNLOAD_CHUNK_SIZE", 64)
    _serve_all(fake_hub)
    fake_hub.truncate_once["tiny_alpha.safetensors"] = 128
    path = _store(tmp_path).fetch("tiny_alpha")
    assert path.read_bytes() == ALPHA
    assert [request.range for request in fake_hub.downloads("tiny_alpha.safetensors")] == [
        None,
        "bytes=128-",
    ]


def test_unknown_names_list_the_known_ones(tmp_path: Path) -> None:
    with pytest.raises(ModelNotFound) as caught:
        _store(tmp_path).fetch("tiny_gamma")
    assert str(caught.value) == (
        "unknown model file 'tiny_gamma'; known names: tiny_alpha, tiny_beta, tiny_nohash"
    )


def test_list_and_describe_show_where_files_are(tmp_path: Path) -> None:
    models = tmp_path / "models"
    models.mkdir()
    (models / "tiny_beta.safetensors").write_bytes(BETA)
    store = _store(tmp_path, models_dir=models)
    assert [(entry.name, path) for entry, path in store.list()] == [
        ("tiny_alpha", None),
        ("tiny_beta", models / "tiny_beta.safetensors"),
        ("tiny_nohash", None),
    ]
    size = f"{len(ALPHA)} B" if len(ALPHA) < 1000 else f"{len(ALPHA) / 1e3:.1f} kB"
    assert store.describe("tiny_alpha") == (
        f"tiny_alpha  sd15  transparent_encoder  {size}  not downloaded"
    )
    assert store.describe("tiny_beta").endswith(str(models / "tiny_beta.safetensors"))
