"""Why the server closed a websocket: the close codes of the protocol (RFC 6455 §7.4.2).

They lie in the range kept for applications (4000–4999), so a client can tell them from
the transport's own codes (1000 normal, 1001 going away, 1009 too big). None of them is
an error of the client that must be shown as such: a client reconnects after each, as it
does after any dropped connection. The close reason carries the figures in words
(`no hello within 5 s`), for logs.
"""

from __future__ import annotations

from enum import IntEnum

__all__ = ["CloseCode"]


class CloseCode(IntEnum):
    """The server's close codes; the caps and timeouts are in docs/protocol.md."""

    HELLO_TIMEOUT = 4001
    """No `hello` arrived within the hello timeout of the TCP connection."""

    IDLE = 4002
    """The client sent nothing past the idle limit while it had no job, no result waiting
    and nothing being sent to it (keep-alive pings and pongs do not count)."""

    EVICTED = 4003
    """Closed to make room for a newer connection: the oldest of too many waiting for
    `hello`, or the longest idle one when a client said hello and every slot was held."""

    TOO_MANY_CONNECTIONS = 4004
    """The client said hello while every slot it may use (in all, or of its address)
    was held by a connection with work to do."""
