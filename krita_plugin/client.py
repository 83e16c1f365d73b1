"""The backend client: one websocket, reconnecting by itself, jobs as awaitables.

All protocol work is `protocol.ClientProtocol` (sans-I/O); this module only moves its
frames over a vendored `websockets` connection on the running asyncio loop (inside
Krita, the loop `eventloop.py` steps from a QTimer, so nothing here ever blocks the UI).
The client knows no widgets and no Krita: it reports its connection state through a
callback and hands job results back as bytes.

A connection that drops is opened again after a short, growing delay. The session id
of the last `welcome` is sent in the next `hello`, so jobs the backend accepted keep
running and their results arrive after the reconnect; if the backend restarted (a new
session), those jobs are lost and fail with `JobLost`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from enum import Enum

from .errors import JobCancelled, JobFailed, JobLost, NotConnected
from .pixels import Buffer
from .recipes import FAMILY_LABELS
from .timing import timed
from .user_messages import for_close, for_connection_failure, for_error, server_label
from .vendor import protocol, websocket_client, websocket_exceptions

__all__ = ["CLIENT_NAME", "BackendClient", "ConnectionState", "JobResult", "new_job_id"]

log = logging.getLogger(__name__)

CLIENT_NAME = "krita-layerdiffuse/0.1.0"
RETRY_DELAYS = (0.5, 1.0, 2.0, 3.0, 5.0)
"""Seconds before each reconnect attempt; the last one repeats."""
SEND_CHUNK_BYTES = 1 << 20
"""Image bytes per frame the plugin sends: websockets masks each frame in pure Python
inside Krita (about 15 ms per MiB on a small machine), and the UI thread runs between
frames."""
MAX_FRAME_BYTES = 1 << 28
"""Largest frame accepted from the backend (its chunks are 4 MiB by default)."""

ProgressCallback = Callable[[int, int, "tuple[int, int, bytes] | None"], None]


class ConnectionState(Enum):
    DISCONNECTED = "disconnected"
    CONNECTING = "connecting"
    CONNECTED = "connected"


@dataclass(frozen=True)
class JobResult:
    """One result of a job: its seed and its layers' bytes (in the submit's format)."""

    index: int
    seed: int
    layers: dict[protocol.LayerRole, Buffer]
    """The received buffers themselves (memoryviews), not copies."""
    stack: tuple[Buffer, ...] = ()
    """A split's layers (role `layer`), bottom first; empty for the other methods."""


@dataclass
class _PendingJob:
    id: str
    on_progress: ProgressCallback | None
    future: asyncio.Future[list[JobResult]]
    accepted: bool = False
    results: list[JobResult] = field(default_factory=list)


def new_job_id() -> str:
    """A fresh job id."""
    return f"krita-{uuid.uuid4().hex[:16]}"


