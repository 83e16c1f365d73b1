"""The gateway in front of a local Ray cluster (2 stand-in GPUs, demo models on the CPU).

What a painter sees is what one machine gives (progress with previews, cancel within
a step, results kept for a reconnect, errors in words), plus what a studio needs:
two GPUs serving two clients at once, fair turns, a bounded line with a "busy"
answer, and a job whose replica is killed run again on another.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import numpy as np
import pytest
from websockets.exceptions import InvalidStatus

from protocol import (
    ClientEvent,
    ErrorCode,
    ErrorReceived,
    JobAccepted,
    JobDone,
    JobStatus,
    Method,
    ProgressReceived,
    ResultReceived,
)
from tests.backend.server.conftest import ProtocolClient, RunningServer

from .conftest import kill_replica, wait_healthy

if TYPE_CHECKING:
    from backend.cluster.cluster import Cluster
    from backend.cluster.executor import ClusterExecutor

pytestmark = pytest.mark.cluster

WAIT = 60.0


def steps_of(events: list[ClientEvent], job: str) -> list[int]:
    return [
        e.progress.step for e in events if isinstance(e, ProgressReceived) and e.progress.job == job
    ]


def done_of(events: list[ClientEvent], job: str) -> JobDone:
    (done,) = [e for e in events if isinstance(e, JobDone) and e.done.job == job]
    return done


async def until_progress(client: ProtocolClient, job: str, count: int) -> list[ClientEvent]:
    """Events up to the job's `count`-th progress."""
    events: list[ClientEvent] = []
    while len(steps_of(events, job)) < count:
        event = await client.next_event(WAIT)
        assert not isinstance(event, JobDone), event
        events.append(event)
    return events


async def replica_of(executor: ClusterExecutor, client: ProtocolClient, job: str) -> int:
    """The pid of the replica running `job` (the session's job of that id)."""
    for _ in range(int(WAIT / 0.01)):
        for (_, job_id), running in executor.running.items():
            if job_id == job and running.replica_pid is not None:
                return running.replica_pid
        await asyncio.sleep(0.01)
    raise AssertionError(f"job {job} never started on a replica")


def test_two_replicas_serve_two_clients_at_once(with_gateway) -> None:
    async def scenario(server: RunningServer, executor: ClusterExecutor) -> None:
        async with server.client() as first, server.client() as second:
            welcome = (await first.hello()).welcome
            await second.hello()
            assert welcome.model.demo and welcome.model.family.value == "sd15"
            assert Method.SD15_JOINT in welcome.capabilities.methods
            await first.submit("a", steps=8)
            await second.submit("b", steps=8)
            early_a = await until_progress(first, "a", 1)
            early_b = await until_progress(second, "b", 1)
            # Both run now, each on its own replica: neither waited for the other.
            pids = {await replica_of(executor, first, "a"), await replica_of(executor, second, "b")}
            assert len(pids) == 2
            events_a = early_a + await first.until_done("a")
            events_b = early_b + await second.until_done("b")
        for job, events in (("a", events_a), ("b", events_b)):
            assert isinstance(events[0], JobAccepted)
            assert events[0].accepted.position == 0
            assert steps_of(events, job) == list(range(1, 9))
            previews = [e.preview for e in events if isinstance(e, ProgressReceived)]
            assert all(preview is not None and len(preview) > 0 for preview in previews)
            (result,) = [e for e in events if isinstance(e, ResultReceived)]
            assert result.result.seed == 12345
            foreground = np.frombuffer(result.images[next(iter(result.images))], np.uint8)
            assert foreground.size == 64 * 64 * 4
            assert done_of(events, job).done.status is JobStatus.COMPLETED

    with_gateway(scenario)


def test_a_batch_takes_turns_with_another_painter(with_gateway) -> None:
    """One painter's batch of three runs one at a time (2 GPUs: one less per client);
    another painter's job starts at once on the other GPU, not after the batch."""

    async def scenario(server: RunningServer, executor: ClusterExecutor) -> None:
        async with server.client() as painter, server.client() as other:
            await painter.hello()
            await other.hello()
            for name in ("p1", "p2", "p3"):
                await painter.submit(name, steps=3)
            events = await until_progress(painter, "p1", 1)
            await other.submit("o1", steps=3)
            other_events = await other.until_done("o1")
            events += await painter.until_done("p3")
        accepted = {
            e.accepted.job: e.accepted.position for e in events if isinstance(e, JobAccepted)
        }
        assert accepted == {"p1": 0, "p2": 0, "p3": 1}
        assert done_of(other_events, "o1").done.status is JobStatus.COMPLETED
        # The batch never held both GPUs: each job began after the one before it ended.
        order = [
            (type(e).__name__, e.progress.job if isinstance(e, ProgressReceived) else e.done.job)
            for e in events
            if isinstance(e, ProgressReceived | JobDone)
        ]
        for before, after in (("p1", "p2"), ("p2", "p3")):
            assert order.index(("JobDone", before)) < order.index(("ProgressReceived", after))

    with_gateway(scenario)


