"""What happens to a job after its worker ended: the retry policy applied to the store.

- done: published; interrupted (stop, preemption): requeued without charging an attempt.
- OOM (21-24): down the ladder (half the micro-batch, twice the accumulation, then gradient
  checkpointing), every rung recorded in the job's overrides, the engine log and the job log; a
  kernel OOM kill (24) also charges an attempt; past the last rung, a clear permanent failure.
- disk full (25): not charged; the queue pauses until the disk has room for another checkpoint.
- device fault (28): retried after the store's back-off; repeated faults pause the queue.
- transient (44, 45, 70, outside kills): the store's back-off, bounded by ``max_attempts``.
- bug (71-80), data, config, diverged: failed at once with the report (traceback included).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from trainconsole.engine.daemon.resources import checkpoint_mb
from trainconsole.engine.daemon.retry_policy import Outcome, effective_batch, next_oom_rung
from trainconsole.engine.errors import ErrorClass
from trainconsole.engine.events import EventLog

if TYPE_CHECKING:
    from trainconsole.engine.daemon.supervisor import Running, Supervisor

DEVICE_FAULT_WINDOW_S = 3600.0
DEVICE_FAULTS_TO_PAUSE = 3


def _report_text(outcome: Outcome) -> str | None:
    if not outcome.traceback:
        return None
    return f"{outcome.message}\n\n{outcome.traceback}"


def _job_log(sup: Supervisor, job_id: str, level: str, message: str) -> None:
    with EventLog(sup.layout.job_events(job_id)) as log:
        log.emit("log", level=level, job_id=job_id, message=message)


def apply_outcome(sup: Supervisor, run: Running, outcome: Outcome) -> None:
    store, job = sup.store, run.job
    jid = job.id
    cls = outcome.error_class
    if outcome.done:
        adapter = (outcome.report or {}).get("adapter")
        store.succeed(jid, adapter=adapter if isinstance(adapter, str) else None)
        return
    if run.cancel:
        store.cancel(jid, worker_stopped=True)
        return
    if cls is ErrorClass.INTERRUPTED:
        store.requeue(jid, charge_attempt=False, reason=outcome.message)
        return
    if cls is ErrorClass.OOM:
        _oom(sup, run, outcome)
        return
    if cls is ErrorClass.DISK_FULL:
        store.fail_attempt(jid, cls, outcome.message)  # not charged; the store pauses the queue
        sup.disk_paused = True
        sup.guard.hold_for_disk(run.run_dir, checkpoint_mb(run.run_dir))
        sup.notifier.alert(25, f"{jid}: the disk filled up ({outcome.message}); the previous "
                               "checkpoint is intact, no attempt was charged, and the queue is paused "
                               "until space is freed", severity="critical", job_id=jid, key="disk-full")
        return
    if cls is ErrorClass.DEVICE:
        now = time.monotonic()
        sup.device_faults = [t for t in sup.device_faults if now - t < DEVICE_FAULT_WINDOW_S] + [now]
        after = store.fail_attempt(jid, cls, outcome.message, _report_text(outcome))
        sup.notifier.alert(28, f"{jid}: device fault ({outcome.message}); "
                               + ("retrying after a delay" if after.status == "queued" else "no attempts left"),
                           severity="warning", job_id=jid)
        if len(sup.device_faults) >= DEVICE_FAULTS_TO_PAUSE:
            store.set_paused(True)
            sup.device_faults.clear()
            sup.notifier.alert(28, f"{DEVICE_FAULTS_TO_PAUSE} device faults within an hour: the queue "
                                   "is paused; check the GPU (nvidia-smi, dmesg) and `trainconsole resume`",
                               severity="critical", key="device-faults")
        return
    assert cls is not None
    after = store.fail_attempt(jid, cls, outcome.message, _report_text(outcome))
    if cls is ErrorClass.BUG:
        sup.notifier.alert(outcome.case, f"{jid}: a bug stopped the worker: {outcome.message}; not "
                                         "retried, the traceback is in the job's report in failed/",
                           severity="critical", job_id=jid)
    elif outcome.case is not None:
        tail = "retrying with back-off" if after.status == "queued" else f"job {after.status}"
        sup.notifier.alert(outcome.case, f"{jid}: {outcome.message}; {tail}", job_id=jid,
                           severity="warning" if after.status == "queued" else "critical")


def _oom(sup: Supervisor, run: Running, outcome: Outcome) -> None:
    store, job = sup.store, run.job
    t = sup.job_config(job).training  # the job's own batch and accumulation, fixed when queued
    jid = job.id
    case = outcome.case or 23
    charge = case == 24  # the kernel's OOM killer: counted as an attempt
    rung = next_oom_rung(job.overrides, t.batch_size, t.gradient_accumulation, t.gradient_checkpointing)
    if rung is None:
        message = (f"out of memory (case {case}) even with micro-batch 1 and gradient checkpointing; "
                   "lower training.max_length or lora.r, or use a device with more memory")
        store.fail_attempt(jid, ErrorClass.CONFIG, message, _report_text(outcome))
        _job_log(sup, jid, "error", message)
        sup.notifier.alert(case, f"{jid}: {message}", severity="critical", job_id=jid)
        return
    eff = effective_batch(rung.overrides, t.batch_size, t.gradient_accumulation)
    after = store.requeue(jid, overrides=rung.overrides, charge_attempt=charge,
                          reason=f"out of memory: rung {rung.overrides.get('oom_rung')}: {rung.description}")
    text = (f"out of memory ({outcome.message}); OOM ladder rung {rung.overrides.get('oom_rung')}: "
            f"{rung.description}; effective batch {eff}")
    _job_log(sup, jid, "warning", text)
    if after.status == "failed":
        sup.notifier.alert(case, f"{jid}: {text}; but no attempts are left: failed", severity="critical",
                           job_id=jid)
    else:
        sup.notifier.alert(case, f"{jid}: {text}; resuming from the last checkpoint", severity="warning",
                           job_id=jid)