class BackendClient:
    """Keeps one connection to the backend open and runs jobs over it.

    Args:
        url: the backend's address, `ws://host:port`.
        token: sent as `Authorization: Bearer …` when not empty.
        on_state: called with the new state and a sentence for the painter whenever
            the connection state (or its reason) changes.
        retry_delays: seconds between reconnect attempts; the last repeats.

    Attributes:
        state: the connection state.
        status: the sentence describing it.
        welcome: the backend's last `welcome` (kept while reconnecting).
    """

    def __init__(
        self,
        url: str,
        token: str = "",
        *,
        on_state: Callable[[ConnectionState, str], None] | None = None,
        retry_delays: Sequence[float] = RETRY_DELAYS,
    ) -> None:
        self.url = url
        self.token = token
        self.on_state = on_state
        self.retry_delays = tuple(retry_delays)
        self.state = ConnectionState.DISCONNECTED
        self.status = "Not connected."
        self.welcome: protocol.Welcome | None = None
        self._session: str | None = None
        self._protocol: protocol.ClientProtocol | None = None
        self._websocket: websocket_client.ClientConnection | None = None
        self._send_lock = asyncio.Lock()
        self._jobs: dict[str, _PendingJob] = {}
        self._cancel_later: set[str] = set()
        self._wake = asyncio.Event()
        self._connected = asyncio.Event()
        self._server_error: str | None = None
        self._reconfigured = False
        self._welcomed_here = False

    # Connection ---------------------------------------------------------------------------

    async def run(self) -> None:
        """Connect, serve, reconnect, until cancelled."""
        attempt = 0
        while True:
            self._set_state(ConnectionState.CONNECTING, f"Connecting to {server_label(self.url)}…")
            self._server_error = None
            self._reconfigured = False
            self._welcomed_here = False
            try:
                close_code = await self._serve_connection()
                if close_code == protocol.CloseCode.IDLE and self._server_error is None:
                    # The backend closes idle connections (docs/protocol.md): nothing is
                    # wrong, so no red dot; connect again at once.
                    log.info("closed by the backend as idle; connecting again")
                    continue
                sentence = self._server_error or for_close(self.url, close_code)
            except asyncio.CancelledError:
                for job_id in list(self._jobs):
                    self._finish(job_id, JobLost("The plugin stopped; nothing was inserted."))
                raise
            except Exception as error:  # every failure to connect or to stay connected
                log.info("connection to %s: %r", self.url, error)
                sentence = for_connection_failure(self.url, error)
            finally:
                self._websocket = None
                self._protocol = None
                self._connected.clear()
            self._fail_unaccepted(
                "The connection to the backend dropped while the job was being sent. "
                "Nothing was inserted; generate again."
            )
            if self._reconfigured:  # a new address or token: connect again at once
                continue
            self._set_state(ConnectionState.DISCONNECTED, sentence)
            if self._welcomed_here:  # it worked until now: retry quickly
                attempt = 0
            delay = self.retry_delays[min(attempt, len(self.retry_delays) - 1)]
            attempt += 1
            self._wake.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._wake.wait(), delay)

    async def configure(self, url: str, token: str) -> None:
        """Use another address or token: the connection is opened again with them."""
        if (url, token) == (self.url, self.token):
            return
        self.url, self.token = url, token
        self._reconfigured = True
        self._wake.set()
        if self._websocket is not None:
            await self._websocket.close()

    async def wait_connected(self, timeout: float | None = None) -> protocol.Welcome:
        """Wait until the backend said welcome (for tests and scripts)."""
        await asyncio.wait_for(self._connected.wait(), timeout)
        assert self.welcome is not None
        return self.welcome

    async def _serve_connection(self) -> int | None:
        """One connection, until it closes; returns the backend's close code, if any."""
        url, token = self.url, self.token
        headers = {"Authorization": f"Bearer {token}"} if token else None
        async with websocket_client.connect(
            url,
            additional_headers=headers,
            user_agent_header=CLIENT_NAME,
            compression=None,
            proxy=None,
            max_size=MAX_FRAME_BYTES,
            open_timeout=10,
        ) as websocket:
            if (url, token) != (self.url, self.token):
                self._reconfigured = True  # changed while connecting: start again
                return None
            # Received images fault their pages in a frame at a time, not 64 MiB at once.
            client = protocol.ClientProtocol(CLIENT_NAME, prefault_images=False)
            self._websocket, self._protocol = websocket, client
            await self._send(client.send_hello(self._session))
            try:
                await self._receive(websocket, client)
            except websocket_exceptions.ConnectionClosedError as closed:
                if closed.rcvd is None:  # dropped, not closed by the backend
                    raise
                return closed.rcvd.code
        return websocket.close_code

    async def _receive(
        self, websocket: websocket_client.ClientConnection, client: protocol.ClientProtocol
    ) -> None:
        """Handle the backend's frames until the connection closes."""
        async for message in websocket:
            try:
                with timed(f"decoding a {len(message)}-byte frame"):
                    if isinstance(message, str):
                        events = client.receive_text(message)
                    else:
                        events = client.receive_binary(message)
            except protocol.UnsupportedVersion:
                raise
            except protocol.ProtocolError as error:
                log.warning("refused a frame from the backend: %s", error)
                if error.job is not None:
                    self._finish(error.job, self._job_failed(error.code.value, str(error)))
                continue
            for event in events:
                await self._handle(event)

    async def _handle(self, event: protocol.ClientEvent) -> None:
        if isinstance(event, protocol.WelcomeReceived):
            await self._welcomed(event.welcome)
        elif isinstance(event, protocol.JobAccepted):
            job = self._jobs.get(event.accepted.job)
            if job is not None:
                job.accepted = True
        elif isinstance(event, protocol.ProgressReceived):
            job = self._jobs.get(event.progress.job)
            if job is not None and job.on_progress is not None:
                progress = event.progress
                preview = None
                if progress.preview is not None and event.preview is not None:
                    preview = (
                        progress.preview.width,
                        progress.preview.height,
                        bytes(event.preview),
                    )
                job.on_progress(progress.step, progress.total, preview)
        elif isinstance(event, protocol.ResultReceived):
            job = self._jobs.get(event.result.job)
            if job is not None:
                # The received buffers themselves: a copy of a 4096² layer would hold the
                # UI thread for 60 ms.
                layers = dict(event.images.items())
                result = JobResult(event.result.index, event.result.seed, layers, event.stack)
                job.results.append(result)
        elif isinstance(event, protocol.JobDone):
            self._done(event.done)
        elif isinstance(event, protocol.ErrorReceived):
            error = event.error
            log.warning("backend error %s: %s (job %s)", error.code.value, error.message, error.job)
            if error.job is None:
                self._server_error = for_error(error.code.value, error.message)
                return
            job = self._jobs.get(error.job)
            refused = error.code is not protocol.ErrorCode.DUPLICATE_JOB
            if job is not None and refused and not job.accepted:
                self._finish(error.job, self._job_failed(error.code.value, error.message))

    async def _welcomed(self, welcome: protocol.Welcome) -> None:
        if self._session is not None and welcome.session != self._session:
            lost = JobLost(
                "The backend restarted, and the running job was lost with it. "
                "Nothing was inserted; generate again."
            )
            for job_id in list(self._jobs):
                self._finish(job_id, lost)
            self._cancel_later.clear()
        self._session = welcome.session
        self._welcomed_here = True
        self.welcome = welcome
        model = welcome.model
        family = FAMILY_LABELS[model.family]
        demo = " — demo models, pictures are noise" if model.demo else ""
        self._set_state(
            ConnectionState.CONNECTED,
            f"Connected to {server_label(self.url)}: {family}{demo}.",
        )
        self._connected.set()
        for job_id in sorted(self._cancel_later):
            await self._send(self._require_protocol().send_cancel(job_id))
        self._cancel_later.clear()

    def _set_state(self, state: ConnectionState, status: str) -> None:
        if (state, status) == (self.state, self.status):
            return
        self.state, self.status = state, status
        log.info("%s: %s", state.value, status)
        if self.on_state is not None:
            self.on_state(state, status)

    # Jobs ---------------------------------------------------------------------------------

    async def run_job(
        self,
        submit: protocol.Submit,
        images: dict[str, bytes],
        on_progress: ProgressCallback | None = None,
    ) -> list[JobResult]:
        """Submit a job and wait for its results.

        Args:
            submit: the job (its id must be new; see `new_job_id`).
            images: the input images' bytes by image id.
            on_progress: called with (step, total, preview) where preview is
                (width, height, RGBA8 bytes) or None.

        Returns:
            The job's results, in order.

        Raises:
            NotConnected: no connection to the backend.
            JobFailed: the backend (or the limits it advertised) refused or failed the job.
            JobCancelled: `cancel` was called, or the backend cancelled it.
            JobLost: the connection dropped before the job was accepted, or the backend
                restarted with it.
        """
        client = self._protocol
        if client is None or client.welcome is None or self.state is not ConnectionState.CONNECTED:
            raise NotConnected(self.status)
        try:
            frames = client.submit_frames(submit, images, SEND_CHUNK_BYTES)
        except protocol.ProtocolError as error:
            raise self._job_failed(error.code.value, str(error)) from error
        job = _PendingJob(submit.job, on_progress, asyncio.get_running_loop().create_future())
        self._jobs[submit.job] = job
        request = submit.request
        log.info(
            "job %s: %s, %dx%d, %d input(s)%s",
            submit.job,
            request.method.value,
            request.width,
            request.height,
            len(submit.inputs),
            "" if request.lora is None else f", LoRA {request.lora} ({request.steps} steps)",
        )
        try:
            try:
                await self._send(frames)
            except (OSError, websocket_exceptions.ConnectionClosed) as error:
                log.info("job %s: not sent: %r", submit.job, error)
                self._finish(
                    submit.job,
                    JobLost(
                        "The connection to the backend dropped while the job was being sent. "
                        "Nothing was inserted; generate again."
                    ),
                )
            return await job.future
        finally:
            self._jobs.pop(submit.job, None)

    async def cancel(self, job_id: str) -> None:
        """Cancel a job: it ends with `JobCancelled` and none of its results are kept."""
        job = self._jobs.get(job_id)
        if job is None:
            return
        client = self._protocol
        if client is not None and client.welcome is not None:
            try:
                await self._send(client.send_cancel(job_id))
            except Exception as error:  # the connection went away: cancel after reconnect
                log.info("cancel of %s not sent: %r", job_id, error)
                self._cancel_later.add(job_id)
        else:
            self._cancel_later.add(job_id)
        self._finish(job_id, JobCancelled())

    def _done(self, done: protocol.Done) -> None:
        job = self._jobs.get(done.job)
        if job is None:
            return
        if done.status is protocol.JobStatus.COMPLETED:
            log.info("job %s: completed with %d result(s)", done.job, len(job.results))
            self._finish(done.job, job.results)
        elif done.status is protocol.JobStatus.CANCELLED:
            self._finish(done.job, JobCancelled())
        else:
            error = done.error
            code = error.code.value if error is not None else "internal_error"
            message = error.message if error is not None else ""
            self._finish(done.job, self._job_failed(code, message))

    def _finish(self, job_id: str, outcome: list[JobResult] | Exception) -> None:
        job = self._jobs.pop(job_id, None)
        if job is None or job.future.done():
            return
        if isinstance(outcome, Exception):
            log.info("job %s: %s", job_id, outcome)
            job.future.set_exception(outcome)
        else:
            job.future.set_result(outcome)

    def _fail_unaccepted(self, sentence: str) -> None:
        for job_id, job in list(self._jobs.items()):
            if not job.accepted:
                self._finish(job_id, JobLost(sentence))

    @staticmethod
    def _job_failed(code: str, message: str) -> JobFailed:
        return JobFailed(for_error(code, message), code, message)

    def _require_protocol(self) -> protocol.ClientProtocol:
        if self._protocol is None:
            raise NotConnected(self.status)
        return self._protocol

    async def _send(self, frames: Iterable[str | bytes]) -> None:
        websocket = self._websocket
        if websocket is None:
            raise NotConnected(self.status)
        async with self._send_lock:
            for index, frame in enumerate(frames):
                if index:
                    # Let Qt run between frames (each is made when taken, see
                    # `submit_frames`): websockets sends without yielding while the
                    # socket's buffer has room.
                    await asyncio.sleep(0)
                with timed(f"sending a {len(frame)}-byte frame"):
                    await websocket.send(frame)