def test_cancel_stops_a_running_job_within_a_step(with_gateway) -> None:
    async def scenario(server: RunningServer, executor: ClusterExecutor) -> None:
        async with server.client() as client:
            await client.hello()
            await client.submit("long", steps=150)
            await until_progress(client, "long", 2)
            await client.send(client.protocol.send_cancel("long"))
            events = await client.until_done("long")
            assert done_of(events, "long").done.status is JobStatus.CANCELLED
            assert not [e for e in events if isinstance(e, ResultReceived)]
            assert len(steps_of(events, "long")) <= 2  # in flight when it was cancelled
            # The GPUs are free again: the next two jobs run and complete.
            await client.submit("next1", steps=2)
            await client.submit("next2", steps=2)
            await client.until_done("next1")
            events = await client.until_done("next2")
            assert done_of(events, "next2").done.status is JobStatus.COMPLETED
            assert executor.running == {}

    with_gateway(scenario)


def test_a_full_line_is_refused_as_busy_and_the_rest_goes_on(with_gateway) -> None:
    async def scenario(server: RunningServer, executor: ClusterExecutor) -> None:
        async with server.client() as client:
            await client.hello()
            await client.submit("runs", steps=150)
            await client.submit("waits", steps=2)  # one running per client: it waits
            await client.submit("refused", steps=2)
            events: list[ClientEvent] = []
            while not any(isinstance(e, ErrorReceived) for e in events):
                events.append(await client.next_event(WAIT))
            (error,) = [e.error for e in events if isinstance(e, ErrorReceived)]
            assert error.job == "refused"
            assert error.code is ErrorCode.QUEUE_FULL
            assert error.message == (
                "the studio's GPUs are busy: the line of jobs waiting for them is full (1); "
                "try again when some have finished"
            )
            await client.send(client.protocol.send_cancel("runs"))
            events = await client.until_done("waits")
            assert done_of(events, "runs").done.status is JobStatus.CANCELLED
            assert done_of(events, "waits").done.status is JobStatus.COMPLETED

    with_gateway(scenario, per_client=1, max_waiting=1)


def test_a_client_that_reconnects_gets_what_finished_while_away(with_gateway) -> None:
    async def scenario(server: RunningServer, executor: ClusterExecutor) -> None:
        async with server.client() as client:
            session = (await client.hello()).welcome.session
            await client.submit("away", steps=4)
            event = await client.next_event(WAIT)
            assert isinstance(event, JobAccepted)
        for _ in range(int(WAIT / 0.05)):  # the job ends while nobody listens
            if not executor.running:
                break
            await asyncio.sleep(0.05)
        assert not executor.running
        async with server.client() as again:
            assert (await again.hello(session)).welcome.session == session
            events = await again.until_done("away")
        (result,) = [e for e in events if isinstance(e, ResultReceived)]
        assert result.result.job == "away" and result.images
        assert done_of(events, "away").done.status is JobStatus.COMPLETED

    with_gateway(scenario)


def test_a_request_for_the_other_family_is_refused_in_words(with_gateway) -> None:
    async def scenario(server: RunningServer, executor: ClusterExecutor) -> None:
        async with server.client() as client:
            await client.hello()
            await client.submit("xl", Method.SDXL_TRANSPARENT_ATTN)
            event = await client.next_event(WAIT)
        assert isinstance(event, ErrorReceived)
        assert event.error.code is ErrorCode.INVALID_REQUEST
        assert event.error.message.startswith(
            "method: sdxl_transparent_attn needs a sdxl base model, but demo-sd15"
        )

    with_gateway(scenario)


