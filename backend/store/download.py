"""Find, download and check the released LayerDiffuse files.

`ModelStore` looks in a local models folder first, then in the Hugging Face cache, and
downloads through `huggingface_hub` (its cache, its resume, its offline mode) only when
neither has the file. Every file with a known sha256 is checked before it is used; a
small JSON record of verified files (size, mtime, sha256) spares re-hashing gigabytes on
every start, and any change to a file's size or mtime makes it hashed again.
"""

from __future__ import annotations

import builtins
import hashlib
import json
import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

import huggingface_hub
from huggingface_hub import constants as hub_constants
from huggingface_hub.utils import tqdm as hub_tqdm

from backend.errors import ModelError, ModelHashMismatch, ModelNotFound, UnsupportedModel
from backend.store.catalogue import (
    CATALOGUE,
    SAFETENSORS_SUFFIX,
    ReleasedFile,
    find_released_file,
)
from backend.store.hub_errors import describe_hub_error, is_hub_error, resolve_offline

log = logging.getLogger(__name__)

ProgressCallback = Callable[[int, int], None]
"""Called with (bytes done, bytes total) while a file downloads; total is 0 when unknown."""

_HASH_CHUNK_BYTES = 8 * 1024 * 1024
_RECORD_FILENAME = "verified_files.json"


def default_cache_dir() -> Path:
    """Return the folder where the store keeps its own small state.

    It is `$XDG_CACHE_HOME/krita-layerdiffuse`, else `%LOCALAPPDATA%/krita-layerdiffuse`
    on Windows, else `~/.cache/krita-layerdiffuse`. Nothing is created here.

    Returns:
        The folder path.
    """
    base = os.environ.get("XDG_CACHE_HOME") or os.environ.get("LOCALAPPDATA")
    root = Path(base) if base else Path.home() / ".cache"
    return root / "krita-layerdiffuse"


