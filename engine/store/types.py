"""The store's value types: a job as read, a command for the daemon, and the operator's error."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trainconsole.engine.errors import TrainconsoleError

STATUSES = ("queued", "held", "running", "done", "failed", "cancelled")
ACTIVE = ("queued", "held", "running")


class QueueError(TrainconsoleError):
    """An operator asked for something the job's state does not allow, or named no job."""


@dataclass(frozen=True)
class Job:
    id: str
    name: str
    path: Path
    sha256: str
    size: int
    priority: str
    status: str
    attempts: int
    next_attempt_at: float | None
    error_class: str | None
    error: str | None
    overrides: dict[str, Any]
    created_at: float
    started_at: float | None
    finished_at: float | None
    pid: int | None
    pid_start: str | None  # trainconsole.engine.procid identity of the worker
    step: int | None
    max_steps: int | None
    queued_at: float = 0.0
    seq: int = 0
    history: tuple[dict[str, Any], ...] = field(default=())
    # Where the attempt runs on a cluster (launcher.kind = "slurm"); None for a local worker.
    slurm_id: int | None = None
    node: str | None = None
    slurm_reason: str | None = None  # why Slurm keeps it pending (Resources, Priority...)


@dataclass(frozen=True)
class Command:
    id: int
    kind: str
    job_id: str | None
    arg: Any
    created_at: float
