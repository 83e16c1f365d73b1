"""One client connection: websocket frames ↔ `ServerProtocol` ↔ the job queue.

Frames are received in one loop and answered through one ordered outbox, so a job's
progress, results and `done` arrive in order. Every bad input becomes an `error` (or,
for a job whose id is known, a failed `done`) and the connection carries on; only a
protocol major-version mismatch closes it, and the admission policy (`admission.py`):
no slot at hello, no hello in time, idle too long.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed

from protocol import (
    CancelRequested,
    CloseCode,
    ErrorCode,
    HelloReceived,
    JobStatus,
    JobSubmitted,
    ProtocolError,
    ServerEvent,
    ServerProtocol,
    UnsupportedVersion,
    Welcome,
)

from ..errors import to_wire_error
from ..jobs.job import Job, JobResult, JobState
from ..jobs.queue import JobQueue, Session
from ..jobs.requests import job_from_submit
from .admission import Admission

log = logging.getLogger(__name__)

# Progress frames are dropped (never results) when a slow client has this many waiting,
# so a stalled reader cannot make the server buffer previews without end.
PROGRESS_BACKLOG = 8


@dataclass(frozen=True)
class _Outgoing:
    frames: list[str | bytes]
    progress: bool = False


class Connection:
    """Serves one websocket until it closes.

    Args:
        websocket: the accepted connection.
        queue: the shared job queue.
        welcome: the server's welcome; its session id is replaced per client.
        upload_timeout: seconds a submit's input images may take to arrive.
        admission: gives it a slot at hello, closes it when idle.
    """

    def __init__(
        self,
        websocket: ServerConnection,
        queue: JobQueue,
        welcome: Welcome,
        upload_timeout: float,
        admission: Admission,
    ) -> None:
        self.websocket = websocket
        self.queue = queue
        self.welcome = welcome
        self.upload_timeout = upload_timeout
        self.admission = admission
        self.protocol = ServerProtocol(welcome.limits)
        self.session: Session | None = None
        self._outbox: asyncio.Queue[_Outgoing | None] = asyncio.Queue()
        self._progress_waiting = 0
        self._sending = False
        self._last_active = admission.clock()
        self._refusal: str | None = None
        host, port = (websocket.remote_address or ("?", "?"))[:2]
        self.name = f"{host}:{port}"

    async def serve(self) -> None:
        """Receive until the client goes; its session and jobs stay for a while."""
        sender = asyncio.create_task(self._send_loop())
        try:
            async for message in self.websocket:
                self._last_active = self.admission.clock()
                if not await self._receive(message):
                    break
        except ConnectionClosed:
            pass
        finally:
            if self.session is not None:
                self.queue.close_session(self.session, self)
            self._outbox.put_nowait(None)
            await asyncio.gather(sender, return_exceptions=True)
            if self._refusal is not None:
                await self.websocket.close(CloseCode.TOO_MANY_CONNECTIONS, self._refusal)
            log.info("%s disconnected", self.name)

    def idle_for(self, now: float) -> float:
        """Seconds without work and without a frame from the client, at `now`.

        Work is a job of its session not finished or not yet delivered, an input image
        arriving, or frames waiting to be sent; while there is work it is 0, and the idle
        time counts from when the work ended or the client's last frame, whichever is later.
        """
        session = self.session
        busy = (
            bool(self.protocol.unfinished_jobs)
            or self._sending
            or not self._outbox.empty()
            or (
                session is not None
                and session.connection is self
                and bool(session.jobs or session.waiting)
            )
        )
        if busy:
            self._last_active = now
            return 0.0
        return max(0.0, now - self._last_active)

    async def _receive(self, message: str | bytes) -> bool:
        """Handle one frame; False when the connection must close."""
        try:
            if isinstance(message, str):
                receiving = self.protocol.receiving_jobs
                events = self.protocol.receive_text(message)
                for job in self.protocol.receiving_jobs - receiving:
                    asyncio.get_running_loop().call_later(
                        self.upload_timeout, self._upload_expired, job
                    )
            else:
                events = self.protocol.receive_binary(message)
            for event in events:
                await self._handle(event)
                if self._refusal is not None:
                    return False
        except UnsupportedVersion as error:
            self._send(self.protocol.send_error(error.code, str(error)))
            return False
        except ProtocolError as error:
            # A refusal naming a job not yet accepted ends that job (but duplicate_job,
            # which names another job that goes on).
            self._send(self.protocol.send_error(error.code, str(error), error.job))
        except Exception:
            log.exception("%s: unexpected error", self.name)
            info = to_wire_error(None)
            self._send(self.protocol.send_error(info.code, info.message))
        return True

    async def _handle(self, event: ServerEvent) -> None:
        if isinstance(event, HelloReceived):
            self._refusal = self.admission.establish(self)
            if self._refusal is not None:
                return
            self.session = self.queue.open_session(event.hello.session, self)
            self._send(self.protocol.send_welcome(self._welcome(self.session.id)))
            self.queue.deliver_waiting(self.session)
            log.info("%s: session %s", self.name, self.session.id)
            return
        assert self.session is not None  # the protocol refuses anything before hello
        if isinstance(event, JobSubmitted):
            job = await asyncio.to_thread(
                job_from_submit,
                event,
                self.session.id,
                self.queue.executor.model,
                self.queue.executor.loras,
            )
            position = self.queue.submit(self.session, job)
            self._send(self.protocol.send_accepted(job.id, position))
        elif isinstance(event, CancelRequested):
            if event.submitted:
                self.queue.cancel(self.session, event.job)
            else:  # its images were still arriving: the protocol dropped it
                self._send(self.protocol.send_done(event.job, JobStatus.CANCELLED))

    def _upload_expired(self, job: str) -> None:
        if self.protocol.abandon(job):
            message = (
                f"the input images of job {job} did not arrive within {self.upload_timeout:g} s"
            )
            self._send(self.protocol.send_error(ErrorCode.BAD_IMAGE, message, job))

    def _welcome(self, session_id: str) -> Welcome:
        template = self.welcome
        return Welcome(
            protocol=template.protocol,
            server=template.server,
            session=session_id,
            model=template.model,
            capabilities=template.capabilities,
            limits=template.limits,
        )

    # Delivery from the job queue (on the loop) ------------------------------------------

    def deliver_progress(
        self, job: Job, step: int, total: int, preview: tuple[int, int, bytes] | None
    ) -> None:
        if self._progress_waiting >= PROGRESS_BACKLOG:
            return
        self._progress_waiting += 1
        self._send(self.protocol.send_progress(job.id, step, total, preview), progress=True)

    def deliver_result(self, job: Job, result: JobResult) -> None:
        layers = [(layer.role, layer.width, layer.height, layer.data) for layer in result.layers]
        frames = self.protocol.send_result(
            job.id, result.index, result.seed, layers, job.result_format
        )
        self._send(frames)

    def deliver_done(self, job: Job) -> None:
        error = job.error if job.state is JobState.FAILED else None
        self._send(self.protocol.send_done(job.id, job.state.status, error))

    # Outbox: one sender keeps every frame in order ---------------------------------------

    def _send(self, frames: list[str | bytes], progress: bool = False) -> None:
        self._outbox.put_nowait(_Outgoing(frames, progress))

    async def _send_loop(self) -> None:
        while (outgoing := await self._outbox.get()) is not None:
            if outgoing.progress:
                self._progress_waiting -= 1
            self._sending = True
            try:
                for frame in outgoing.frames:
                    await self.websocket.send(frame)
            except ConnectionClosed:
                return
            finally:
                self._sending = False
                self._last_active = self.admission.clock()
