"""An asyncio loop inside Krita's Qt event loop, stepped by a QTimer.

Krita owns the main thread and runs Qt's loop; a second loop cannot run there
continuously. So the plugin keeps a private asyncio loop that never runs on its own:
every tick of a `QTimer` lets it do what is ready (callbacks, finished socket reads and
writes: the selector is polled without waiting) and returns to Qt at once. Coroutines
started with `run()` make progress tick by tick; nothing ever blocks the UI, and there
is no nested `processEvents` (which breaks layer activation in Krita, see krita.md §4.3b).

The tick is 20 ms while idle (keep-alive pings, reconnect timers) and 2 ms while `busy`
(a job's frames are streaming: asyncio reads at most 256 KiB per socket per step).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any, TypeVar

from .qt import QTimer
from .timing import timed

__all__ = ["EventLoop"]

log = logging.getLogger(__name__)

IDLE_INTERVAL_MS = 20
BUSY_INTERVAL_MS = 2

T = TypeVar("T")


class EventLoop:
    """A private asyncio loop stepped from Qt; create it, then `start()`."""

    def __init__(self) -> None:
        self.loop: asyncio.AbstractEventLoop | None = None
        self._timer: QTimer | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._busy = 0

    def start(self) -> None:
        """Create the loop and start stepping it."""
        self.loop = asyncio.new_event_loop()
        self.loop.set_exception_handler(_log_exception)
        self._timer = QTimer()
        self._timer.setInterval(IDLE_INTERVAL_MS)
        self._timer.timeout.connect(self.step)
        self._timer.start()

    def step(self) -> None:
        """Run everything that is ready, then return (one Qt timer tick)."""
        loop = self.loop
        if loop is None or loop.is_running() or loop.is_closed():
            return
        loop.call_soon(loop.stop)
        with timed("one step of the plugin's event loop"):
            loop.run_forever()

    def run(self, coroutine: Coroutine[Any, Any, T]) -> asyncio.Task[T]:
        """Start a coroutine as a task on the loop (it runs from the next tick on)."""
        if self.loop is None:
            raise RuntimeError("the event loop is not started")
        task = self.loop.create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def set_busy(self, busy: bool) -> None:
        """Tick fast while data is streaming (calls nest: busy until every True is undone)."""
        self._busy = max(0, self._busy + (1 if busy else -1))
        if self._timer is not None:
            self._timer.setInterval(BUSY_INTERVAL_MS if self._busy else IDLE_INTERVAL_MS)

    def stop(self) -> None:
        """Cancel every task, let them finish their cleanup, close the loop."""
        if self._timer is not None:
            self._timer.stop()
            self._timer = None
        loop = self.loop
        if loop is None or loop.is_closed():
            return
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            done = asyncio.wait(list(self._tasks), timeout=2.0)
            loop.run_until_complete(done)
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()
        self.loop = None


def _log_exception(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    error = context.get("exception")
    log.error("%s", context.get("message", "asyncio error"), exc_info=error)
