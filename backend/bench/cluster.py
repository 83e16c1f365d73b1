"""`layerdiffuse bench --stages cluster`: the same demo jobs through one machine and a cluster.

Both run in this process, one after the other, with the same gateway code and the
same clients over loopback websockets:

- **one machine**: `LayerDiffuseServer` with its worker thread on the demo models;
- **cluster**: the same server in front of a one-node Ray (`--cluster local`), one
  Serve replica per GPU (stand-in GPUs on a CPU, where the replicas share its cores).

Reported: a job alone (submit → first progress, and submit → done: their difference
between the two is what the cluster adds) and jobs per second with two clients
submitting at once. On a CPU both paths run torch on one thread per job (a replica's
share), so they differ only by the path. Ray is needed (`pip install -e '.[cluster]'`).
"""

from __future__ import annotations

import asyncio
import statistics
import time
from dataclasses import dataclass

import torch
from websockets.asyncio.client import ClientConnection, connect

from protocol import (
    ClientProtocol,
    GenerationParameters,
    JobDone,
    JobStatus,
    Method,
    ProgressReceived,
    Submit,
)

from ..cluster.cluster import open_cluster
from ..cluster.config import ClusterConfig, ModelOptions
from ..config import ServerConfig
from ..server.serve import LayerDiffuseServer
from ..store.model_sets import open_model_set
from .report import BenchReport, Timing

SIDE = 64
STEPS = 8
CLIENTS = 2
JOBS_PER_CLIENT = 4
STAND_IN_GPUS = 2
REPLICA_THREADS = 1
"""Torch's CPU threads in a replica (Ray sets OMP_NUM_THREADS to its num_cpus, 0 → 1);
the one-machine run on a CPU uses as many, so both do the same work per job."""
STAGE = "cluster"


@dataclass(frozen=True)
class Figures:
    """One path's medians (ms) and throughput."""

    first_progress_ms: float
    job_ms: float
    jobs_per_second: float


def bench_cluster(report: BenchReport, device: torch.device, repeat: int) -> None:
    """Time the demo jobs through one machine's server, then through a local cluster.

    On CUDA the cluster gets every GPU Ray finds; on a CPU, two stand-in GPUs.
    """
    cuda = device.type == "cuda"
    models = open_model_set(demo=True, device=str(device), dtype="float32")
    threads = torch.get_num_threads()
    if not cuda:
        torch.set_num_threads(REPLICA_THREADS)  # as each replica has: the same CPU work
    try:
        one = asyncio.run(_measure(LayerDiffuseServer(_config(), models), repeat))
    finally:
        torch.set_num_threads(threads)
    del models
    options = ModelOptions(demo=True, device=str(device) if cuda else "cpu", dtype="float32")
    cluster = open_cluster(ClusterConfig(gpus=None if cuda else STAND_IN_GPUS), options)
    try:
        server = LayerDiffuseServer(_config(), executor=cluster.executor())
        many = asyncio.run(_measure(server, repeat))
        gpus = cluster.gpus
    finally:
        cluster.close()

    local, remote = "one machine", f"cluster, {gpus} {'GPU' if cuda else 'stand-in GPU'}s"
    job = f"{SIDE}² {STEPS} steps"
    for label, figure in (("first progress", "first_progress_ms"), ("whole job", "job_ms")):
        stage = f"{STAGE} {label}"
        baseline = f"{local}, {job}"
        report.add(Timing(stage, baseline, getattr(one, figure)))
        report.add(Timing(stage, f"{remote}, {job}", getattr(many, figure), None, baseline))
    stage = f"{STAGE} throughput"
    jobs = CLIENTS * JOBS_PER_CLIENT
    baseline = None
    for variant, figures in ((local, one), (remote, many)):
        label = f"{variant}: {jobs} jobs, {CLIENTS} clients, {figures.jobs_per_second:.2f} jobs/s"
        report.add(Timing(stage, label, 1000 / figures.jobs_per_second, None, baseline))
        baseline = label


def _config() -> ServerConfig:
    return ServerConfig(port=0, demo=True)


async def _measure(server: LayerDiffuseServer, repeat: int) -> Figures:
    await server.start()
    try:
        url = f"ws://127.0.0.1:{server.port}"
        async with connect(url, compression=None, max_size=2**26) as websocket:
            client = _Client(websocket)
            await client.hello()
            await client.run("warm-up")  # loads the layer model on a replica
            firsts, totals = [], []
            for index in range(repeat):
                first, total = await client.run(f"alone-{index}")
                firsts.append(first)
                totals.append(total)
        clients = []
        for _ in range(CLIENTS):
            websocket = await connect(url, compression=None, max_size=2**26)
            clients.append(_Client(websocket))
        try:
            for each in clients:
                await each.hello()
            started = time.perf_counter()
            await asyncio.gather(*(each.batch(JOBS_PER_CLIENT) for each in clients))
            seconds = time.perf_counter() - started
        finally:
            for each in clients:
                await each.websocket.close()
    finally:
        await server.stop()
    return Figures(
        statistics.median(firsts) * 1000,
        statistics.median(totals) * 1000,
        CLIENTS * JOBS_PER_CLIENT / seconds,
    )


class _Client:
    """A protocol client that submits demo jobs and waits for their ends."""

    def __init__(self, websocket: ClientConnection) -> None:
        self.websocket = websocket
        self.protocol = ClientProtocol("layerdiffuse-bench")
        self.events: list[object] = []

    async def hello(self) -> None:
        await self._send(self.protocol.send_hello(None))
        await self._next()

    async def run(self, job: str) -> tuple[float, float]:
        """One job alone: seconds to its first progress, and to its end."""
        started = time.perf_counter()
        await self._submit(job)
        first = None
        while True:
            event = await self._next()
            if isinstance(event, ProgressReceived) and first is None:
                first = time.perf_counter() - started
            if isinstance(event, JobDone) and event.done.job == job:
                assert event.done.status is JobStatus.COMPLETED, event.done
                assert first is not None
                return first, time.perf_counter() - started

    async def batch(self, count: int) -> None:
        """Submit `count` jobs at once and wait for them all."""
        names = [f"batch-{id(self)}-{index}" for index in range(count)]
        for name in names:
            await self._submit(name)
        waiting = set(names)
        while waiting:
            event = await self._next()
            if isinstance(event, JobDone):
                assert event.done.status is JobStatus.COMPLETED, event.done
                waiting.discard(event.done.job)

    async def _submit(self, job: str) -> None:
        request = GenerationParameters(
            method=Method.SD15_TRANSPARENT,
            prompt="a glass cup",
            width=SIDE,
            height=SIDE,
            steps=STEPS,
        )
        await self._send(self.protocol.send_submit(Submit(job=job, request=request), {}))

    async def _send(self, frames: list[str | bytes]) -> None:
        for frame in frames:
            await self.websocket.send(frame)

    async def _next(self) -> object:
        while not self.events:
            message = await self.websocket.recv()
            if isinstance(message, str):
                self.events.extend(self.protocol.receive_text(message))
            else:
                self.events.extend(self.protocol.receive_binary(message))
        return self.events.pop(0)
