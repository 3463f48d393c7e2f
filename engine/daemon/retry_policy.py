"""How a worker ended, and what happens to its job next. Pure functions over facts (the report, the
exit status, the kernel's OOM counter); the supervisor applies the result to the store.

Order of evidence: the worker's ``report.json`` first (it knows why it stopped), then its exit code
(one per error class), then the signal that ended it. A SIGKILL with no report is the kernel's OOM
killer only when the kernel's own OOM counter moved while the worker ran (case 24); any other
SIGKILL is an outside kill, retried as transient. Both charge an attempt, so a job that keeps
dying ends in failed/ after ``queue.max_attempts``.
"""

from __future__ import annotations

import signal
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from trainconsole.engine.errors import CLASS_BY_EXIT, ErrorClass

OOM_COUNTER_FILES = (Path("/proc/vmstat"), Path("/sys/fs/cgroup/memory.events"))


@dataclass(frozen=True)
class Outcome:
    """How one worker run ended."""

    error_class: ErrorClass | None  # None: done
    message: str
    case: int | None = None
    traceback: str | None = None
    report: dict[str, Any] | None = None
    returncode: int | None = None
    global_step: int | None = None

    @property
    def done(self) -> bool:
        return self.error_class is None


def read_report(path: Path) -> dict[str, Any] | None:
    """The worker's report, or None when it is missing, torn or not an object."""
    try:
        raw = orjson.loads(path.read_bytes())
    except (OSError, orjson.JSONDecodeError):
        return None
    return raw if isinstance(raw, dict) and "status" in raw else None


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


def _signal_name(num: int) -> str:
    try:
        return signal.Signals(num).name
    except ValueError:
        return f"signal {num}"


def classify(
    report: dict[str, Any] | None,
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
        status = report.get("status")
        step = report.get("global_step")
        step_i = step if isinstance(step, int) else None
        case = report.get("case") if isinstance(report.get("case"), int) else None
        message = str(report.get("message") or "")
        tb = report.get("traceback") if isinstance(report.get("traceback"), str) else None
        if status == "done":
            return Outcome(None, message or "done", report=report, returncode=returncode,
                           global_step=step_i)
        if status == "interrupted":
            return Outcome(ErrorClass.INTERRUPTED, message or "stopped after a checkpoint", case=case,
                           report=report, returncode=returncode, global_step=step_i)
        try:
            cls = ErrorClass(str(report.get("error_class")))
        except ValueError:
            cls = ErrorClass.BUG
        return Outcome(cls, message or f"worker failed ({cls.value})", case=case, traceback=tb,
                       report=report, returncode=returncode, global_step=step_i)
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
