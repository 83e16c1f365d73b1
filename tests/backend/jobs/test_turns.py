"""Fair turns between sessions for jobs waiting on several GPUs."""

from __future__ import annotations

import pytest

from backend.jobs.job import Job
from backend.jobs.turns import Turns
from backend.methods.request import GenerationRequest
from protocol import Method, PixelFormat


def job(session: str, name: str) -> Job:
    return Job(name, session, GenerationRequest(method=Method.SD15_TRANSPARENT), PixelFormat.BGRA8)


def test_one_session_goes_first_come_first_served() -> None:
    turns = Turns(per_session=8)
    jobs = [job("a", f"a{i}") for i in range(3)]
    for each in jobs:
        turns.add(each)
    assert [turns.take({}) for _ in range(3)] == jobs
    assert turns.take({}) is None


def test_a_newcomer_goes_before_the_rest_of_a_batch() -> None:
    """A painter who queued four jobs has one running; another painter's job goes next."""
    turns = Turns(per_session=8)
    batch = [job("a", f"a{i}") for i in range(4)]
    for each in batch:
        turns.add(each)
    assert turns.take({}) is batch[0]
    newcomer = job("b", "b0")
    turns.add(newcomer)
    assert turns.position(newcomer, {"a": 1}) == 0
    assert turns.take({"a": 1}) is newcomer
    assert turns.take({"a": 1, "b": 1}) is batch[1]


def test_sessions_alternate_when_both_have_a_batch() -> None:
    turns = Turns(per_session=8)
    for i in range(3):
        turns.add(job("a", f"a{i}"))
    for i in range(3):
        turns.add(job("b", f"b{i}"))
    running: dict[str, int] = {}
    order = []
    for _ in range(6):
        taken = turns.take(running)
        assert taken is not None
        order.append(taken.id)
        running[taken.session_id] = running.get(taken.session_id, 0) + 1
    assert order == ["a0", "b0", "a1", "b1", "a2", "b2"]


def test_a_session_at_its_cap_waits_while_gpus_are_free() -> None:
    """With a cap of 1 a batch never holds two GPUs, even when nobody else waits."""
    turns = Turns(per_session=1)
    first, second = job("a", "a0"), job("a", "a1")
    turns.add(first)
    turns.add(second)
    assert turns.take({}) is first
    assert turns.take({"a": 1}) is None
    assert len(turns) == 1 and second in turns
    assert turns.take({"a": 0}) is second


def test_a_removed_job_is_not_handed_out_and_positions_close_up() -> None:
    turns = Turns(per_session=8)
    jobs = [job("a", f"a{i}") for i in range(3)]
    for each in jobs:
        turns.add(each)
    assert turns.position(jobs[2], {}) == 2
    assert turns.remove(jobs[1]) is True
    assert turns.remove(jobs[1]) is False
    assert turns.position(jobs[2], {}) == 1
    assert [turns.take({}), turns.take({})] == [jobs[0], jobs[2]]


def test_positions_follow_the_turns() -> None:
    turns = Turns(per_session=8)
    a = [job("a", f"a{i}") for i in range(3)]
    for each in a:
        turns.add(each)
    b = job("b", "b0")
    turns.add(b)
    assert [turns.position(each, {}) for each in (a[0], b, a[1], a[2])] == [0, 1, 2, 3]
    with pytest.raises(ValueError, match="is not waiting"):
        turns.position(job("c", "c0"), {})


def test_a_cap_below_one_is_refused() -> None:
    with pytest.raises(ValueError, match="per_session 0 is not at least 1"):
        Turns(per_session=0)