def sha256_of(path: Path) -> str:
    """Hash a file in chunks.

    Args:
        path: The file.

    Returns:
        The lowercase hex sha256 of its content.
    """
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        while chunk := stream.read(_HASH_CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def recorded_sha256(path: Path, state_dir: Path | None = None) -> str:
    """A file's sha256 from the record of verified files, or hashed now and recorded.

    Args:
        path: The file.
        state_dir: Where the record is kept; None uses `default_cache_dir()`.
    """
    return _VerifiedRecord((state_dir or default_cache_dir()) / _RECORD_FILENAME).sha256(path)


class VerifyStatus(str, Enum):
    """The outcome of checking one file."""

    OK = "ok"
    MISSING = "missing"
    MISMATCH = "mismatch"
    UNKNOWN_HASH = "unknown_hash"


@dataclass(frozen=True)
class VerifyResult:
    """What `ModelStore.verify` found for one file.

    Attributes:
        name: The file stem.
        path: Where the file was found, or None when missing.
        status: ok, missing, mismatch, or unknown_hash (present, but the catalogue has no
            sha256 to compare with).
        actual_sha256: The hash computed now, or None when missing.
    """

    name: str
    path: Path | None
    status: VerifyStatus
    actual_sha256: str | None

    def describe(self) -> str:
        """Return one line for `layerdiffuse models verify`.

        Returns:
            For example `ok  layer_sd15_joint  /models/layer_sd15_joint.safetensors`.
        """
        where = str(self.path) if self.path is not None else "not found"
        return f"{self.status.value}  {self.name}  {where}"


class _VerifiedRecord:
    """A JSON file mapping a resolved path to the size, mtime and sha256 last hashed."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def _read(self) -> dict[str, Any]:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            log.warning("ignoring unreadable record of verified files %s: %s", self.path, exc)
            return {}
        return data if isinstance(data, dict) else {}

    def lookup(self, path: Path) -> str | None:
        entry = self._read().get(str(path.resolve()))
        if not isinstance(entry, dict):
            return None
        stat = path.stat()
        if entry.get("size") != stat.st_size or entry.get("mtime_ns") != stat.st_mtime_ns:
            return None
        sha256 = entry.get("sha256")
        return sha256 if isinstance(sha256, str) else None

    def sha256(self, path: Path) -> str:
        """The file's sha256 as recorded, or hashed now and recorded."""
        actual = self.lookup(path)
        if actual is None:
            log.info("checking the sha256 of %s", path)
            actual = sha256_of(path)
            self.remember(path, actual)
        return actual

    def remember(self, path: Path, sha256: str) -> None:
        stat = path.stat()
        data = self._read()
        data[str(path.resolve())] = {
            "size": stat.st_size,
            "mtime_ns": stat.st_mtime_ns,
            "sha256": sha256,
        }
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            temporary = self.path.with_name(f"{self.path.name}.{os.getpid()}.tmp")
            temporary.write_text(json.dumps(data, indent=1, sort_keys=True), encoding="utf-8")
            os.replace(temporary, self.path)
        except OSError as exc:
            log.warning("could not save the record of verified files %s: %s", self.path, exc)


def _progress_bar_class(progress: ProgressCallback) -> type[hub_tqdm]:
    """Build a silent progress bar class that forwards byte counts to `progress`."""

    class _ProgressRelay(hub_tqdm):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            self._relay_done = int(kwargs.get("initial") or 0)
            self._relay_total = int(kwargs.get("total") or 0)
            kwargs["disable"] = True  # the caller draws its own progress
            super().__init__(*args, **kwargs)

        def update(self, n: float | None = 1) -> bool | None:
            self._relay_done += int(n or 0)
            progress(self._relay_done, self._relay_total)
            return super().update(n)

    return _ProgressRelay


class ModelStore:
    """Where the released files come from: a models folder, the Hugging Face cache, the hub.

    Args:
        models_dir: A local folder; a file there with the released file name is used as
            it is, with no hub involved.
        offline: True never contacts the hub; None follows huggingface_hub's offline
            setting (`HF_HUB_OFFLINE`).
        cache_dir: The Hugging Face cache folder; None uses huggingface_hub's default.
        catalogue: The files this store knows, keyed by stem.
        state_dir: Where the record of verified files is kept; None uses
            `default_cache_dir()`.
    """

    def __init__(
        self,
        *,
        models_dir: Path | None = None,
        offline: bool | None = None,
        cache_dir: Path | None = None,
        catalogue: Mapping[str, ReleasedFile] = CATALOGUE,
        state_dir: Path | None = None,
    ) -> None:
        self.models_dir = models_dir
        self._offline = offline
        self.cache_dir = cache_dir
        self.catalogue = catalogue
        self._record = _VerifiedRecord((state_dir or default_cache_dir()) / _RECORD_FILENAME)

    @property
    def offline(self) -> bool:
        """Whether this store may not contact the hub, resolved now."""
        return resolve_offline(self._offline)

    def entry(self, name: str) -> ReleasedFile:
        """Look a file up in this store's catalogue.

        Args:
            name: A stem or a file name.

        Returns:
            The catalogue entry.

        Raises:
            ModelNotFound: The name is unknown; the message lists the known names.
        """
        return find_released_file(name, self.catalogue)

    def locate(self, name: str) -> Path | None:
        """Find a file on disk without any network access.

        Args:
            name: A stem or a file name.

        Returns:
            The file in the models folder, else in the Hugging Face cache, else None.

        Raises:
            ModelNotFound: The name is unknown.
        """
        entry = self.entry(name)
        if self.models_dir is not None:
            # under its repository's name, or its own where that is generic (BiRefNet's
            # `model.safetensors`)
            for candidate in (entry.filename, entry.name + SAFETENSORS_SUFFIX):
                if (self.models_dir / candidate).is_file():
                    return self.models_dir / candidate
        cached = huggingface_hub.try_to_load_from_cache(
            entry.repo_id, entry.filename, cache_dir=self.cache_dir, revision=entry.revision
        )
        if isinstance(cached, str) and Path(cached).is_file():
            return Path(cached)
        return None

    def fetch(
        self, name: str, progress: ProgressCallback | None = None, *, force: bool = False
    ) -> Path:
        """Return a checked local copy of a file, downloading it when needed.

        Args:
            name: A stem or a file name.
            progress: Called with (bytes done, bytes total) during a download.
            force: Download into the Hugging Face cache again even when a copy is on disk,
                replacing a damaged cached copy. A copy in the models folder is not
                touched, and `locate` still prefers it.

        Returns:
            The path of a file whose sha256 matches the catalogue (when it has one).

        Raises:
            ModelNotFound: The name is unknown, or the file is not on disk and cannot be
                downloaded now (offline, network failure, not on the hub).
            ModelHashMismatch: The file's content differs from the catalogue's sha256.
        """
        entry = self.entry(name)
        path = None if force else self.locate(entry.name)
        if path is None:
            path = self._download(entry, progress, force=force)
        self._check(entry, path)
        return path

    def verify(self, name: str) -> VerifyResult:
        """Hash a file again, whatever the record of verified files says.

        Args:
            name: A stem or a file name.

        Returns:
            The file's status; a missing file is reported, not raised.

        Raises:
            ModelNotFound: The name is unknown.
        """
        entry = self.entry(name)
        path = self.locate(entry.name)
        if path is None:
            return VerifyResult(entry.name, None, VerifyStatus.MISSING, None)
        actual = sha256_of(path)
        self._record.remember(path, actual)
        if entry.sha256 is None:
            status = VerifyStatus.UNKNOWN_HASH
        elif actual == entry.sha256:
            status = VerifyStatus.OK
        else:
            status = VerifyStatus.MISMATCH
        return VerifyResult(entry.name, path, status, actual)

    def load_state_dict(self, name: str) -> dict[str, Any]:
        """Fetch a file and load its tensors; only safetensors are ever read.

        Args:
            name: A stem or a file name.

        Returns:
            The state dict, tensors on the CPU in the file's dtype (fp16 for every
            released file).

        Raises:
            ModelNotFound: See `fetch`.
            ModelHashMismatch: See `fetch`.
            UnsupportedModel: The catalogue names a file that is not `.safetensors`.
            ModelError: The file is not a readable safetensors file.
        """
        from safetensors.torch import load_file

        entry = self.entry(name)
        if not entry.filename.endswith(SAFETENSORS_SUFFIX):
            raise UnsupportedModel(
                f"{entry.filename} is not a .safetensors file; only safetensors are loaded"
            )
        path = self.fetch(entry.name)
        try:
            return load_file(str(path))
        except Exception as exc:  # safetensors raises its own error type and OSError
            raise ModelError(
                f"{path} is not a readable safetensors file ({exc}); delete it and run "
                f"`layerdiffuse models download {entry.name}`"
            ) from exc

    def list(self) -> builtins.list[tuple[ReleasedFile, Path | None]]:
        """List every catalogue entry with where it is on disk, without network access.

        Returns:
            (entry, path or None) pairs in catalogue order.
        """
        return [(entry, self.locate(entry.name)) for entry in self.catalogue.values()]

    def describe(self, name: str) -> str:
        """Return one line for `layerdiffuse models list`.

        Args:
            name: A stem or a file name.

        Returns:
            The entry's summary and where it is, or `not downloaded`.

        Raises:
            ModelNotFound: The name is unknown.
        """
        entry = self.entry(name)
        path = self.locate(entry.name)
        return f"{entry.summary()}  {path if path is not None else 'not downloaded'}"

    def _where_looked(self) -> str:
        cache = self.cache_dir or Path(hub_constants.HF_HUB_CACHE)
        if self.models_dir is None:
            return f"the hugging face cache {cache}"
        return f"the models folder {self.models_dir} or the hugging face cache {cache}"

    def _download(
        self, entry: ReleasedFile, progress: ProgressCallback | None, *, force: bool
    ) -> Path:
        if self.offline:
            folder = self.models_dir if self.models_dir is not None else "the models folder"
            raise ModelNotFound(
                f"{entry.filename} is not in {self._where_looked()} and downloads are off "
                f"(offline mode); run `layerdiffuse models download {entry.name}` on a "
                f"connected machine, or copy the file into {folder}, or unset HF_HUB_OFFLINE"
            )
        log.info("downloading %s from %s (%s)", entry.filename, entry.repo_id, entry.summary())
        try:
            downloaded = huggingface_hub.hf_hub_download(
                entry.repo_id,
                entry.filename,
                revision=entry.revision,
                cache_dir=self.cache_dir,
                force_download=force,
                tqdm_class=_progress_bar_class(progress) if progress is not None else None,
            )
        except Exception as exc:
            if not is_hub_error(exc):
                raise
            raise ModelNotFound(
                f"could not download {entry.filename} from {entry.repo_id}: "
                f"{describe_hub_error(exc)}; check the network connection, or copy the file "
                f"into {self.models_dir or 'a models folder'}, or run "
                f"`layerdiffuse models download {entry.name}` later"
            ) from exc
        return Path(str(downloaded))

    def _check(self, entry: ReleasedFile, path: Path) -> None:
        if entry.sha256 is None:
            log.warning("no sha256 known for %s; using %s unchecked", entry.name, path)
            return
        actual = self._record.sha256(path)
        if actual != entry.sha256:
            stored = path.resolve()
            where = f"{path} (stored at {stored})" if stored != path.absolute() else f"{path}"
            raise ModelHashMismatch(
                f"sha256 of {where} is {actual}, expected {entry.sha256}; the file is damaged "
                f"or not the released one: delete it and run "
                f"`layerdiffuse models download {entry.name}`"
            )
