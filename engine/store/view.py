"""The read side of the store for people and scripts: squeue-style REASON text and a one-pass
snapshot of every job as plain, JSON-ready dicts (what ``trainconsole status --json`` prints and a
console can poll: 10,000 jobs in a few tens of milliseconds, in one short read transaction)."""

from __future__ import annotations

import os
import time
from typing import Any

from trainconsole.engine.isotime import iso
from trainconsole.engine.names import display
from trainconsole.engine.store import scheduling as sch
from trainconsole.engine.store.db import Database
from trainconsole.engine.store.folders import folder_for
from trainconsole.engine.store.types import STATUSES, Experiment, Job

_COLS = ("seq", "id", "name", "filename", "priority", "status", "attempts", "next_attempt_at",
         "error_class", "error", "created_at", "queued_at", "started_at", "finished_at", "step",
         "max_steps", "size", "sha256", "slurm_id", "node", "slurm_reason", "experiment", "last_loss",
         "eval_loss", "adapter")


def _shown(raw: bytes) -> str:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return display(os.fsdecode(raw))
    return text if text.isprintable() else display(text)


def reason_text(status: str, *, step: int | None, max_steps: int | None, error_class: str | None,
                error: str | None, next_attempt_at: float | None, attempts: int, now: float,
                paused: bool, ahead: int, policy: sch.QueuePolicy, node: str | None = None,
                slurm_reason: str | None = None) -> str:
    if status == "running":
        if slurm_reason:
            return f"pending in Slurm ({slurm_reason})"
        where = f" on {node}" if node else ""
        return f"running{where}" if step is None else f"running{where} (step {step}/{max_steps or '?'})"
    if status == "held":
        return f"held: {error}" if error and not error_class else "held"
    if status == "failed":
        return f"failed: {error_class}: {error}"
    if status in ("done", "cancelled"):
        return status
    if paused:
        return "paused"
    due = sch.due_at(next_attempt_at, now, policy.backoff_max_s)
    if error and not error_class and next_attempt_at is not None:
        # Not a failed attempt: something outside the job keeps it waiting (Store.wait_busy).
        when = time.strftime("%H:%M:%S", time.localtime(due)) if due is not None and due > now else None
        return f"waiting: {error}; " + (f"tried again at {when}" if when else "trying again")
    if due is not None and due > now:
        when = time.strftime("%H:%M:%S", time.localtime(due))
        return f"waiting for retry at {when} (attempt {attempts + 1}/{policy.max_attempts})"
    return f"priority ({ahead} ahead)" if ahead else "next"


def ranks(items: list[tuple[str, str, float, int, float | None]], now: float,
          policy: sch.QueuePolicy) -> dict[str, int]:
    """Position in the run order of each runnable queued job: (id, priority, queued_at, seq,
    next_attempt_at) in, id -> 0-based rank out."""
    ready = [it for it in items if sch.is_due(it[4], now, policy.backoff_max_s)]
    ready.sort(key=lambda it: sch.order_key(it[1], it[2], it[3], now, policy.aging_s))
    return {it[0]: i for i, it in enumerate(ready)}


def reasons(db: Database, policy: sch.QueuePolicy, now: float, jobs: list[Job]) -> dict[str, str]:
    paused = db.paused()
    running = sum(1 for j in jobs if j.status == "running")
    rank = ranks([(j.id, j.priority, j.queued_at, j.seq, j.next_attempt_at) for j in jobs
                  if j.status == "queued"], now, policy)
    states = {j.id: j.status for j in jobs}
    out = {j.id: reason_text(j.status, step=j.step, max_steps=j.max_steps, error_class=j.error_class,
                             error=j.error, next_attempt_at=j.next_attempt_at, attempts=j.attempts,
                             now=now, paused=paused, ahead=rank.get(j.id, 0) + running,
                             policy=policy, node=j.node, slurm_reason=j.slurm_reason)
           for j in jobs}
    for j in jobs:
        waiting = waiting_for(j.status, j.experiment.after, states)
        if waiting:
            out[j.id] = waiting
    return out


def waiting_for(status: str, after: str | None, states: dict[str, str]) -> str | None:
    """The reason of a queued job whose ``--after`` job has not finished done yet."""
    if status != "queued" or after is None or states.get(after) == "done":
        return None
    return f"waiting for {after} ({states.get(after, 'gone')})"


def snapshot(db: Database, policy: sch.QueuePolicy, now: float) -> tuple[bool, list[dict[str, Any]]]:
    """(paused, jobs in id order), read in one short transaction."""
    with db.read() as conn:
        rows = conn.execute(f"SELECT {','.join(_COLS)} FROM jobs ORDER BY seq").fetchall()
        paused = db.paused()
    folders = {s: os.fspath(folder_for(db.layout, s)) + os.sep for s in STATUSES}
    running = sum(1 for r in rows if r[5] == "running")
    rank = ranks([(r[1], r[4], r[11], r[0], r[7]) for r in rows if r[5] == "queued"], now, policy)
    states = {r[1]: r[5] for r in rows}
    out = []
    for r in rows:
        (seq, job_id, name, filename, priority, status, attempts, next_at, eclass, error, created,
         _queued, started, finished, step, max_steps, size, sha, slurm_id, node, slurm_reason, exp_text,
         last_loss, eval_loss, adapter) = r
        exp = Experiment.from_json(exp_text)
        if status == "done" or status == "cancelled":
            reason = status  # most rows in a long-lived queue: skip the general path
        else:
            reason = reason_text(status, step=step, max_steps=max_steps, error_class=eclass, error=error,
                                 next_attempt_at=next_at, attempts=attempts, now=now, paused=paused,
                                 ahead=rank.get(job_id, 0) + running, policy=policy, node=node,
                                 slurm_reason=slurm_reason)
        waiting = waiting_for(status, exp.after, states)
        if waiting:
            reason = waiting
        raw = bytes(name)
        try:
            exact: str | None = raw.decode("utf-8")
        except UnicodeDecodeError:
            exact = None  # not text: only the hex form is exact
        out.append({
            "id": job_id, "name": _shown(raw), "original_name": exact, "original_name_hex": raw.hex(),
            "status": status, "priority": priority, "reason": reason,
            "attempts": attempts, "max_attempts": policy.max_attempts, "next_attempt_at": iso(next_at),
            "error_class": eclass, "error": error, "created_at": iso(created), "started_at": iso(started),
            "finished_at": iso(finished), "step": step, "max_steps": max_steps, "size": size,
            "sha256": sha, "path": folders.get(status, "") + filename,
            "slurm_id": slurm_id, "node": node,
            "lineage": exp.lineage, "sweep": exp.sweep, "after": exp.after, "settings": exp.settings or None,
            "adapter": adapter, "last_loss": last_loss, "eval_loss": eval_loss,
            "run_dir": os.fspath(db.layout.run_dir(job_id)), "log": os.fspath(db.layout.job_events(job_id)),
        })
    return paused, out
