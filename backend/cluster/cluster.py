"""The gateway's side of a Ray cluster: connect (or start one here), deploy the GPUs, close.

`open_cluster` is everything `layerdiffuse serve --cluster` does before it listens:

1. connect to the Ray head at the address, or start a one-node Ray bound to
   127.0.0.1 (`--cluster local`);
2. deploy the model's Serve application: one `GpuReplica` per GPU, each asking Ray for
   one GPU, `max_ongoing_requests=1`, no HTTP proxy (the gateway is our own server);
3. ask a replica what it loaded, for `welcome`.

Ray is imported inside the functions, after `start_local` has told it to stay on
loopback: Ray decides at import whether it may bind other interfaces.
"""

from __future__ import annotations

import logging
import os
import re
import socket
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..errors import BackendError
from .config import LOCAL, NAMESPACE, ClusterConfig, ModelOptions

if TYPE_CHECKING:
    from ray.actor import ActorHandle
    from ray.serve.handle import DeploymentHandle

    from .executor import ClusterExecutor
    from .replica import ReplicaInfo

log = logging.getLogger(__name__)

DEPLOYMENT = "gpu"
LOOPBACK = "127.0.0.1"
ROUTER_MAX_BACKOFF_SECONDS = 0.05
"""How often Serve's router looks again for a free replica (its default 0.5 s made a
queued job start ~0.3 s after a GPU freed; 0.05 s: ~0.03 s, scale.md §3.3)."""
HEALTH_CHECK_SECONDS = 2.0
DESCRIBE_TIMEOUT_SECONDS = 60.0
PROBE_TIMEOUT_SECONDS = 5.0
_RAISED = re.compile(r"^(?:[\w.]+\.)?(\w+(?:Error|NotFound|Mismatch|Model)): (.+)$", re.MULTILINE)


class ClusterError(BackendError):
    """The Ray cluster cannot be reached, or cannot run the GPU deployment."""


@dataclass
class Cluster:
    """This gateway's deployment on a Ray cluster.

    Attributes:
        config: how it was opened.
        options: the model every replica loads.
        handle: the deployment's handle (streaming calls go through it).
        gpus: its replicas, one per GPU.
        replica: what one replica said it runs.
        board: the actor `layerdiffuse cluster status` reads this gateway's queue from.
    """

    config: ClusterConfig
    options: ModelOptions
    handle: DeploymentHandle
    gpus: int
    replica: ReplicaInfo
    board: ActorHandle

    @property
    def app_name(self) -> str:
        return self.options.app_name

    def executor(self) -> ClusterExecutor:
        """The gateway's executor for this deployment."""
        from .executor import ClusterExecutor

        return ClusterExecutor(
            self.handle,
            self.replica.model,
            self.gpus,
            per_client=self.config.per_client(self.gpus),
            max_waiting=self.config.max_waiting,
            board=self.board,
        )

    def close(self) -> None:
        """Take the deployment down (its GPUs free) and disconnect; a local Ray stops."""
        import ray
        from ray import serve

        try:
            serve.delete(self.app_name)
            if self.config.is_local:
                serve.shutdown()
        except Exception:  # the cluster went first (its head stopped): nothing to free
            log.warning("could not take %s down", self.app_name, exc_info=True)
        finally:
            ray.shutdown()


def open_cluster(config: ClusterConfig, options: ModelOptions, preview_side: int = 128) -> Cluster:
    """Connect (or start Ray here), deploy the model on the GPUs, wait until it serves.

    Raises:
        ClusterError: no cluster at the address, no free GPUs, or the replicas could
            not load the model (the message says which, in words).
    """
    if config.is_local:
        start_local(config.gpus)
    else:
        connect(config.address)
    try:
        gpus = _replicas(config, options.app_name)
        handle = _deploy(options, gpus, preview_side)
        replica = handle.describe.remote().result(timeout_s=DESCRIBE_TIMEOUT_SECONDS)
        board = _board(options.app_name)
    except BaseException:
        import ray

        ray.shutdown()
        raise
    log.info(
        "%s: %d replicas of %s (%s)",
        options.app_name,
        gpus,
        replica.model.name,
        replica.model.family.value,
    )
    return Cluster(config, options, handle, gpus, replica, board)


