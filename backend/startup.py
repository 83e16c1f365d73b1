"""Importing torch, diffusers and transformers at a command's start, at the least cost.

They create some 380,000 Python objects that live as long as the process. The cyclic
garbage collector walks all of them in each full collection: six while they are
imported (which free a few hundred objects), one or more during a job, and again as
the interpreter exits. On the 2-core dev VM that is 0.65 s of the imports' 3.4 s,
0.2 s a collection during the demo job, and 0.7 s of the exit (docs/benchmarks.md).
With the collector off while they are imported, and what they made frozen afterwards
(`gc.freeze`: kept out of every later collection, so never freed before the exit, as
module-level objects are not anyway), those costs go.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["importing_libraries"]


@contextmanager
def importing_libraries() -> Iterator[None]:
    """Within: the garbage collector is off. After, even on an error: what exists then
    is frozen and the collector is on again as it was."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        if was_enabled:
            gc.enable()
