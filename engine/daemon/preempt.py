"""Preemption (``queue.preempt = true``, case 59's "a high-priority arrival can preempt"): when the
best waiting job cannot start (no free slot, or its lineage is busy) and a job of a lower priority
level is running, that job is asked to stop: SIGTERM, which the worker turns into a checkpoint at
its next step boundary and exit 18 (interrupted). The retry policy requeues an interrupted job
without charging an attempt, and the waiting job, ranked higher, starts first; the stopped job
later resumes from the checkpoint it just wrote, so it loses at most one save interval (none, when
the stop's own save succeeds).

Only the base priority levels count (high > normal > low): aging lets a long-waiting job start
before newer ones, never stop a running one, so two jobs cannot keep stopping each other. One job
is stopped at a time, and a job already stopping (stop, cancel, a hang) or still pending in a
cluster's queue is never chosen. ``false`` (the default) changes nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from trainconsole.engine.daemon.running import Running
from trainconsole.engine.daemon.slots import Slots
from trainconsole.engine.store import Job
from trainconsole.engine.store.scheduling import LEVEL_RANK


@dataclass(frozen=True)
class Preemption:
    victim: Running
    for_job: Job

    def reason(self) -> str:
        return (f"preempted by {self.for_job.id} ({self.for_job.priority} priority): stopped after a "
                "checkpoint, not charged an attempt; it resumes from that checkpoint later")


def choose(waiting: Sequence[Job], running: Sequence[Running], slots: Slots) -> Preemption | None:
    """The attempt to stop for the best waiting job, or None. ``waiting``: runnable jobs, best first."""
    if not waiting or not running or any(r.term_at is not None for r in running):
        return None  # nothing to do, or one is already on its way out: its slot comes free
    best = waiting[0]
    jobs = [r.job for r in running]
    if slots.may_start(best, jobs):
        return None  # it starts on its own
    rank = LEVEL_RANK.get(best.priority, 1)
    # Lowest priority first; among equals the latest started, which has the least to lose.
    lower = sorted((r for r in running if r.started and LEVEL_RANK.get(r.job.priority, 1) > rank),
                   key=lambda r: (-LEVEL_RANK.get(r.job.priority, 1), -(r.job.started_at or 0.0)))
    for run in lower:
        if slots.may_start(best, [j for j in jobs if j.id != run.job.id]):
            return Preemption(run, best)
    return None
