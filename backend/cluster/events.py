"""What a replica streams back for one job, in order: Started, Progress*, Result*, Finished.

Plain frozen dataclasses (no Ray), pickled across the cluster.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..jobs.job import JobEnd, JobResult
from ..jobs.runner import Preview


@dataclass(frozen=True)
class Started:
    """The job began on a replica: which process, on which machine, on which device."""

    pid: int
    node: str
    device: str


@dataclass(frozen=True)
class Progress:
    """One sampler step done."""

    step: int
    total: int
    preview: Preview | None


@dataclass(frozen=True)
class Result:
    """One result of the job (after the last step)."""

    result: JobResult


@dataclass(frozen=True)
class Finished:
    """How the job ended; the last event of its stream."""

    end: JobEnd


ReplicaEvent = Started | Progress | Result | Finished
