"""Logging what holds Krita's UI thread: a block that takes longer than a stroke can wait.

The plugin runs on Krita's UI thread; anything slow there makes brush strokes stutter.
`timed` logs the blocks that took longer than `SLOW_MS`, so a painter's log shows where.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["SLOW_MS", "timed"]

log = logging.getLogger(__name__)

SLOW_MS = 50.0
"""A UI-thread block longer than this is logged (a stroke stutters at about this)."""


@contextmanager
def timed(what: str) -> Iterator[None]:
    started = time.perf_counter()
    try:
        yield
    finally:
        milliseconds = (time.perf_counter() - started) * 1000
        if milliseconds > SLOW_MS:
            log.info("slow on the UI thread: %s took %.0f ms", what, milliseconds)
