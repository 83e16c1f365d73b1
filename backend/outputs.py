"""The files a job writes: the folder checked before the work, names reserved together.

`check_output_folder` runs before any model loads: the folder must be a folder (or be
creatable), writable, and have room for what the job will write. After the work,
`write_files` reserves every name at once, create-exclusive (`O_EXCL`): if any of them is
taken, all of them get the next shared suffix (`-2`, `-3`, …), so a job's layers and
previews always match and no existing file is ever replaced. Each file is written to a
temporary name beside it and renamed over its reservation, so a crash leaves no
half-written PNG; a failure removes what the job reserved and had not finished.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from .errors import OutputError

MAX_SUFFIX = 10_000
"""Suffixes tried before giving up (a folder with thousands of runs of one seed)."""

FILE_OVERHEAD_BYTES = 65_536
"""Room counted per file beyond its pixels (PNG chunks, the parameters text)."""

Writer = Callable[[BinaryIO], None]
"""Writes one file's bytes into an open binary file."""


@dataclass(frozen=True)
class OutputFile:
    """One file a job writes: `<stem><suffix><tail>`, e.g. `…-foreground` + `-2` + `.png`.

    Attributes:
        stem: the name before the shared suffix.
        tail: the rest, after the suffix (`.png`, `-preview.png`).
        write: writes the content.
    """

    stem: str
    tail: str
    write: Writer

    def name(self, number: int) -> str:
        """The file name with suffix `number` (1: none)."""
        return f"{self.stem}{'' if number == 1 else f'-{number}'}{self.tail}"


def check_output_folder(folder: Path, needed_bytes: int) -> None:
    """Check, before the work, that the results can be written into `folder`.

    Creates nothing: a folder that does not exist yet is checked by where it would be
    made (and made by `write_files`).

    Args:
        folder: the output folder as given.
        needed_bytes: at most what the job will write.

    Raises:
        OutputError: `folder` (or a parent) is a file, it cannot be written or created,
            or its disk has less than `needed_bytes` free.
    """
    existing = folder
    while not existing.exists():
        if existing.is_symlink():
            raise OutputError(f"{folder}: {existing} is a broken link")
        if existing.parent == existing:
            break
        existing = existing.parent
    if not existing.is_dir():
        what = "is" if existing == folder else f"is inside {existing}, which is"
        raise OutputError(f"{folder} {what} a file, not a folder")
    try:
        if existing == folder:
            descriptor, probe = tempfile.mkstemp(prefix=".layerdiffuse-check-", dir=folder)
            os.close(descriptor)
            os.unlink(probe)
        else:
            os.rmdir(tempfile.mkdtemp(prefix=".layerdiffuse-check-", dir=existing))
    except OSError as error:
        where = "" if existing == folder else f" (cannot create folders in {existing})"
        raise OutputError(f"{folder} is not writable{where}: {_reason(error)}") from None
    free = shutil.disk_usage(existing).free
    if free < needed_bytes:
        raise OutputError(
            f"{folder}: {_megabytes(free)} free on its disk, the results need up to "
            f"{_megabytes(needed_bytes)}"
        )


def write_files(folder: Path, files: Sequence[OutputFile]) -> list[Path]:
    """Reserve every name together, then write each file whole.

    Args:
        folder: where; made (with its parents) if it does not exist.
        files: the job's files; their names without a suffix must differ.

    Returns:
        The paths written, in the order of `files`.

    Raises:
        OutputError: the folder cannot be made, a name cannot be reserved, or a file
            cannot be written (the job's reserved and temporary files are removed).
    """
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise OutputError(f"cannot create {folder}: {_reason(error)}") from None
    paths = _reserve(folder, files)
    written = 0
    try:
        for path, file in zip(paths, files, strict=True):
            _write_whole(path, file.write)
            written += 1
    except BaseException as error:
        _remove(paths[written:])
        if isinstance(error, OSError):
            raise OutputError(f"cannot write {paths[written]}: {_reason(error)}") from None
        raise
    return paths


def _reserve(folder: Path, files: Sequence[OutputFile]) -> list[Path]:
    """Create every file empty with O_EXCL under one suffix, the first one all are free for."""
    for number in range(1, MAX_SUFFIX + 1):
        reserved: list[Path] = []
        try:
            for file in files:
                path = folder / file.name(number)
                os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
                reserved.append(path)
            return reserved
        except FileExistsError:
            pass
        except OSError as error:
            _remove(reserved)
            raise OutputError(f"cannot create files in {folder}: {_reason(error)}") from None
        _remove(reserved)
    raise OutputError(f"{folder} has results of this name with {MAX_SUFFIX} suffixes already")


def _write_whole(path: Path, write: Writer) -> None:
    """Write to a temporary file beside `path`, then rename it over the reservation."""
    descriptor, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(descriptor, "wb") as stream:
            write(stream)
        os.chmod(temporary, os.stat(path).st_mode & 0o777)
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise


def _remove(paths: list[Path]) -> None:
    for path in paths:
        with contextlib.suppress(OSError):
            path.unlink()


def _reason(error: OSError) -> str:
    if error.errno == errno.ENOSPC:
        return "no space left on the disk"
    return (error.strerror or str(error)).lower()


def _megabytes(count: int) -> str:
    return f"{count / 1e6:,.1f} MB"
