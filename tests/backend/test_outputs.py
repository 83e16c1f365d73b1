"""backend.outputs: no existing file is ever replaced, and a bad folder is refused first."""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path
from typing import BinaryIO

import pytest

from backend.errors import OutputError
from backend.outputs import OutputFile, Writer, check_output_folder, write_files


def _content(data: bytes) -> Writer:
    def write(stream: BinaryIO) -> None:
        stream.write(data)

    return write


def _job(stem: str = "sd15_transparent-77-foreground") -> list[OutputFile]:
    return [
        OutputFile(stem, ".png", _content(b"layer")),
        OutputFile(stem, "-preview.png", _content(b"preview")),
    ]


def _names(folder: Path) -> list[str]:
    return sorted(path.name for path in folder.iterdir())


def test_free_names_are_written_as_they_are(tmp_path: Path) -> None:
    paths = write_files(tmp_path, _job())
    assert [path.name for path in paths] == [
        "sd15_transparent-77-foreground.png",
        "sd15_transparent-77-foreground-preview.png",
    ]
    assert [path.read_bytes() for path in paths] == [b"layer", b"preview"]
    assert _names(tmp_path) == sorted(path.name for path in paths)  # no temporary left


def test_a_folder_holding_only_a_preview_moves_every_file_to_the_next_suffix(
    tmp_path: Path,
) -> None:
    """The issue's case: only the preview's name is taken; the preview must survive."""
    earlier = tmp_path / "sd15_transparent-77-foreground-preview.png"
    earlier.write_bytes(b"an earlier preview")
    paths = write_files(tmp_path, _job())
    assert [path.name for path in paths] == [
        "sd15_transparent-77-foreground-2.png",
        "sd15_transparent-77-foreground-2-preview.png",
    ]
    assert earlier.read_bytes() == b"an earlier preview"


def test_all_files_of_a_job_share_one_suffix(tmp_path: Path) -> None:
    """One taken name among several results moves them all; -2 partly taken gives -3."""
    files = _job("m-77-foreground") + _job("m-78-foreground")
    (tmp_path / "m-78-foreground.png").write_bytes(b"kept")
    (tmp_path / "m-77-foreground-2-preview.png").write_bytes(b"kept too")
    paths = write_files(tmp_path, files)
    assert [path.name for path in paths] == [
        "m-77-foreground-3.png",
        "m-77-foreground-3-preview.png",
        "m-78-foreground-3.png",
        "m-78-foreground-3-preview.png",
    ]
    assert (tmp_path / "m-78-foreground.png").read_bytes() == b"kept"
    assert (tmp_path / "m-77-foreground-2-preview.png").read_bytes() == b"kept too"
    assert len(list(tmp_path.iterdir())) == 6


def test_two_runs_in_a_row_never_replace_each_other(tmp_path: Path) -> None:
    first = write_files(tmp_path, _job())
    second = write_files(tmp_path, [OutputFile(f.stem, f.tail, _content(b"new")) for f in _job()])
    assert set(first).isdisjoint(second)
    assert [path.read_bytes() for path in first] == [b"layer", b"preview"]


def test_a_missing_folder_is_made(tmp_path: Path) -> None:
    folder = tmp_path / "a" / "b"
    assert [path.parent for path in write_files(folder, _job())] == [folder, folder]


def test_written_files_get_the_usual_permissions_not_the_temporary_files(tmp_path: Path) -> None:
    umask = os.umask(0o022)
    try:
        (path, _) = write_files(tmp_path, _job())
    finally:
        os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o644


def test_a_write_that_fails_leaves_neither_its_file_nor_the_later_reservations(
    tmp_path: Path,
) -> None:
    """A full disk half-way: the finished file stays, nothing half-written or empty does."""

    def full_disk(stream: BinaryIO) -> None:
        stream.write(b"half a png")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    files = [
        OutputFile("x", ".png", _content(b"done")),
        OutputFile("x", "-preview.png", full_disk),
        OutputFile("y", ".png", _content(b"never")),
    ]
    with pytest.raises(OutputError) as caught:
        write_files(tmp_path, files)
    assert (
        str(caught.value) == f"cannot write {tmp_path / 'x-preview.png'}: no space left on the disk"
    )
    assert _names(tmp_path) == ["x.png"]
    assert (tmp_path / "x.png").read_bytes() == b"done"


def test_an_interrupt_while_writing_removes_what_the_job_reserved(tmp_path: Path) -> None:
    def interrupted(stream: BinaryIO) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_files(tmp_path, [OutputFile("x", ".png", interrupted), *_job()])
    assert _names(tmp_path) == []


def test_check_accepts_a_folder_or_a_folder_to_be_and_creates_nothing(tmp_path: Path) -> None:
    check_output_folder(tmp_path, 1_000_000)
    check_output_folder(tmp_path / "new" / "deeper", 1_000_000)
    assert _names(tmp_path) == []  # not even the probe


@pytest.mark.parametrize(
    ("relative", "message"),
    [
        ("afile", "{p} is a file, not a folder"),
        ("afile/results", "{p} is inside {f}, which is a file, not a folder"),
    ],
)
def test_check_refuses_a_file(tmp_path: Path, relative: str, message: str) -> None:
    afile = tmp_path / "afile"
    afile.write_text("x")
    folder = tmp_path / relative
    with pytest.raises(OutputError) as caught:
        check_output_folder(folder, 1)
    assert str(caught.value) == message.format(p=folder, f=afile)


def test_check_refuses_a_folder_it_cannot_write() -> None:
    """/sys refuses new files even to root (chmod would not stop root, which CI may be)."""
    denied = "(permission denied|operation not permitted|read-only file system)"
    with pytest.raises(OutputError, match=rf"^/sys is not writable: {denied}$"):
        check_output_folder(Path("/sys"), 1)
    with pytest.raises(
        OutputError,
        match=rf"^/sys/results is not writable \(cannot create folders in /sys\): {denied}$",
    ):
        check_output_folder(Path("/sys/results"), 1)


def test_check_refuses_a_disk_without_room_for_the_results(tmp_path: Path) -> None:
    free = shutil.disk_usage(tmp_path).free
    with pytest.raises(OutputError, match=r"MB free on its disk, the results need up to"):
        check_output_folder(tmp_path, free + 10**12)
