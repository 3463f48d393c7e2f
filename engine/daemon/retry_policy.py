"""What happens to a job after its worker ended (``trainconsole.engine.daemon.outcome`` says how it
ended): the daemon's retry policy, in one place.

- done: published; interrupted (stop, preemption): requeued without charging an attempt.
- OOM (21-24): down the ladder (half the micro-batch, twice the accumulation, then gradient
  checkpointing), every rung recorded in the job's overrides, the engine log and the job log; a
  kernel OOM kill (24) also charges an attempt; past the last rung, a clear permanent failure.
- disk full (25): not charged; the queue pauses until the disk has room for another checkpoint.
- device fault (28): retried after the store's back-off; three within an hour pause the queue.
- transient (44, 45, 70, outside kills): the store's back-off, bounded by ``max_attempts``.
- bug (71-80), data, config, diverged: failed at once with the report (traceback included).

One fault, one alert: the worker's own account goes to the job's log (an alert there only for a
fault it alerted as it found it, ``Report.alerted``), the store's generic "failed" alert is turned
off, and this module raises the single alert a person sees, naming the case, what happens next and,
for a job that ended in failed/, where its report is.

The store keeps the bookkeeping part of the policy, where the attempt counter lives:
``Store.fail_attempt`` (``trainconsole.engine.store.store``) charges an attempt or not by class
(permanent classes fail at once, disk-full and interrupted are not charged), computes the back-off
(``queue.backoff_s``) and moves an exhausted job to failed/ with its report; ``Store.requeue``
does the same for an OOM rung. This module decides which of them applies and what else follows.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trainconsole.engine.config.schema import TrainingConfig
from trainconsole.engine.daemon.notify import Notifier
from trainconsole.engine.daemon.outcome import Outcome
from trainconsole.engine.daemon.resources import ResourceGuard, checkpoint_mb
from trainconsole.engine.errors import PERMANENT, ErrorClass
from trainconsole.engine.events import EventLog
from trainconsole.engine.store import Job, Store
from trainconsole.engine.store import files as sf

DEVICE_FAULT_WINDOW_S = 3600.0
DEVICE_FAULTS_TO_PAUSE = 3


@dataclass
class Holds:
    """What the policy remembers between jobs: whether a full disk paused the queue (the engine
    resumes it on its own once there is room), and the recent device faults."""

    disk_paused: bool = False
    device_faults: list[float] = field(default_factory=list)


@dataclass(frozen=True)
class Ended:
    """The run whose outcome is applied."""

    job: Job
    run_dir: Path
    job_log: Path
    cancelled: bool = False  # an operator's cancel stopped it
    requeue_reason: str | None = None  # why an interrupted job was stopped (preempted), if by us


@dataclass(frozen=True)
class Rung:
    """One step down the OOM ladder (cases 21, 23, 24): the effective batch never changes."""

    overrides: dict[str, Any] = field(default_factory=dict)
    description: str = ""


def next_oom_rung(overrides: dict[str, Any], batch_size: int, accumulation: int,
                  checkpointing: bool) -> Rung | None:
    """The next rung, or None when the ladder is exhausted (micro-batch 1 with checkpointing)."""
    batch = int(overrides.get("batch_size", batch_size))
    acc = int(overrides.get("gradient_accumulation", accumulation))
    gc = bool(overrides.get("gradient_checkpointing", checkpointing))
    rung = int(overrides.get("oom_rung", 0)) + 1
    new = dict(overrides)
    if batch > 1:
        # The largest divisor at most half: 4 -> 2, 6 -> 3, 3 -> 1, so batch * acc stays exact.
        smaller = max(d for d in range(1, batch // 2 + 1) if batch % d == 0)
        new.update(batch_size=smaller, gradient_accumulation=acc * (batch // smaller), oom_rung=rung)
        return Rung(new, f"micro-batch {batch} -> {smaller}, accumulation {acc} -> "
                         f"{acc * (batch // smaller)} (effective batch {batch * acc} unchanged)")
    if not gc:
        new.update(gradient_checkpointing=True, oom_rung=rung)
        return Rung(new, "gradient checkpointing on (micro-batch already 1)")
    return None


def effective_batch(overrides: dict[str, Any], batch_size: int, accumulation: int) -> int:
    return int(overrides.get("batch_size", batch_size)) * int(
        overrides.get("gradient_accumulation", accumulation))


def _report_text(outcome: Outcome) -> str | None:
    if not outcome.traceback:
        return None
    return f"{outcome.message}\n\n{outcome.traceback}"


def _failed_tail(store: Store, job: Job, after: Job) -> str:
    if after.status != "failed":
        return ""
    return f"; report in {store.layout.failed / sf.report_name(job.path.name)}"


def _job_log(ended: Ended, level: str, message: str) -> None:
    with EventLog(ended.job_log) as log:
        log.emit("log", level=level, job_id=ended.job.id, message=message)


def apply_outcome(outcome: Outcome, ended: Ended, *, store: Store, notifier: Notifier,
                  guard: ResourceGuard, holds: Holds, training: TrainingConfig) -> None:
    """Move the job on as the policy says, in the store, the resource guard and ``holds``."""
    jid = ended.job.id
    cls = outcome.error_class
    if outcome.done:
        store.succeed(jid, adapter=outcome.report.adapter if outcome.report is not None else None)
        return
    if ended.cancelled:
        store.cancel(jid, worker_stopped=True)
        return
    if cls is ErrorClass.INTERRUPTED:
        reason = ended.requeue_reason or outcome.message
        if ended.requeue_reason:
            step = f" at step {outcome.global_step}" if outcome.global_step else ""
            _job_log(ended, "info", f"{ended.requeue_reason} (checkpointed{step})")
        store.requeue(jid, charge_attempt=False, reason=reason)
        return
    if cls is ErrorClass.OOM:
        _oom(outcome, ended, store, notifier, training)
        return
    if cls is ErrorClass.DISK_FULL:
        store.fail_attempt(jid, cls, outcome.message)  # not charged; the store pauses the queue
        holds.disk_paused = True
        guard.hold_for_disk(ended.run_dir, checkpoint_mb(ended.run_dir))
        notifier.alert(25, f"{jid}: the disk filled up ({outcome.message}); the previous "
                           "checkpoint is intact, no attempt was charged, and the queue is paused "
                           "until space is freed", severity="critical", job_id=jid, key="disk-full")
        return
    if cls is ErrorClass.DEVICE:
        now = time.monotonic()
        holds.device_faults = [t for t in holds.device_faults if now - t < DEVICE_FAULT_WINDOW_S] + [now]
        after = store.fail_attempt(jid, cls, outcome.message, _report_text(outcome), alert=False)
        notifier.alert(28, f"{jid}: device fault ({outcome.message}); "
                           + ("retrying after a delay" if after.status == "queued" else "no attempts left")
                           + _failed_tail(store, ended.job, after),
                       severity="warning", job_id=jid)
        if len(holds.device_faults) >= DEVICE_FAULTS_TO_PAUSE:
            store.set_paused(True)
            holds.device_faults.clear()
            notifier.alert(28, f"{DEVICE_FAULTS_TO_PAUSE} device faults within an hour: the queue "
                               "is paused; check the GPU (nvidia-smi, dmesg) and `trainconsole resume`",
                           severity="critical", key="device-faults")
        return
    assert cls is not None
    # A fault the worker alerted as it found it (a refused adapter) already has its alert.
    alerted = outcome.report is not None and outcome.report.alerted
    after = store.fail_attempt(jid, cls, outcome.message, _report_text(outcome), alert=False)
    if alerted:
        return
    where = _failed_tail(store, ended.job, after)
    if cls is ErrorClass.BUG:
        notifier.alert(outcome.case, f"{jid}: a bug stopped the worker: {outcome.message}; not "
                                     f"retried, the traceback is in the job's report{where}",
                       severity="critical", job_id=jid)
    elif outcome.case is not None or after.status != "queued":
        tail = ("retrying with back-off" if after.status == "queued"
                else f"job {after.status}" if cls in PERMANENT
                else f"job failed: gave up after {after.attempts} attempts (case 60)")
        notifier.alert(outcome.case, f"{jid}: {outcome.message}; {tail}{where}", job_id=jid,
                       severity="warning" if after.status == "queued" else "critical")


def _oom(outcome: Outcome, ended: Ended, store: Store, notifier: Notifier, t: TrainingConfig) -> None:
    job = ended.job
    jid = job.id
    case = outcome.case or 23
    charge = case == 24  # the kernel's OOM killer: counted as an attempt
    rung = next_oom_rung(job.overrides, t.batch_size, t.gradient_accumulation, t.gradient_checkpointing)
    if rung is None:
        message = (f"out of memory (case {case}) even with micro-batch 1 and gradient checkpointing; "
                   "lower training.max_length or lora.r, or use a device with more memory")
        after = store.fail_attempt(jid, ErrorClass.CONFIG, message, _report_text(outcome), alert=False)
        _job_log(ended, "error", message)
        notifier.alert(case, f"{jid}: {message}{_failed_tail(store, job, after)}", severity="critical",
                       job_id=jid)
        return
    eff = effective_batch(rung.overrides, t.batch_size, t.gradient_accumulation)
    after = store.requeue(jid, overrides=rung.overrides, charge_attempt=charge, alert=False,
                          reason=f"out of memory: rung {rung.overrides.get('oom_rung')}: {rung.description}")
    text = (f"out of memory ({outcome.message}); OOM ladder rung {rung.overrides.get('oom_rung')}: "
            f"{rung.description}; effective batch {eff}")
    _job_log(ended, "warning", text)
    if after.status == "failed":
        notifier.alert(case, f"{jid}: {text}; but no attempts are left: failed{_failed_tail(store, job, after)}",
                       severity="critical", job_id=jid)
    else:
        notifier.alert(case, f"{jid}: {text}; resuming from the last checkpoint", severity="warning",
                       job_id=jid)
