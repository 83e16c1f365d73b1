"""What `layerdiffuse serve --cluster` asks for: declared once, read without Ray."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from protocol import ModelFamily

LOCAL = "local"
"""`--cluster local`: a one-node Ray started by the gateway, bound to 127.0.0.1."""

NAMESPACE = "layerdiffuse"
"""The Ray namespace of everything the gateways put on a cluster."""

_SLUG = re.compile(r"[^A-Za-z0-9_.-]+")


@dataclass(frozen=True)
class ModelOptions:
    """Where each replica gets its model from (as `layerdiffuse serve`'s model flags).

    Paths name files on the GPU machines: every node must have them at that path.
    """

    base: str | None = None
    demo: bool = False
    demo_family: ModelFamily = ModelFamily.SD15
    models_dir: Path | None = None
    offline: bool | None = None
    device: str = "auto"
    dtype: str = "auto"
    cache_dir: Path | None = None  # the store's cache (the demo set); None: the default

    @property
    def app_name(self) -> str:
        """The Serve application of this model: one deployment per base model, so one
        family per deployment and no family swap on a GPU."""
        if self.demo:
            return f"layerdiffuse-demo-{self.demo_family.value}"
        name = Path(self.base or "base").name.removesuffix(".safetensors")
        return f"layerdiffuse-{_SLUG.sub('-', name).strip('-') or 'base'}"


@dataclass(frozen=True)
class ClusterConfig:
    """How the gateway uses a Ray cluster.

    Attributes:
        address: the Ray head as HOST:PORT (`ray start --head` prints it), "auto" for a
            cluster already running on this machine, or "local" to start a one-node Ray
            here bound to 127.0.0.1.
        gpus: replicas to run, one per GPU; None: every GPU of the cluster. With
            "local" on a machine without a GPU, this many stand-in GPUs (the replicas
            then run on the CPU).
        jobs_per_client: jobs of one client running at once; None: one less than the
            GPUs (at least 1), so one painter's batch never takes every GPU.
        max_waiting: jobs waiting for a GPU, from all clients together; one more is
            refused as busy (`queue_full`).
        start_timeout_seconds: how long the replicas may take to load their model.
    """

    address: str = LOCAL
    gpus: int | None = None
    jobs_per_client: int | None = None
    max_waiting: int = 64
    start_timeout_seconds: float = 600.0

    @property
    def is_local(self) -> bool:
        return self.address == LOCAL

    def per_client(self, gpus: int) -> int:
        """The cap on one client's running jobs with `gpus` replicas."""
        if self.jobs_per_client is not None:
            return self.jobs_per_client
        return max(1, gpus - 1)
