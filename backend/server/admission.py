"""Who may hold a connection, and for how long: the server's caps and deadlines.

A connection is *pending* from its TCP connection until its `hello` (the HTTP upgrade,
then the hello), and *established* after it:

- At most `max_pending_connections` are pending; one more closes the oldest pending
  one (`CloseCode.EVICTED`), so clients that dawdle cannot crowd out one that completes
  its handshake in milliseconds. A pending connection has `hello_timeout_seconds` from
  its TCP connection; then it is closed (`HELLO_TIMEOUT`), or dropped if it never
  finished the HTTP upgrade (there is no websocket to close yet).
- At most `max_connections` are established in all, `max_connections_per_address` from
  one address (an IPv6 /64 counts as one address). A hello that finds its slots full
  closes the connection idle longest, if it has been idle at least the hello timeout
  (`EVICTED`), else the newcomer is closed (`TOO_MANY_CONNECTIONS`); the HTTP upgrade
  is already refused with 503 when no slot can be had. An established connection idle
  for `idle_timeout_seconds` is closed (`IDLE`).

Pending connections never take an established slot, so the clients that never say
hello cannot lock out one that does; and with a token, a client without it is refused
at the upgrade (401), so it can only ever be pending: token holders are never locked
out by clients without one, on loopback (where every client shares 127.0.0.1) too.

Idle means: its session has no job unfinished or undelivered, no input image is
arriving, nothing is waiting to be sent, and the client has sent no frame. Keep-alive
pings and pongs are not frames from the client: websockets answers them by itself, so
every idle client (the plugin's included) sends them, and counting them would make the
idle limit catch nothing.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import time
from collections.abc import Callable
from typing import ClassVar, Protocol

from websockets.asyncio.server import ServerConnection
from websockets.protocol import State

from protocol import CloseCode

from ..config import ServerConfig

log = logging.getLogger(__name__)


class Established(Protocol):
    """What the admission policy needs of a connection that said hello."""

    websocket: ServerConnection

    def idle_for(self, now: float) -> float:
        """Seconds it has been idle at `now` (0 while it has work)."""
        ...


class TrackedConnection(ServerConnection):
    """A `ServerConnection` that tells its server's `Admission` when it opens and closes.

    `serve()` builds connections from a class; `Admission.connection_class()` makes the
    subclass bound to one admission policy.
    """

    admission: ClassVar[Admission]

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self.admission.arrived(self)

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        self.admission.left(self)


def address_key(host: str) -> str:
    """The address a client at `host` counts against: its IP, or its /64 for IPv6.

    One machine on IPv6 usually has a whole /64 to pick source addresses from, so
    counting single IPv6 addresses would cap nothing.
    """
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return host
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((int(address) >> 64 << 64, 64)))
    return str(address)


def _peer_key(websocket: ServerConnection) -> str:
    remote = websocket.remote_address
    return address_key(str(remote[0])) if remote else "?"


def peer_name(websocket: ServerConnection) -> str:
    """`host:port` of the client, for log lines."""
    remote = websocket.remote_address
    return f"{remote[0]}:{remote[1]}" if remote else "?"


class Admission:
    """Counts connections, enforces the caps, closes the late and the idle.

    Args:
        config: the caps and timeouts (`max_connections`, `max_connections_per_address`,
            `max_pending_connections`, `hello_timeout_seconds`, `idle_timeout_seconds`).
        clock: monotonic time source.

    Raises:
        ValueError: a cap below 1, a per-address cap above the global one, or a
            timeout that is not positive.
    """

    def __init__(self, config: ServerConfig, clock: Callable[[], float] = time.monotonic) -> None:
        if not 1 <= config.max_connections_per_address <= config.max_connections:
            raise ValueError(
                f"max_connections_per_address {config.max_connections_per_address} "
                f"outside 1..{config.max_connections} (max_connections)"
            )
        if config.max_pending_connections < 1:
            raise ValueError(f"max_pending_connections {config.max_pending_connections} < 1")
        if config.hello_timeout_seconds <= 0 or config.idle_timeout_seconds <= 0:
            raise ValueError("hello and idle timeouts must be positive")
        self.max_connections = config.max_connections
        self.max_per_address = config.max_connections_per_address
        self.max_pending = config.max_pending_connections
        self.hello_timeout = config.hello_timeout_seconds
        self.idle_timeout = config.idle_timeout_seconds
        self.clock = clock
        self._pending: dict[ServerConnection, float] = {}  # arrival order, oldest first
        self._established: dict[ServerConnection, tuple[Established, str]] = {}
        self._closing: set[asyncio.Task[None]] = set()

    @property
    def pending(self) -> int:
        """Connections that have not said hello yet."""
        return len(self._pending)

    @property
    def established(self) -> int:
        """Connections that said hello and are not being closed."""
        return len(self._established)

    def connection_class(self) -> type[ServerConnection]:
        """The `create_connection` class for `serve()`: its connections report here."""
        return type("TrackedConnection", (TrackedConnection,), {"admission": self})

    # Pending ----------------------------------------------------------------------------

    def arrived(self, websocket: ServerConnection) -> None:
        """A TCP connection opened; past the pending cap, the oldest pending one goes."""
        self._pending[websocket] = self.clock()
        if len(self._pending) > self.max_pending:
            oldest = next(iter(self._pending))
            self._drop_pending(oldest, CloseCode.EVICTED, "too many connections waiting for hello")

    def left(self, websocket: ServerConnection) -> None:
        """A TCP connection closed."""
        self._pending.pop(websocket, None)
        self._established.pop(websocket, None)

    def _drop_pending(self, websocket: ServerConnection, code: CloseCode, reason: str) -> None:
        del self._pending[websocket]
        log.info("%s: %s, closed", peer_name(websocket), reason)
        if websocket.protocol.state is State.OPEN:
            self._close(websocket, code, reason)
        elif websocket.protocol.state is State.CONNECTING:  # still in the HTTP upgrade
            websocket.transport.abort()

    # Established ------------------------------------------------------------------------

    def upgrade_refusal(self, websocket: ServerConnection) -> str | None:
        """Why the HTTP upgrade is refused with 503 (no slot could be had), or None."""
        refusal, _ = self._room_for(_peer_key(websocket), self.clock())
        return refusal

    def establish(self, connection: Established) -> str | None:
        """A connection said hello: give it a slot, evicting an idle one if need be.

        Returns:
            None when it has a slot; else why not (the caller closes it with
            `CloseCode.TOO_MANY_CONNECTIONS`).
        """
        websocket = connection.websocket
        self._pending.pop(websocket, None)
        key = _peer_key(websocket)
        refusal, victim = self._room_for(key, self.clock())
        if refusal is not None:
            log.info("%s: said hello, but %s", peer_name(websocket), refusal)
            return refusal
        if victim is not None:
            del self._established[victim.websocket]
            reason = "closed to make room for a newer connection"
            log.info("%s: idle, %s", peer_name(victim.websocket), reason)
            self._close(victim.websocket, CloseCode.EVICTED, reason)
        self._established[websocket] = (connection, key)
        return None

    def _room_for(self, key: str, now: float) -> tuple[str | None, Established | None]:
        """(why there is no slot for `key`, the idle connection to evict for one)."""
        same = [c for c, k in self._established.values() if k == key]
        if len(same) >= self.max_per_address:
            candidates = same
            refusal = f"too many connections from {key} ({self.max_per_address})"
        elif len(self._established) >= self.max_connections:
            candidates = [c for c, _ in self._established.values()]
            refusal = f"too many connections ({self.max_connections})"
        else:
            return None, None
        idle = [(c.idle_for(now), index, c) for index, c in enumerate(candidates)]
        longest, _, victim = max(idle, key=lambda entry: (entry[0], -entry[1]))
        if longest < self.hello_timeout:
            return refusal, None
        return None, victim

    # Deadlines --------------------------------------------------------------------------

    def sweep(self) -> None:
        """Close the pending connections past the hello timeout and the idle ones."""
        now = self.clock()
        for websocket, since in list(self._pending.items()):
            if now - since < self.hello_timeout:
                break  # the rest arrived later
            self._drop_pending(
                websocket, CloseCode.HELLO_TIMEOUT, f"no hello within {self.hello_timeout:g} s"
            )
        for websocket, (connection, _) in list(self._established.items()):
            if connection.idle_for(now) >= self.idle_timeout:
                del self._established[websocket]
                reason = f"idle for {self.idle_timeout:g} s"
                log.info("%s: %s, closed", peer_name(websocket), reason)
                self._close(websocket, CloseCode.IDLE, reason)

    async def watch(self) -> None:
        """Sweep until cancelled, often enough for the shorter timeout."""
        period = max(0.02, min(1.0, self.hello_timeout / 4, self.idle_timeout / 4))
        while True:
            await asyncio.sleep(period)
            self.sweep()

    def _close(self, websocket: ServerConnection, code: CloseCode, reason: str) -> None:
        task = asyncio.get_running_loop().create_task(websocket.close(code, reason))
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)
