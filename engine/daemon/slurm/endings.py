"""How a Slurm job ended, mapped to our outcomes: a pure function of what Slurm and the worker said.

Our ``report.json`` is the final word whenever it exists (Slurm cannot know why training stopped);
Slurm's state decides only what the report cannot:

============================  =====================================================================
Slurm said                    we do
============================  =====================================================================
COMPLETED / FAILED + report   the report's outcome: done, or its class (OOM ladder, data, bug...)
report ``interrupted``        requeued to resume, not charged (the time-limit warning SIGUSR1,
                              a preemption's SIGTERM): the next submission resumes from the
                              checkpoint the worker just wrote; but a time limit that came
                              before any new checkpoint is transient and charged, since the same
                              limit would stop every attempt at the same place, forever
TIMEOUT, no report            transient: the limit came before a checkpoint could be written
NODE_FAIL, BOOT_FAIL,         transient from the last checkpoint, no OOM ladder rung (the node
vanished                      failed, not the job: case 42, a machine lost mid-training)
PREEMPTED, no report          interrupted: requeued, not charged
OUT_OF_MEMORY                 the job's cgroup ran out of host memory: the OOM ladder (case 24)
CANCELLED, not by us          held with that reason: someone chose to stop it, so it is not retried
                              blindly; ``trainconsole release`` runs it again
CANCELLED by us, no report    our stop or cancel (of a job still pending, or past the stop's
                              grace): interrupted, not charged
FAILED / COMPLETED, no report the local rules (``outcome.classify``) on the exit status
============================  =====================================================================
"""

from __future__ import annotations

import signal
from dataclasses import dataclass, replace

from trainconsole.engine.daemon.outcome import Outcome, classify
from trainconsole.engine.daemon.slurm.state import SlurmJob
from trainconsole.engine.errors import ErrorClass
from trainconsole.engine.runfiles import Report
from trainconsole.engine.signals import TIME_LIMIT_SIGNAL

NODE_LOST = ("NODE_FAIL", "BOOT_FAIL")


@dataclass(frozen=True)
class Ending:
    """The outcome to apply, or a hold: ``hold_reason`` set means hold the job, do not retry."""

    outcome: Outcome
    hold_reason: str | None = None


def _returncode(job: SlurmJob | None) -> int:
    if job is None:
        return -signal.SIGKILL
    if job.signal:
        return -job.signal
    return job.exit_code if job.exit_code is not None else -signal.SIGKILL


def _where(job: SlurmJob | None) -> str:
    if job is None:
        return "its Slurm job"
    return f"Slurm job {job.slurm_id}" + (f" on {job.node}" if job.node else "")


def slurm_ending(job: SlurmJob | None, report: Report | None, *, stopped_by_us: bool = False,
                 hung_for_s: float | None = None, log_tail: str = "", progressed: bool = True) -> Ending:
    """``job``: Slurm's last word on it (None: the controller no longer knows the job, or never
    did); ``report``: the worker's report, None when it wrote none; ``progressed``: the attempt
    left a checkpoint newer than the one it started from."""
    where = _where(job)
    state = job.state if job is not None else "VANISHED"
    if stopped_by_us and hung_for_s is None and report is None and state == "CANCELLED":
        # Our own scancel: of a job still pending (exit status 0:0, nothing ran) or past the stop's
        # grace. An interruption like any stop, never the "exit 0 without a report" bug.
        return Ending(Outcome(ErrorClass.INTERRUPTED, f"{where} cancelled by the engine (stop or cancel)",
                              returncode=_returncode(job)))
    if hung_for_s is not None or stopped_by_us:
        return Ending(classify(report, _returncode(job), hung_for_s=hung_for_s, stopped_by_us=stopped_by_us,
                               log_tail=log_tail))
    status = report.status if report is not None else None
    if state == "CANCELLED" and status != "done":
        why = f"cancelled in Slurm by someone else ({where}, reason {job.reason if job else 'unknown'})"
        return Ending(Outcome(ErrorClass.INTERRUPTED, why, report=report, returncode=_returncode(job)),
                      hold_reason=f"{why}; held, not retried: `trainconsole release` runs it again")
    if report is not None:
        outcome = classify(report, _returncode(job))
        if status == "interrupted":
            signame = report.stop_signal or ""
            if (signame == f"SIG{TIME_LIMIT_SIGNAL}" or state == "TIMEOUT") and not progressed:
                return Ending(Outcome(
                    ErrorClass.TRANSIENT, f"{where} reached its Slurm time limit before its first new "
                    "checkpoint, so the next attempt would stop at the same place; raise launcher.time_limit "
                    "or lower training.save_steps", report=report, returncode=outcome.returncode,
                    global_step=outcome.global_step))
            if signame == f"SIG{TIME_LIMIT_SIGNAL}" or state == "TIMEOUT":
                why = "reached its Slurm time limit (launcher.time_limit) and checkpointed in time"
            elif state == "PREEMPTED":
                why = "preempted by Slurm and checkpointed in time"
            else:
                why = f"stopped by {signame or 'a signal'} from outside ({where})"
            outcome = replace(outcome, message=f"{why}: resubmitted to resume from step "
                                               f"{report.global_step or 0}")
        return Ending(outcome)
    code = _returncode(job)
    if state == "OUT_OF_MEMORY":
        return Ending(Outcome(ErrorClass.OOM, f"{where} ran out of host memory (Slurm's memory limit, "
                              "launcher.mem): the job's cgroup killed the worker", case=24, returncode=code))
    if state in NODE_LOST or state == "VANISHED":
        what = ("Slurm no longer knows the job and the worker left no report" if state == "VANISHED"
                else f"the node failed ({state})")
        return Ending(Outcome(ErrorClass.TRANSIENT, f"{where}: {what}; the job resumes from its last "
                              "checkpoint", case=42, returncode=code))
    if state == "PREEMPTED":
        return Ending(Outcome(ErrorClass.INTERRUPTED, f"{where} was preempted before it could checkpoint; "
                              "resubmitted to resume from the last checkpoint", returncode=code))
    if state in ("TIMEOUT", "DEADLINE"):
        return Ending(Outcome(ErrorClass.TRANSIENT, f"{where} reached its Slurm time limit before it could "
                              "checkpoint; raise launcher.time_limit or launcher.warn_before_limit_s",
                              returncode=code))
    return Ending(classify(None, code, log_tail=log_tail))
