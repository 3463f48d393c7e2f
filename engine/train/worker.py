"""The worker process: ``python -m trainconsole.engine.train.worker runs/<job>/spec.json``.

Protocol (docs/contracts.md): it writes ``events.jsonl``, ``heartbeat.json`` (each step),
``checkpoints/`` and, last, ``report.json``; its exit code comes from ``trainconsole.engine.errors.EXIT_CODES``.
SIGTERM, SIGINT or SIGUSR1 (Slurm's time-limit warning) asks for a checkpoint at the next step
boundary, then exit 18, the report naming the signal. SIGUSR2 dumps every thread's Python stack to
``stacks.txt`` (the daemon asks for it before ending a hung worker); ``trainconsole.engine.signals``. Under torchrun only rank 0 writes events, the heartbeat, checkpoints, the adapter and
the report; the other ranks train and exit with their code.

Every exception is caught here and classified, so the daemon never has to read a traceback to
decide what to do:
- ``TrainconsoleError`` subclasses carry their own class (data, config, diverged, ...);
- ``torch.OutOfMemoryError`` -> OOM: case 21 while loading, 22 while building the token cache,
  else 23; ``MemoryError`` -> OOM as well: 22 while building the token cache, else case 80 (Python
  could not get host memory, a resource condition that a smaller micro-batch cures, not a defect
  in the code);
- ``torch.AcceleratorError`` and CUDA ``RuntimeError``s -> DEVICE (28);
- ``OSError`` ENOSPC/EDQUOT -> DISK_FULL (25); any other ``OSError`` -> TRANSIENT (44, or 46 for
  permissions);
- anything else is a BUG (71-79 by type), reported with its traceback and not retried.
"""

from __future__ import annotations

import errno
import faulthandler
import os
import signal
import sys
import time
import traceback
from dataclasses import replace
from pathlib import Path
from typing import Any

from trainconsole.engine import fsio
from trainconsole.engine.errors import EXIT_CODES, ErrorClass, TrainconsoleError
from trainconsole.engine.events import EventLog, NullEventLog
from trainconsole.engine.runfiles import REPORT_RESERVE_BYTES, JobSpec, Report, RunFolder
from trainconsole.engine.signals import STACKS_SIGNAL, STOP_SIGNALS, signal_name
from trainconsole.engine.train.guards import HeartbeatWriter

BUG_CASES: dict[type[BaseException], int] = {
    UnboundLocalError: 71, NameError: 72, AttributeError: 73, KeyError: 74, IndexError: 75,
    TypeError: 76, ValueError: 77, ZeroDivisionError: 78, RecursionError: 79,
}
_DEVICE_TEXT = ("CUDA error", "CUDA driver", "cuDNN", "CUBLAS", "NCCL", "device-side assert", "HIP error",
                "ECC error")


def oom_case(phase: str, *, host: bool = False) -> int:
    """The case of an out-of-memory in ``phase`` ("loading", "tokenizing" or "training"); ``host``:
    Python's MemoryError rather than the device's. The fake worker of the tests asks the same."""
    if phase == "tokenizing":
        return 22
    if host:
        return 80
    return 21 if phase == "loading" else 23


def classify_exception(exc: BaseException, *, loading: bool, phase: str | None = None) -> tuple[ErrorClass, int | None]:
    """``phase`` refines ``loading`` where the job knows it (``TrainJob.phase``)."""
    if isinstance(exc, TrainconsoleError):
        return exc.error_class, exc.case
    where = phase or ("loading" if loading else "training")
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(exc, torch.OutOfMemoryError):
        return ErrorClass.OOM, oom_case(where)
    if isinstance(exc, MemoryError):
        return ErrorClass.OOM, oom_case(where, host=True)
    if torch is not None and isinstance(exc, getattr(torch, "AcceleratorError", ())):
        return ErrorClass.DEVICE, 28
    if isinstance(exc, RuntimeError) and any(t in str(exc) for t in _DEVICE_TEXT):
        return ErrorClass.DEVICE, 28
    if isinstance(exc, OSError):
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return ErrorClass.DISK_FULL, 25
        return ErrorClass.TRANSIENT, 46 if isinstance(exc, PermissionError) else 44
    for exc_type, case in BUG_CASES.items():  # most specific first (UnboundLocalError < NameError)
        if isinstance(exc, exc_type):
            return ErrorClass.BUG, case
    return ErrorClass.BUG, None


def rank() -> int:
    return int(os.environ.get("RANK", "0") or 0)


def _hold_reserve(path: Path) -> None:
    """Claim the report's room on the run folder's disk now (written, so the blocks are really
    allocated, not a sparse hole). A disk already too full for it is the job's disk-full failure."""
    with open(path, "wb") as f:
        f.write(b"\0" * REPORT_RESERVE_BYTES)


