"""The websocket server: bind, admit connections safely, serve, shut down cleanly.

Admission happens in the HTTP handshake, before any websocket frame: a token (when
configured) must match in constant time (401 otherwise), a browser `Origin` is refused
unless allowed (403), and a client that could get no slot is refused (503). The caps on
connections and the hello and idle deadlines are `admission.py`'s. Compression is off:
permessage-deflate costs ~0.5 s per 16 MiB layer (performance.md §6).
"""

from __future__ import annotations

import asyncio
import hmac
import logging
from collections.abc import Callable
from http import HTTPStatus
from typing import TYPE_CHECKING

from websockets.asyncio.server import Server as WebsocketServer
from websockets.asyncio.server import ServerConnection, serve
from websockets.http11 import Request, Response

from protocol import (
    PROTOCOL_VERSION,
    Capabilities,
    Limits,
    PixelFormat,
    ResizeMode,
    Sampler,
    Welcome,
)

from ..config import ServerConfig
from ..jobs.executor import Executor, LocalExecutor
from ..jobs.queue import JobQueue
from ..jobs.requests import runnable_methods
from .admission import Admission
from .connection import Connection

if TYPE_CHECKING:
    from ..model_set import ModelSet

log = logging.getLogger(__name__)

SERVER_NAME = "krita-layerdiffuse/0.1.0"
# Frames up to twice the limits reach the protocol, which refuses what is over them
# with an error and carries on; only frames beyond that are cut off by websockets
# (close code 1009), so a hostile peer cannot make the server buffer more.
FRAME_SIZE_TOLERANCE = 2


class LayerDiffuseServer:
    """Owns the job queue and the websocket server of one `layerdiffuse serve`.

    Args:
        config: bind address, token, origins, limits, timeouts.
        models: the loaded model set, run by this machine's GPU worker thread; or
        executor: where jobs run instead (a cluster's GPUs: `backend.cluster`). Exactly
            one of the two.
    """

    def __init__(
        self,
        config: ServerConfig,
        models: ModelSet | None = None,
        *,
        executor: Executor | None = None,
    ) -> None:
        if executor is None:
            if models is None:
                raise ValueError("give the models or an executor")
            executor = LocalExecutor(models, config.preview_side)
        elif models is not None:
            raise ValueError("give the models or an executor, not both")
        self.config = config
        self.executor: Executor = executor
        self.queue: JobQueue | None = None
        self._server: WebsocketServer | None = None
        self.admission = Admission(config)
        self._housekeeping: asyncio.Task[None] | None = None
        self._watch: asyncio.Task[None] | None = None

    @property
    def port(self) -> int:
        """The bound port (useful with port 0)."""
        assert self._server is not None
        return self._server.sockets[0].getsockname()[1]

    def welcome(self) -> Welcome:
        model = self.executor.model
        return Welcome(
            protocol=PROTOCOL_VERSION,
            server=SERVER_NAME,
            session="",
            model=model,
            capabilities=Capabilities(
                methods=runnable_methods(model.family),
                families=(model.family,),
                samplers=tuple(Sampler),
                resize_modes=tuple(ResizeMode),
                formats=tuple(PixelFormat),
                loras=tuple(self.executor.loras.values()),
            ),
            limits=self.config.limits,
        )

    async def start(self) -> None:
        """Start the executor and listen."""
        config = self.config
        limits: Limits = config.limits
        self.queue = JobQueue(
            self.executor,
            asyncio.get_running_loop(),
            max_queued_jobs=limits.max_queued_jobs,
            retention_seconds=config.retention_seconds,
        )
        self.queue.start()
        self._server = await serve(
            self._handle,
            config.host,
            config.port,
            compression=None,
            origins=[None, *config.allowed_origins],
            process_request=self._admit,
            create_connection=self.admission.connection_class(),
            open_timeout=config.hello_timeout_seconds,
            max_size=FRAME_SIZE_TOLERANCE * max(limits.max_text_bytes, limits.max_chunk_bytes),
            max_queue=64,
            ping_interval=config.ping_interval_seconds,
            ping_timeout=config.ping_interval_seconds,
        )
        self._housekeeping = asyncio.create_task(self._expire_sessions())
        self._watch = asyncio.create_task(self.admission.watch())
        log.info("listening on ws://%s:%d", config.host, self.port)

    async def stop(self, timeout: float = 10.0) -> None:
        """Stop accepting, drop queued jobs, interrupt the running ones, close connections."""
        for task in (self._housekeeping, self._watch):
            if task is not None:
                task.cancel()
        if self._server is not None:
            self._server.close()
        if self.queue is not None:
            await self.queue.stop(timeout)
        if self._server is not None:
            await self._server.wait_closed()

    async def _expire_sessions(self) -> None:
        """Forget sessions whose client stayed away past the retention window."""
        assert self.queue is not None
        period = max(1.0, min(60.0, self.config.retention_seconds / 4))
        while True:
            await asyncio.sleep(period)
            self.queue.expire_sessions()

    def _admit(self, connection: ServerConnection, request: Request) -> Response | None:
        token = self.config.token
        if token:
            sent = request.headers.get("Authorization", "")
            expected = f"Bearer {token}"
            if not hmac.compare_digest(sent.encode(), expected.encode()):
                log.warning("refused a connection without the right token")
                return _respond(connection, HTTPStatus.UNAUTHORIZED, "missing or wrong token")
        refusal = self.admission.upgrade_refusal(connection)
        if refusal is not None:
            log.warning("refused a connection: %s", refusal)
            return _respond(connection, HTTPStatus.SERVICE_UNAVAILABLE, refusal)
        return None

    async def _handle(self, websocket: ServerConnection) -> None:
        assert self.queue is not None
        connection = Connection(
            websocket,
            self.queue,
            self.welcome(),
            self.config.upload_timeout_seconds,
            self.admission,
        )
        log.info("%s connected", connection.name)
        await connection.serve()


def _respond(connection: ServerConnection, status: HTTPStatus, text: str) -> Response:
    return connection.respond(status, text + "\n")


async def run_server(
    config: ServerConfig,
    models: ModelSet | None,
    stop: asyncio.Event,
    on_listening: Callable[[int], None] | None = None,
    *,
    executor: Executor | None = None,
) -> None:
    """Serve until `stop` is set; `on_listening(port)` once bound.

    Jobs run on `models` with this machine's worker thread, or on `executor`.
    """
    server = LayerDiffuseServer(config, models, executor=executor)
    await server.start()
    if on_listening is not None:
        on_listening(server.port)
    try:
        await stop.wait()
    finally:
        await server.stop()