def test_the_gateway_keeps_the_token_and_origin_rules(with_gateway) -> None:
    async def scenario(server: RunningServer, executor: ClusterExecutor) -> None:
        with pytest.raises(InvalidStatus) as refused:
            async with server.client():
                pass
        assert refused.value.response.status_code == 401
        browser = {"Authorization": "Bearer s3cret"}
        with pytest.raises(InvalidStatus) as refused:
            async with server.client(additional_headers=browser, origin="http://evil.example"):
                pass
        assert refused.value.response.status_code == 403
        async with server.client(additional_headers=browser) as client:
            await client.hello()
            await client.submit("allowed", steps=2)
            events = await client.until_done("allowed")
        assert done_of(events, "allowed").done.status is JobStatus.COMPLETED

    with_gateway(scenario, config={"token": "s3cret"})


def test_the_status_shows_the_gpus_the_model_and_the_queue(
    healthy_cluster: Cluster, with_gateway
) -> None:
    from backend.cluster.status import read_status

    async def scenario(server: RunningServer, executor: ClusterExecutor) -> None:
        async with server.client() as client:
            await client.hello()
            await client.submit("shown", steps=150)
            await until_progress(client, "shown", 1)
            text = ""
            for _ in range(int(WAIT / 0.1)):  # the board is updated every 0.5 s
                text = (await asyncio.to_thread(read_status, "local")).describe()
                if "queue: 1 running," in text:
                    break
                await asyncio.sleep(0.1)
            await client.send(client.protocol.send_cancel("shown"))
            await client.until_done("shown")
        lines = text.splitlines()
        assert lines[0].endswith(": 1 node(s), 2 GPU(s), 0 free")
        assert "layerdiffuse-demo-sd15: running, replicas 2 running" in lines
        (model,) = [line for line in lines if line.startswith("  model demo-sd15")]
        assert model.endswith("(sd15, demo) on 2 GPU(s)")
        assert (
            "  queue: 1 running, 0 waiting from 0 client(s) (busy past 64); "
            "1 running per client at most"
        ) in lines

    with_gateway(scenario, board=healthy_cluster.board)


def test_a_job_whose_replica_is_killed_runs_again_on_another(
    healthy_cluster: Cluster, with_gateway
) -> None:
    async def scenario(server: RunningServer, executor: ClusterExecutor) -> None:
        async with server.client() as client:
            await client.hello()
            await client.submit("survives", steps=12, seed=777)
            events = await until_progress(client, "survives", 2)
            killed = await replica_of(executor, client, "survives")
            kill_replica(killed)
            for _ in range(int(WAIT / 0.01)):  # its second run starts elsewhere
                (running,) = executor.running.values()
                if running.attempt == 2 and running.replica_pid is not None:
                    break
                await asyncio.sleep(0.01)
            assert running.replica_pid != killed
            events += await client.until_done("survives")
        assert done_of(events, "survives").done.status is JobStatus.COMPLETED
        steps = steps_of(events, "survives")
        restart = next(i for i in range(1, len(steps)) if steps[i] <= steps[i - 1])
        assert steps[restart:] == list(range(1, 13)), steps  # the whole job, once more
        (result,) = [e for e in events if isinstance(e, ResultReceived)]
        assert result.result.seed == 777
        assert executor.retried == 1 and executor.lost == 0
        killed_pids.append(killed)

    killed_pids: list[int] = []
    with_gateway(scenario)
    wait_healthy(healthy_cluster, dead=tuple(killed_pids))


def test_a_job_that_loses_two_replicas_fails_saying_so(
    healthy_cluster: Cluster, with_gateway
) -> None:
    async def scenario(server: RunningServer, executor: ClusterExecutor) -> None:
        async with server.client() as client:
            await client.hello()
            await client.submit("doomed", steps=150)
            await until_progress(client, "doomed", 2)
            first = await replica_of(executor, client, "doomed")
            kill_replica(first)
            for _ in range(int(WAIT / 0.01)):  # its second run starts elsewhere
                (running,) = executor.running.values()
                if running.attempt == 2 and running.replica_pid not in (None, first):
                    break
                await asyncio.sleep(0.01)
            second = running.replica_pid
            assert second is not None and second != first
            kill_replica(second)
            events = await client.until_done("doomed")
        done = done_of(events, "doomed").done
        assert done.status is JobStatus.FAILED
        assert done.error is not None
        assert done.error.code is ErrorCode.INTERNAL_ERROR
        assert done.error.message == (
            "the GPU worker running this job stopped, and so did the one that ran it again: "
            "the job was not finished; try again, and tell whoever runs the studio's GPUs"
        )
        assert executor.retried == 1 and executor.lost == 1
        killed_pids.extend((first, second))

    killed_pids: list[int] = []
    with_gateway(scenario)
    wait_healthy(healthy_cluster, dead=tuple(killed_pids))
