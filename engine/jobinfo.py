"""One job, everything an operator asks about it, as plain JSON-ready data: its state and reason,
attempts and their errors, the out-of-memory rungs it is on, its adapter, its last loss and eval
loss, and where its files are. ``trainconsole show`` prints it; the console's detail can use it.

Reads the store's row and a bounded tail of the job's event log (never the whole log: a long run
writes hundreds of megabytes of it). Times are ISO 8601 with offset (``trainconsole.engine.isotime``)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trainconsole.engine.adapters import published_for
from trainconsole.engine.events import EventTail
from trainconsole.engine.isotime import iso
from trainconsole.engine.layout import Layout
from trainconsole.engine.store import Job, Store

TAIL_BYTES = 256 << 10


@dataclass(frozen=True)
class LastMetrics:
    step: int | None = None
    loss: float | None = None
    eval_step: int | None = None
    eval_loss: float | None = None


def _float(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value)
    if value in ("nan", "inf", "-inf"):  # how the event log writes a diverged loss
        return float(value)
    return None


def last_metrics(log: Path, window: int = TAIL_BYTES) -> LastMetrics:
    """The newest step and evaluation in the last ``window`` bytes of a job's event log."""
    try:
        size = log.stat().st_size
    except OSError:
        return LastMetrics()
    tail = EventTail(log, offset=max(0, size - window), max_bytes=window + 1)
    step: dict[str, Any] | None = None
    evaluation: dict[str, Any] | None = None
    for event in tail.read_new():
        if event.get("type") == "step":
            step = event
        elif event.get("type") == "eval":
            evaluation = event
    return LastMetrics(
        step=step.get("step") if step is not None and isinstance(step.get("step"), int) else None,
        loss=_float(step.get("loss")) if step is not None else None,
        eval_step=evaluation.get("step") if evaluation is not None and isinstance(evaluation.get("step"), int) else None,
        eval_loss=_float(evaluation.get("eval_loss")) if evaluation is not None else None)


def paths(layout: Layout, job: Job) -> dict[str, str | None]:
    run = layout.run_folder(job.id)
    tensorboard = [p for p in (layout.runs / "tensorboard").glob(f"{job.id}-*") if p.is_dir()] \
        if (layout.runs / "tensorboard").is_dir() else []
    return {
        "data": os.fspath(job.path), "run_dir": os.fspath(run.path), "log": os.fspath(run.events),
        "worker_log": os.fspath(run.worker_log), "report": os.fspath(run.report),
        "checkpoints": os.fspath(run.checkpoints),
        "tensorboard": os.fspath(tensorboard[0]) if tensorboard else None,
    }


def describe(store: Store, job: Job, now: float) -> dict[str, Any]:
    """The whole picture of one job (what ``trainconsole show --json`` prints under ``job``)."""
    layout = store.layout
    metrics = last_metrics(layout.job_events(job.id))
    adapter = Path(job.adapter) if job.adapter else published_for(layout.adapters, job.id)
    exp = job.experiment
    history = [{**h, "t": iso(h["t"])} if isinstance(h.get("t"), int | float) else dict(h)
               for h in job.history]
    rungs = {k: v for k, v in job.overrides.items()
             if k in ("oom_rung", "batch_size", "gradient_accumulation", "gradient_checkpointing", "lr_factor")}
    return {
        "id": job.id, "name": job.name, "status": job.status, "reason": store.reason(job, now),
        "priority": job.priority, "attempts": job.attempts, "max_attempts": store.policy.max_attempts,
        "error_class": job.error_class, "error": job.error, "history": history, "rungs": rungs,
        "step": job.step if job.step is not None else metrics.step, "max_steps": job.max_steps,
        "last_loss": metrics.loss if metrics.loss is not None else job.last_loss, "last_loss_step": metrics.step,
        "eval_loss": metrics.eval_loss if metrics.eval_loss is not None else job.eval_loss,
        "eval_step": metrics.eval_step,
        "adapter": os.fspath(adapter) if adapter is not None else None,
        "lineage": exp.lineage, "start_from": exp.start_from, "after": exp.after, "sweep": exp.sweep,
        "settings": exp.settings or None,
        "created_at": iso(job.created_at), "queued_at": iso(job.queued_at), "started_at": iso(job.started_at),
        "finished_at": iso(job.finished_at), "next_attempt_at": iso(job.next_attempt_at),
        "sha256": job.sha256, "size": job.size, "paths": paths(layout, job),
    }
