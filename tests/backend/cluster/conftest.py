"""A local Ray cluster on 127.0.0.1 with two stand-in GPUs, running the demo models on the CPU.

Starting Ray and two replicas takes 15-25 s on a 2-core machine, so a test module
shares one (`cluster`); each test gets its own gateway on port 0 (`with_gateway`).
Without Ray the tests that need it fail, saying how to install it: they never skip.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Awaitable, Callable, Iterator
from importlib.util import find_spec
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from backend.config import ServerConfig
from backend.server.serve import LayerDiffuseServer
from tests.backend.server.conftest import TIMEOUT, RunningServer

if TYPE_CHECKING:
    from backend.cluster.cluster import Cluster
    from backend.cluster.executor import ClusterExecutor

INSTALL_HINT = (
    "the cluster tests need Ray Serve, which is not installed: pip install -e '.[cluster]'"
)
GPUS = 2
HEALTHY_TIMEOUT = 120.0


def require_ray() -> None:
    """Fail (never skip) when Ray Serve is missing; Ray itself is not imported here (it
    must be imported after `start_local` has told it to stay on loopback)."""
    missing = [name for name in ("ray", "fastapi", "uvicorn") if find_spec(name) is None]
    if missing:
        pytest.fail(f"{INSTALL_HINT} (missing: {', '.join(missing)})", pytrace=False)


@pytest.fixture(scope="module")
def cluster(demo_cache_dir: Path) -> Iterator[Cluster]:
    """A one-node Ray on 127.0.0.1 with 2 stand-in GPUs and the demo deployment on them."""
    require_ray()
    from backend.cluster.cluster import open_cluster
    from backend.cluster.config import ClusterConfig, ModelOptions

    options = ModelOptions(demo=True, cache_dir=demo_cache_dir, device="cpu", dtype="float32")
    opened = open_cluster(ClusterConfig(gpus=GPUS), options)
    try:
        yield opened
    finally:
        opened.close()


@pytest.fixture
def healthy_cluster(cluster: Cluster) -> Cluster:
    """The module's cluster once both replicas run (a test before may have killed some)."""
    wait_healthy(cluster)
    return cluster


def running_replicas(cluster: Cluster) -> int:
    from ray import serve

    application = serve.status().applications[cluster.app_name]
    return sum(
        deployment.replica_states.get("RUNNING", 0)
        for deployment in application.deployments.values()
    )


def wait_healthy(
    cluster: Cluster, dead: tuple[int, ...] = (), timeout: float = HEALTHY_TIMEOUT
) -> None:
    """Wait (bounded) until every replica runs again: Serve counts them all running, and
    as many live replicas, none of them one of the `dead` pids, answer."""
    deadline = time.monotonic() + timeout
    answered: set[int] = set()
    while len(answered) < cluster.gpus or running_replicas(cluster) < cluster.gpus:
        assert time.monotonic() < deadline, f"replicas not back within {timeout:g} s"
        try:
            pid = cluster.handle.describe.remote().result(timeout_s=timeout).pid
        except Exception:  # a replica Serve has not yet noticed is dead
            time.sleep(0.2)
            continue
        if pid not in dead:
            answered.add(pid)


def kill_replica(pid: int) -> None:
    """SIGKILL one Serve replica process, after checking that it is one."""
    cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0]
    assert cmdline.startswith(b"ray::ServeReplica"), cmdline
    os.kill(pid, 9)


Scenario = Callable[[RunningServer, "ClusterExecutor"], Awaitable[None]]


@pytest.fixture
def with_gateway(healthy_cluster: Cluster) -> Callable[..., None]:
    """`with_gateway(scenario, **options)`: a gateway on port 0 in front of the cluster,
    its executor fresh (options override `per_client`, `max_waiting`, `board`, and
    `config`: `ServerConfig` fields)."""

    def run(scenario: Scenario, **options: Any) -> None:
        from backend.cluster.executor import ClusterExecutor

        executor = ClusterExecutor(
            healthy_cluster.handle,
            healthy_cluster.replica.model,
            healthy_cluster.gpus,
            per_client=options.pop("per_client", healthy_cluster.config.per_client(GPUS)),
            max_waiting=options.pop("max_waiting", healthy_cluster.config.max_waiting),
            board=options.pop("board", None),
        )
        config = ServerConfig(port=0, demo=True, **options.pop("config", {}))
        assert not options, options

        async def main() -> None:
            server = LayerDiffuseServer(config, executor=executor)
            await server.start()
            try:
                await asyncio.wait_for(
                    scenario(RunningServer(server, server.port), executor), TIMEOUT * 2
                )
            finally:
                await server.stop()

        asyncio.run(main())

    return run
