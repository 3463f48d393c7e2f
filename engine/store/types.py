"""The store's value types: a job as read, a command for the daemon, and the operator's error."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from trainconsole.engine.errors import TrainconsoleError

STATUSES = ("queued", "held", "running", "done", "failed", "cancelled")
ACTIVE = ("queued", "held", "running")


class QueueError(TrainconsoleError):
    """An operator asked for something the job's state does not allow, or named no job."""


@dataclass(frozen=True)
class Experiment:
    """What a job is as an experiment, fixed when it is queued (``trainconsole add`` flags, an inbox
    sidecar). Stored as JSON in ``jobs.experiment`` and in the job's sidecar, so a rebuild of the
    database keeps it. Empty (a job from before experiments): config.toml's settings, lineage main."""

    settings: dict[str, dict[str, Any]] = field(default_factory=dict)  # per-job sections, whole
    lineage: str = "main"
    start_from: str | None = None  # None: the lineage's newest adapter; "base"; or an adapter path
    after: str | None = None  # a job id that must finish done first
    sweep: str | None = None  # the sweep this job is one point of (its lineages share the name)

    def to_json(self) -> str:
        out: dict[str, Any] = {"settings": self.settings, "lineage": self.lineage}
        for key in ("start_from", "after", "sweep"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        return orjson.dumps(out).decode()

    @classmethod
    def from_json(cls, text: str | bytes | None) -> Experiment:
        try:
            raw = orjson.loads(text or b"{}")
        except orjson.JSONDecodeError:
            raw = {}
        if not isinstance(raw, dict):
            raw = {}

        def text_or_none(key: str) -> str | None:
            value = raw.get(key)
            return value if isinstance(value, str) and value else None

        settings = raw.get("settings")
        return cls(settings=settings if isinstance(settings, dict) else {},
                   lineage=text_or_none("lineage") or "main", start_from=text_or_none("start_from"),
                   after=text_or_none("after"), sweep=text_or_none("sweep"))


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
    slurm_reason: str | None = None
    experiment: Experiment = field(default_factory=Experiment)
    last_loss: float | None = None  # the newest step's loss the daemon saw
    eval_loss: float | None = None  # the newest evaluation's loss
    adapter: str | None = None  # the folder the job published, once done

    @property
    def lineage(self) -> str:
        return self.experiment.lineage  # why Slurm keeps it pending (Resources, Priority...)


@dataclass(frozen=True)
class Command:
    id: int
    kind: str
    job_id: str | None
    arg: Any
    created_at: float