def run(spec_path: Path, *, stop_flag: list[bool] | None = None, stop_signals: list[int] | None = None) -> int:
    """Run one job to its report; returns the exit code. Never raises. ``stop_signals``: the
    signals that asked for the stop, the first of which the report names."""
    stop = stop_flag if stop_flag is not None else [False]
    lead = rank() == 0
    spec_path = Path(spec_path)
    run_dir = spec_path.parent
    report = Report(status="failed")
    events: EventLog | None = None
    heartbeat: HeartbeatWriter | None = None
    job: Any = None
    started = time.monotonic()
    try:
        spec = JobSpec.read(spec_path)
        run_dir = spec.run_dir
        run_dir.mkdir(parents=True, exist_ok=True)
        if lead:
            fsio.sweep(run_dir)  # what a worker killed mid-write left: the folder is ours now
            _hold_reserve(spec.folder.report_reserve)
        events = EventLog(spec.folder.events) if lead else NullEventLog()
        heartbeat = HeartbeatWriter(spec.folder.heartbeat if lead else None)
        heartbeat.beat(0)
        events.emit("log", level="info", message=f"worker {os.getpid()} started", job_id=spec.job_id)
        from trainconsole.engine.train.job import TrainJob  # torch and friends load from here on

        job = TrainJob(spec, events, heartbeat, stop)
        result = job.run()
        interrupted = result.status == "interrupted"
        report = Report(status=result.status, message=result.message, global_step=result.global_step,
                        max_steps=result.max_steps, adapter=result.adapter,
                        error_class=ErrorClass.INTERRUPTED.value if interrupted else None)
        code = EXIT_CODES[ErrorClass.INTERRUPTED] if interrupted else 0
    except BaseException as exc:  # the top: everything is classified and reported
        if isinstance(exc, SystemExit):
            raise
        loading = job is None or not job.training_started
        cls, case = classify_exception(exc, loading=loading,
                                       phase=job.phase if job is not None and loading else None)
        if isinstance(exc, KeyboardInterrupt):
            cls, case = ErrorClass.INTERRUPTED, None
        message = exc.message if isinstance(exc, TrainconsoleError) else f"{type(exc).__name__}: {exc}"
        tb = None
        if not isinstance(exc, TrainconsoleError) or cls == ErrorClass.BUG:
            tb = "".join(traceback.format_exception(exc))
        report = Report(status="failed", error_class=cls.value, case=case, message=message, traceback=tb)
        if job is not None:
            report = replace(report, global_step=job.current_step,
                             max_steps=job.plan.max_steps if job.plan else 0)
        code = EXIT_CODES[cls]
        alerted = bool(getattr(exc, "alerted", False))
        report = replace(report, alerted=alerted)
        if events is not None and not alerted:
            # The job's log keeps the worker's account; the one alert is the daemon's, which knows
            # whether the job is retried or failed (one fault, one alert).
            try:
                events.emit("log", level="error", job_id=job.job_id if job is not None else None,
                            message=f"job failed ({cls.value}" + (f", case {case}" if case else "")
                            + f"): {message}")
            except Exception:  # the report below is what matters
                pass
    report = replace(report, stop_signal=signal_name(stop_signals[0]) if stop_signals else None,
                     elapsed_s=round(time.monotonic() - started, 3))
    if heartbeat is not None:
        heartbeat.close()
    try:
        if lead:
            RunFolder(run_dir).report_reserve.unlink(missing_ok=True)
            report.write(run_dir)
    except OSError:  # a full disk may refuse even the report; the exit code still tells the class
        pass
    if events is not None:
        events.emit("log", level="info", message=f"worker finished: {report.status}"
                    + (f" ({report.error_class})" if report.status == "failed" else ""))
        events.close()
    return code


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m trainconsole.engine.train.worker runs/<job>/spec.json", file=sys.stderr)
        return 2
    stop = [False]
    received: list[int] = []

    def request_stop(signum: int, frame: Any) -> None:
        stop[0] = True
        received.append(signum)

    # Before anything slow: a hung worker's stacks are what its operator needs to see.
    try:
        folder = JobSpec.read(Path(args[0])).folder
    except Exception:
        folder = RunFolder(Path(args[0]).parent)
    try:
        folder.path.mkdir(parents=True, exist_ok=True)
        stacks = open(folder.stacks(rank()), "w")  # noqa: SIM115 - held for the process's life
        faulthandler.register(STACKS_SIGNAL, file=stacks, all_threads=True)
    except OSError:
        pass

    for signum in STOP_SIGNALS:
        signal.signal(signum, request_stop)
    return run(Path(args[0]), stop_flag=stop, stop_signals=received)


if __name__ == "__main__":
    sys.exit(main())
