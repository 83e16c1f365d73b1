"""The server's configuration, declared once: each `layerdiffuse serve` flag comes from a field."""

from __future__ import annotations

import ipaddress
import os
import re
from dataclasses import dataclass, field, replace
from pathlib import Path

from protocol import DEFAULT_LIMITS, Limits, ModelFamily

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8870
TOKEN_ENVIRONMENT = "LAYERDIFFUSE_TOKEN"
ORIGIN = re.compile(r"[a-z][a-z0-9+.-]*://(\[[0-9a-f:.]+\]|[a-z0-9._~-]+)(:[0-9]{1,5})?")
"""An origin as browsers send it (RFC 6454): lowercase scheme://host[:port], no path."""


@dataclass(frozen=True)
class ServerConfig:
    """How `layerdiffuse serve` runs.

    Attributes:
        host: address to bind; anything but a loopback address needs a token.
        port: TCP port; 0 picks a free one (tests).
        token: shared secret clients send as `Authorization: Bearer …`; from
            `LAYERDIFFUSE_TOKEN` when not given.
        allowed_origins: browser origins allowed to connect; none by default.
        demo: serve the tiny demo model set (no download; pictures are noise).
        demo_family: which demo set, SD1.5- or SDXL-shaped.
        base: the base model (diffusers folder, hub repo id or .safetensors file).
        models_dir: a folder with released LayerDiffuse files.
        offline: never contact the hub; None follows `HF_HUB_OFFLINE`.
        device / dtype: where and how the models run ("auto" picks).
        limits: message, image, batch, step and queue limits (advertised in `welcome`).
        retention_seconds: how long results wait for a client that went away.
        upload_timeout_seconds: how long an announced input image may take to arrive.
        ping_interval_seconds: websocket keep-alive; a peer missing the pong is closed.
        max_connections: simultaneous connections that said hello, in all.
        max_connections_per_address: of those, from one client address (an IPv6 /64).
        max_pending_connections: connections that have not said hello yet, in all; a
            new one past this closes the oldest.
        hello_timeout_seconds: from the TCP connection to its `hello`.
        idle_timeout_seconds: a connection with no job that sends nothing this long is
            closed (keep-alive pings do not count as sending).
        preview_side: longest side of progress previews, in pixels.
    """

    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    token: str | None = None
    allowed_origins: tuple[str, ...] = ()
    demo: bool = False
    demo_family: ModelFamily = ModelFamily.SD15
    base: str | None = None
    models_dir: Path | None = None
    offline: bool | None = None
    device: str = "auto"
    dtype: str = "auto"
    limits: Limits = field(default=DEFAULT_LIMITS)
    retention_seconds: float = 600.0
    upload_timeout_seconds: float = 60.0
    ping_interval_seconds: float = 20.0
    max_connections: int = 16
    max_connections_per_address: int = 8
    max_pending_connections: int = 64
    hello_timeout_seconds: float = 5.0
    idle_timeout_seconds: float = 300.0
    preview_side: int = 128

    def with_environment(self) -> ServerConfig:
        """This config with the token taken from the environment when none was given."""
        if self.token is not None:
            return self
        return replace(self, token=os.environ.get(TOKEN_ENVIRONMENT) or None)

    @property
    def binds_loopback_only(self) -> bool:
        """Whether `host` is a loopback address (or `localhost`)."""
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False

    def check(self) -> None:
        """Refuse configurations that would expose the GPU without a secret.

        Raises:
            ValueError: a non-loopback bind without a token, an allowed origin that no
                browser sends, or a bad value.
        """
        if not self.binds_loopback_only and not self.token:
            raise ValueError(
                f"binding {self.host} exposes the server to the network: give a --token "
                f"(or set {TOKEN_ENVIRONMENT}), or bind 127.0.0.1"
            )
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port {self.port} outside 0..65535")
        for origin in self.allowed_origins:
            if not ORIGIN.fullmatch(origin):
                raise ValueError(
                    f"--allow-origin {origin!r} is not an origin as browsers send it: "
                    "scheme://host[:port] in lowercase, no path, like http://localhost:5173"
                )
        if self.retention_seconds < 0 or self.upload_timeout_seconds <= 0:
            raise ValueError("retention and upload timeouts must be positive")
        if not self.demo and not self.base:
            raise ValueError("give a base model (--base) or serve the demo set (--demo)")
