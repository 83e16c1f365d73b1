"""Fair turns between clients for jobs waiting on several GPUs.

Each session's jobs wait in a line of their own, in the order they came. When a GPU
frees, the next job comes from the session with the fewest jobs running; among equals,
from the one whose last turn is longest ago (a session whose line was empty counts as
never served, and goes first). A session already running `per_session` jobs waits.
So one painter's batch cannot take every GPU, and a painter who just arrived goes next.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping

from .job import Job


class Turns:
    """The jobs waiting for a GPU, handed out in fair turns between sessions.

    Args:
        per_session: jobs one session may have running at once (at least 1).
    """

    def __init__(self, per_session: int) -> None:
        if per_session < 1:
            raise ValueError(f"per_session {per_session} is not at least 1")
        self.per_session = per_session
        self._lines: dict[str, deque[Job]] = {}
        self._last_turn: dict[str, int] = {}
        self._turns = 0

    def __len__(self) -> int:
        return sum(len(line) for line in self._lines.values())

    def __contains__(self, job: object) -> bool:
        return isinstance(job, Job) and job in self._lines.get(job.session_id, ())

    def waiting(self) -> list[Job]:
        """Every waiting job, session by session."""
        return [job for line in self._lines.values() for job in line]

    def add(self, job: Job) -> None:
        """Put a job at the end of its session's line."""
        self._lines.setdefault(job.session_id, deque()).append(job)

    def remove(self, job: Job) -> bool:
        """Take a waiting job out (cancelled); False if it was not waiting."""
        line = self._lines.get(job.session_id)
        if line is None or job not in line:
            return False
        line.remove(job)
        if not line:
            self._drop(job.session_id)
        return True

    def take(self, running: Mapping[str, int]) -> Job | None:
        """The job whose turn it is, out of its line; None if every waiting session is at
        its cap (or nothing waits).

        Args:
            running: jobs running now, by session id (missing: none).
        """
        session = self._next_session(self._lines, running, self.per_session)
        if session is None:
            return None
        job = self._lines[session].popleft()
        self._turns += 1
        self._last_turn[session] = self._turns
        if not self._lines[session]:
            self._drop(session)
        return job

    def position(self, job: Job, running: Mapping[str, int]) -> int:
        """How many waiting jobs go before `job` if turns go on as now (0: it is next).

        Caps are left out: they only make a session wait for its own jobs.
        """
        lines = {session: list(line) for session, line in self._lines.items()}
        counts = dict(running)
        last = dict(self._last_turn)
        for position in range(len(self)):
            session = self._next_session(lines, counts, None, last)
            assert session is not None
            if lines[session].pop(0) is job:
                return position
            if not lines[session]:
                del lines[session]
            counts[session] = counts.get(session, 0) + 1
            last[session] = self._turns + position + 1
        raise ValueError(f"job {job.label} is not waiting")

    def _drop(self, session: str) -> None:
        del self._lines[session]
        self._last_turn.pop(session, None)

    def _next_session(
        self,
        lines: Mapping[str, object],
        running: Mapping[str, int],
        cap: int | None,
        last_turn: Mapping[str, int] | None = None,
    ) -> str | None:
        last_turn = self._last_turn if last_turn is None else last_turn
        waiting = [
            session
            for session in lines  # in the order sessions first queued: ties go to the oldest
            if cap is None or running.get(session, 0) < cap
        ]
        if not waiting:
            return None
        return min(waiting, key=lambda s: (running.get(s, 0), last_turn.get(s, 0)))
