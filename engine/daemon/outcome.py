"""How a worker ended: pure functions over facts (its report, its exit status, the kernel's OOM
counter). What then happens to the job is ``trainconsole.engine.daemon.retry_policy``'s.

Order of evidence: the worker's report first (``trainconsole.engine.runfiles.Report``: it knows why
it stopped), then its exit code (one per error class), then the signal that ended it. A SIGKILL
with no report is the kernel's OOM killer only when the kernel's own OOM counter moved while the
worker ran (case 24); any other SIGKILL is an outside kill, retried as transient. Both charge an
attempt, so a job that keeps dying ends in failed/ after ``queue.max_attempts``.
"""

from __future__ import annotations

import os
import signal
from dataclasses import dataclass
from pathlib import Path

from trainconsole.engine.errors import CLASS_BY_EXIT, ErrorClass
from trainconsole.engine.runfiles import Report

OOM_COUNTER_FILES = (Path("/proc/vmstat"), Path("/sys/fs/cgroup/memory.events"))


@dataclass(frozen=True)
class Outcome:
    """How one worker run ended."""

    error_class: ErrorClass | None  # None: done
    message: str
    case: int | None = None
    traceback: str | None = None
    report: Report | None = None
    returncode: int | None = None
    global_step: int | None = None

    @property
    def done(self) -> bool:
        return self.error_class is None


def oom_kill_count(files: tuple[Path, ...] = OOM_COUNTER_FILES) -> int:
    """The kernel's count of OOM kills (system-wide plus this cgroup); 0 where unreadable."""
    total = 0
    for path in files:
        try:
            text = path.read_text()
        except OSError:
            continue
        for line in text.splitlines():
            key, _, value = line.partition(" ")
            if key == "oom_kill" and value.strip().isdigit():
                total += int(value)
    return total


def log_tail(path: Path, size: int = 6000) -> str:
    """The end of a worker's log: its traceback, when it died without a report."""
    try:
        with open(path, "rb") as fh:
            fh.seek(max(0, os.fstat(fh.fileno()).st_size - size))
            return fh.read().decode(errors="replace")
    except OSError:
        return ""


def _signal_name(num: int) -> str:
    try:
        return signal.Signals(num).name
    except ValueError:
        return f"signal {num}"


def classify(
    report: Report | None,
    returncode: int,
    *,
    oom_kills_during_run: int = 0,
    hung_for_s: float | None = None,
    stopped_by_us: bool = False,
    log_tail: str = "",
) -> Outcome:
    if hung_for_s is not None:
        return Outcome(ErrorClass.TRANSIENT, f"no training progress for {hung_for_s:.0f}s: the watchdog "
                       "ended the worker; the job resumes from its last checkpoint", case=70,
                       returncode=returncode)
    if report is not None:
        step, case, message = report.global_step, report.case, report.message
        if report.status == "done":
            return Outcome(None, message or "done", report=report, returncode=returncode, global_step=step)
        if report.status == "interrupted":
            return Outcome(ErrorClass.INTERRUPTED, message or "stopped after a checkpoint", case=case,
                           report=report, returncode=returncode, global_step=step)
        cls = report.error()
        return Outcome(cls, message or f"worker failed ({cls.value})", case=case, traceback=report.traceback,
                       report=report, returncode=returncode, global_step=step)
    if returncode >= 0:
        cls_or_none = CLASS_BY_EXIT.get(returncode)
        if returncode == 0 or cls_or_none is None:
            # An exit the worker's own top-level handler did not produce: an exception before it
            # was installed, or an interpreter failure. Ours to fix, never retried as transient.
            return Outcome(ErrorClass.BUG, f"worker exited with code {returncode} without a report",
                           traceback=log_tail or None, returncode=returncode)
        return Outcome(cls_or_none, f"worker exited with code {returncode} ({cls_or_none.value}) "
                       "without a report", traceback=log_tail or None, returncode=returncode)
    sig = -returncode
    if stopped_by_us:
        return Outcome(ErrorClass.INTERRUPTED, f"stopped by the engine ({_signal_name(sig)})",
                       returncode=returncode)
    if sig == signal.SIGKILL and oom_kills_during_run > 0:
        return Outcome(ErrorClass.OOM, "killed by the kernel's out-of-memory killer (host RAM)",
                       case=24, returncode=returncode)
    if sig == signal.SIGKILL:
        return Outcome(ErrorClass.TRANSIENT, "the worker was killed (SIGKILL) without a report; "
                       "the job resumes from its last checkpoint", case=24, returncode=returncode)
    return Outcome(ErrorClass.TRANSIENT, f"the worker died of {_signal_name(sig)}",
                   traceback=log_tail or None, returncode=returncode)
