"""`layerdiffuse cluster status`: the GPUs, the models on them, and each gateway's queue.

Ray and Serve know the nodes, GPUs and replicas; only a gateway knows its queue. Each
gateway keeps a small named actor, its `GatewayBoard`, up to date with its executor's
snapshot (counts only: no session id, which would let a reader take a painter's
results), and `read_status` reads them all.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from .config import NAMESPACE

BOARD_SUFFIX = "-gateway"
READ_TIMEOUT_SECONDS = 10.0


class GatewayBoard:
    """A Ray actor holding a gateway's last snapshot (`ClusterExecutor.snapshot`)."""

    def __init__(self) -> None:
        self.snapshot: dict[str, Any] | None = None

    def publish(self, snapshot: dict[str, Any]) -> None:
        self.snapshot = snapshot

    def read(self) -> dict[str, Any] | None:
        return self.snapshot


@dataclass(frozen=True)
class NodeStatus:
    address: str
    gpus: float


@dataclass(frozen=True)
class AppStatus:
    """One gateway's deployment: its replicas as Serve counts them, its queue as it says."""

    name: str
    status: str
    replicas: dict[str, int]
    gateway: dict[str, Any] | None


@dataclass(frozen=True)
class ClusterStatus:
    address: str
    free_gpus: float
    nodes: list[NodeStatus] = field(default_factory=list)
    apps: list[AppStatus] = field(default_factory=list)

    def describe(self) -> str:
        """The status in lines, for the terminal."""
        gpus = sum(node.gpus for node in self.nodes)
        lines = [
            f"ray cluster {self.address}: {len(self.nodes)} node(s), "
            f"{gpus:g} GPU(s), {self.free_gpus:g} free"
        ]
        lines += [f"  node {node.address}: {node.gpus:g} GPU(s)" for node in self.nodes]
        if not self.apps:
            lines.append("no layerdiffuse gateway has deployed here")
        for app in self.apps:
            replicas = ", ".join(f"{n} {state.lower()}" for state, n in app.replicas.items())
            lines.append(f"{app.name}: {app.status.lower()}, replicas {replicas or 'none'}")
            gateway = app.gateway
            if gateway is None:
                lines.append("  gateway: not running (no queue to show)")
                continue
            model = gateway["model"]
            demo = ", demo" if gateway["demo"] else ""
            lines.append(
                f"  model {model['name']} ({model['family']}{demo}) on {gateway['gpus']} GPU(s)"
            )
            running = gateway["running"]
            lines.append(
                f"  queue: {len(running)} running, {gateway['waiting']} waiting from "
                f"{gateway['waiting_clients']} client(s) (busy past {gateway['max_waiting']}); "
                f"{gateway['per_client']} running per client at most"
            )
            lines.extend(
                f"    running on {job['node']} pid {job['pid']}"
                + (" (run again after its GPU worker stopped)" if job["attempt"] > 1 else "")
                for job in running
                if job["pid"] is not None
            )
            lines.append(
                f"  jobs run again after a GPU worker stopped: {gateway['retried']}, "
                f"failed after two: {gateway['lost']}"
            )
        return "\n".join(lines)


def read_status(address: str) -> ClusterStatus:
    """Join the cluster at `address` (see `cluster.connect`) and read it; leave it again
    unless this process was in it already (a gateway).

    Raises:
        ClusterError: no cluster there.
    """
    from .cluster import connect

    joined = connect(address)
    import ray
    from ray import serve

    try:
        free = float(ray.available_resources().get("GPU", 0))
        nodes = [
            NodeStatus(node["NodeManagerAddress"], float(node["Resources"].get("GPU", 0)))
            for node in ray.nodes()
            if node.get("Alive")
        ]
        apps = []
        for name, application in sorted(serve.status().applications.items()):
            if not name.startswith("layerdiffuse-"):
                continue
            replicas: dict[str, int] = {}
            for deployment in application.deployments.values():
                for state, count in deployment.replica_states.items():
                    replicas[state] = replicas.get(state, 0) + count
            status = getattr(application.status, "value", str(application.status))
            apps.append(AppStatus(name, status, replicas, _gateway(name)))
        return ClusterStatus(_address(), free, nodes, apps)
    finally:
        if joined:
            ray.shutdown()


def _gateway(app_name: str) -> dict[str, Any] | None:
    import ray

    try:
        board = ray.get_actor(app_name + BOARD_SUFFIX, namespace=NAMESPACE)
    except ValueError:
        return None
    return ray.get(board.read.remote(), timeout=READ_TIMEOUT_SECONDS)


def _address() -> str:
    import ray

    return os.environ.get("RAY_ADDRESS") or ray.get_runtime_context().gcs_address
