"""Sessions and their jobs: admission, queue positions, cancel, and results held until delivered.

Everything here runs on the event loop. Jobs run on an `Executor` (this machine's
worker thread, or a cluster's GPUs), whose reports arrive on the loop as the
`on_*` methods. A session outlives its connection: what finishes while its client is
away is kept for the retention window and handed to the next connection that says
hello with the session's id.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from protocol import DuplicateJob, ErrorInfo, QueueFull, UnknownJob

from .executor import Executor
from .job import Job, JobResult, JobState
from .runner import Preview

log = logging.getLogger(__name__)


class Delivery(Protocol):
    """Where a session's reports go while its client is connected (the connection)."""

    def deliver_progress(
        self, job: Job, step: int, total: int, preview: Preview | None
    ) -> None: ...

    def deliver_result(self, job: Job, result: JobResult) -> None: ...

    def deliver_done(self, job: Job) -> None: ...


@dataclass
class Session:
    """A client's jobs across reconnections.

    Attributes:
        id: random, unguessable; the client resumes with it.
        connection: where reports go now, or None while the client is away.
        jobs: unfinished jobs, and finished ones whose end is not delivered yet.
        waiting: reports kept while away, in order: (job, result) or (job, None) for done.
        away_since: when the client went away (None while connected).
    """

    id: str
    connection: Delivery | None = None
    jobs: dict[str, Job] = field(default_factory=dict)
    waiting: list[tuple[Job, JobResult | None]] = field(default_factory=list)
    away_since: float | None = None

    @property
    def unfinished(self) -> int:
        return sum(1 for job in self.jobs.values() if not job.state.finished)


class JobQueue:
    """Admits jobs, hands them to the executor, routes its reports to sessions.

    Args:
        executor: where jobs run (it reports back through this queue's `on_*` methods).
        loop: the event loop everything here runs on.
        max_queued_jobs: unfinished jobs allowed per session.
        retention_seconds: how long a session without a client keeps its results.
        clock: monotonic time source (tests).
    """

    def __init__(
        self,
        executor: Executor,
        loop: asyncio.AbstractEventLoop,
        *,
        max_queued_jobs: int,
        retention_seconds: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.executor = executor
        self.loop = loop
        self.max_queued_jobs = max_queued_jobs
        self.retention_seconds = retention_seconds
        self.clock = clock
        self.sessions: dict[str, Session] = {}

    def start(self) -> None:
        self.executor.start(self, self.loop)

    async def stop(self, timeout: float = 10.0) -> bool:
        """Drop queued jobs, interrupt the running ones, wait for the executor."""
        for session in self.sessions.values():
            for job in session.jobs.values():
                job.cancel_requested.set()
        return await self.executor.stop(timeout)

    # Sessions ---------------------------------------------------------------------------

    def open_session(self, session_id: str | None, connection: Delivery) -> Session:
        """The session a hello names (if it still exists), else a new one, now connected.

        Reports kept while the client was away wait for `deliver_waiting`, so the
        connection can send its `welcome` first.
        """
        self.expire_sessions()
        session = self.sessions.get(session_id) if session_id else None
        if session is None:
            session = Session(id=secrets.token_urlsafe(16))
            self.sessions[session.id] = session
        session.connection = connection  # the newest connection takes the session over
        session.away_since = None
        return session

    def deliver_waiting(self, session: Session) -> None:
        """Hand the reports kept while the client was away to its new connection."""
        waiting, session.waiting = session.waiting, []
        for job, result in waiting:
            if result is not None:
                assert session.connection is not None
                session.connection.deliver_result(job, result)
            else:
                self._deliver_done(session, job)

    def close_session(self, session: Session, connection: Delivery) -> None:
        """The connection went away; its session waits for the client to come back."""
        if session.connection is connection:
            session.connection = None
            session.away_since = self.clock()

    def expire_sessions(self) -> None:
        """Forget sessions whose client has been away longer than the retention window."""
        now = self.clock()
        for session in list(self.sessions.values()):
            if session.away_since is not None and now - session.away_since > self.retention_seconds:
                for job in session.jobs.values():
                    job.cancel_requested.set()
                    if not job.state.finished:
                        self.executor.cancel(job)
                        job.state = JobState.CANCELLED
                del self.sessions[session.id]
                log.info("session %s expired", session.id)

    # Jobs -------------------------------------------------------------------------------

    def submit(self, session: Session, job: Job) -> int:
        """Queue a validated job; returns its position (0 = next to run).

        Raises:
            DuplicateJob: the session has an unfinished job with this id.
            QueueFull: the session has `max_queued_jobs` unfinished jobs, or the executor
                holds as many waiting jobs as it may.
        """
        existing = session.jobs.get(job.id)
        if existing is not None and not existing.state.finished:
            raise DuplicateJob(f"job {job.id} is already queued or running", job=job.id)
        if session.unfinished >= self.max_queued_jobs:
            raise QueueFull(
                f"{session.unfinished} jobs are unfinished; the limit is {self.max_queued_jobs}",
                job=job.id,
            )
        position = self.executor.submit(job)  # its reports come later, on the loop
        session.jobs[job.id] = job
        return position

    def position(self, job: Job) -> int:
        return self.executor.position(job)

    def cancel(self, session: Session, job_id: str) -> None:
        """Cancel a queued job at once, a running one within one sampler step.

        Raises:
            UnknownJob: the session has no unfinished job with this id.
        """
        job = session.jobs.get(job_id)
        if job is None or job.state.finished:
            raise UnknownJob(f"no unfinished job {job_id}", job=job_id)
        job.cancel_requested.set()
        self.executor.cancel(job)
        if job.state is JobState.QUEUED:  # it never started: over at once
            self._end(job, JobState.CANCELLED, None)

    # Reports from the executor, on the loop -------------------------------------------------

    def on_started(self, job: Job) -> None:
        if job.state is JobState.QUEUED:
            job.state = JobState.RUNNING

    def on_progress(self, job: Job, step: int, total: int, preview: Preview | None) -> None:
        session = self.sessions.get(job.session_id)
        if job.state is JobState.RUNNING and session is not None and session.connection is not None:
            session.connection.deliver_progress(job, step, total, preview)

    def on_result(self, job: Job, result: JobResult) -> None:
        if job.state.finished:
            return
        job.results.append(result)

    def on_finished(self, job: Job, state: JobState, error: ErrorInfo | None) -> None:
        if job.state.finished:
            return  # already ended (cancelled while queued, or its session expired)
        self._end(job, state, error)

    def _end(self, job: Job, state: JobState, error: ErrorInfo | None) -> None:
        job.state = state
        job.error = error
        session = self.sessions.get(job.session_id)
        if session is None:
            return
        if session.connection is None:
            if state is JobState.COMPLETED:
                session.waiting.extend((job, result) for result in job.results)
            session.waiting.append((job, None))
            return
        if state is JobState.COMPLETED:
            for result in job.results:
                session.connection.deliver_result(job, result)
        self._deliver_done(session, job)

    def _deliver_done(self, session: Session, job: Job) -> None:
        assert session.connection is not None
        session.connection.deliver_done(job)
        job.results.clear()
        if session.jobs.get(job.id) is job:
            del session.jobs[job.id]
