"""Importing the libraries at a command's start: collector off, then what they made frozen."""

from __future__ import annotations

import gc
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from backend.startup import importing_libraries

REPOSITORY = Path(__file__).resolve().parents[2]


@pytest.fixture
def collector() -> Iterator[None]:
    """The garbage collector on and nothing frozen for the test, as it was after."""
    was_enabled = gc.isenabled()
    gc.unfreeze()
    gc.enable()
    try:
        yield
    finally:
        gc.unfreeze()
        if not was_enabled:
            gc.disable()


@pytest.mark.usefixtures("collector")
def test_the_collector_is_off_within_and_what_exists_is_frozen_after() -> None:
    with importing_libraries():
        assert not gc.isenabled()
        made = [[] for _ in range(1000)]
    assert gc.isenabled()
    assert gc.get_freeze_count() >= len(made)


@pytest.mark.usefixtures("collector")
def test_an_import_error_still_turns_the_collector_back_on() -> None:
    with pytest.raises(ModuleNotFoundError), importing_libraries():
        import backend.no_such_module  # noqa: F401
    assert gc.isenabled() and gc.get_freeze_count() > 0


@pytest.mark.usefixtures("collector")
def test_a_collector_that_was_off_stays_off() -> None:
    gc.disable()
    with importing_libraries():
        pass
    assert not gc.isenabled()


def test_the_libraries_import_with_no_full_collection_and_stay_out_of_later_ones() -> None:
    """In a fresh process: no full collection while torch and diffusers are imported
    (there are six otherwise), and a full collection after has nothing of theirs to walk."""
    code = (
        "import gc\n"
        "from backend.startup import importing_libraries\n"
        "with importing_libraries():\n"
        "    import backend.methods.registry, backend.store.model_sets\n"
        "print(gc.get_stats()[2]['collections'], gc.get_freeze_count(), len(gc.get_objects()))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPOSITORY,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    collections, frozen, tracked = (int(word) for word in done.stdout.split())
    assert collections == 0
    assert frozen > 100_000  # torch, diffusers and transformers make ~380,000
    assert tracked < frozen / 10