def start_local(gpus: int | None) -> None:
    """Start a one-node Ray in this process, every port it opens bound to 127.0.0.1.

    Args:
        gpus: GPUs it offers; None: those it finds. On a machine without one, this many
            stand-ins (Ray only counts them; the replicas then run on the CPU).

    Raises:
        ClusterError: Ray bound another address than loopback (it was imported before
            it could be told not to).
    """
    # Ray binds loopback only when it believes it cannot form a multi-node cluster;
    # it reads this when imported, so this comes first. Usage reports stay off.
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import ray

    if not ray.is_initialized():
        ray.init(
            num_gpus=gpus,
            include_dashboard=False,
            namespace=NAMESPACE,
            log_to_driver=False,
            configure_logging=False,
        )
    address = ray.util.get_node_ip_address()
    if address != LOOPBACK:
        ray.shutdown()
        raise ClusterError(
            f"the local Ray bound {address}, not {LOOPBACK}: start the gateway in a fresh "
            "process (Ray was imported before it could be told to stay on loopback)"
        )


def connect(address: str) -> bool:
    """Join the Ray cluster whose head is at `address`; False if this process already had.

    Args:
        address: HOST:PORT of the head's GCS (`ray start --head` prints it); "auto" for
            the one `ray start` runs on this machine; "local" for the one a
            `serve --cluster local` gateway runs on this machine (on 127.0.0.1).

    Raises:
        ClusterError: nothing answers there, or its Ray or Python version differs.
    """
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if address == LOCAL:
        os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"  # see start_local
        address = "auto"
    elif address != "auto":
        _probe(address)
    import ray

    if ray.is_initialized():
        return False
    try:
        ray.init(address=address, namespace=NAMESPACE, log_to_driver=False, configure_logging=False)
    except ConnectionError as error:
        raise ClusterError(
            f"no Ray cluster at {address}: start its head with `ray start --head` "
            f"and give the address it prints ({_first_line(error)})"
        ) from None
    except RuntimeError as error:  # a version mismatch, among others
        reason = _first_line(error)
        raise ClusterError(f"cannot join the Ray cluster at {address}: {reason}") from None
    return True


def _probe(address: str) -> None:
    """Fail at once if nothing listens at HOST:PORT (Ray itself would retry for minutes)."""
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise ClusterError(
            f"{address!r} is not a Ray head address: give HOST:PORT, like 10.0.0.5:6379"
        )
    try:
        socket.create_connection((host.strip("[]"), int(port)), PROBE_TIMEOUT_SECONDS).close()
    except OSError as error:
        reason = (error.strerror or str(error) or type(error).__name__).lower()
        raise ClusterError(
            f"no Ray cluster at {address} ({reason}): start its head there with "
            "`ray start --head --port 6379`, or give the address it printed"
        ) from None


def _replicas(config: ClusterConfig, app_name: str) -> int:
    import ray
    from ray import serve

    total = int(ray.cluster_resources().get("GPU", 0))
    gpus = config.gpus if config.gpus is not None else total
    if gpus < 1:
        raise ClusterError(
            "the Ray cluster has no GPUs: start its nodes with `ray start --num-gpus N`"
            + (" (or give --gpus N for stand-in GPUs on this CPU)" if config.is_local else "")
        )
    deployed = app_name in serve.status().applications  # a gateway restarting: GPUs held
    free = int(ray.available_resources().get("GPU", 0))
    if not deployed and free < gpus:
        raise ClusterError(
            f"the Ray cluster has {free} free GPUs of {total}; {gpus} asked for: "
            "give --gpus with at most the free ones, or free some"
        )
    return gpus


def _deploy(options: ModelOptions, gpus: int, preview_side: int) -> DeploymentHandle:
    from ray import serve

    from .replica import GpuReplica

    serve.start(proxy_location="Disabled")  # no HTTP proxy: the gateway is our own server
    deployment = serve.deployment(
        GpuReplica,
        name=DEPLOYMENT,
        num_replicas=gpus,
        max_ongoing_requests=1,  # one job per GPU
        max_queued_requests=2 * gpus,  # the gateway keeps the line; this is a backstop
        ray_actor_options={"num_gpus": 1, "num_cpus": 0},
        request_router_config={"max_backoff_s": ROUTER_MAX_BACKOFF_SECONDS},
        health_check_period_s=HEALTH_CHECK_SECONDS,
        graceful_shutdown_timeout_s=5.0,
        max_constructor_retry_count=2,
    )
    try:
        return serve.run(
            deployment.bind(options, preview_side), name=options.app_name, route_prefix=None
        )
    except RuntimeError as error:
        raise ClusterError(f"the GPU workers could not start: {_reason(error)}") from None


def _board(app_name: str) -> ActorHandle:
    import ray

    from .status import GatewayBoard

    return (
        ray.remote(num_cpus=0)(GatewayBoard)
        .options(name=f"{app_name}-gateway", namespace=NAMESPACE, get_if_exists=True)
        .remote()
    )


def _reason(error: BaseException) -> str:
    """The error a replica raised, out of Serve's report (a traceback in text)."""
    raised = _RAISED.findall(str(error))
    if raised:
        _, message = raised[-1]
        return message.strip()
    return _first_line(error)


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
