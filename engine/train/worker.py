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
import json
import os
import signal
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from trainconsole.engine import fsio
from trainconsole.engine.errors import EXIT_CODES, ErrorClass, TrainconsoleError
from trainconsole.engine.events import EventLog, NullEventLog
from trainconsole.engine.signals import STACKS_SIGNAL, STOP_SIGNALS, signal_name
from trainconsole.engine.train.guards import Heartbeat

SPEC_SCHEMA = 1
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


def classify(exc: BaseException, *, loading: bool, phase: str | None = None) -> tuple[ErrorClass, int | None]:
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


def read_spec(path: Path) -> dict[str, Any]:
    from trainconsole.engine.errors import ConfigError

    try:
        spec = json.loads(Path(path).read_bytes())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path}: unreadable job spec ({exc})") from None
    if not isinstance(spec, dict) or spec.get("schema") != SPEC_SCHEMA:
        raise ConfigError(f"{path}: not a schema-{SPEC_SCHEMA} job spec")
    missing = [k for k in ("job_id", "data_file", "config", "run_dir") if not spec.get(k)]
    if missing:
        raise ConfigError(f"{path}: job spec lacks {', '.join(missing)}")
    return spec


def write_spec(run_dir: Path, *, job_id: str, data_file: Path, config: Path, adapters_dir: Path,
               overrides: dict[str, Any] | None = None) -> Path:
    """The spec file a worker is launched with (used by the daemon and ``trainconsole train``)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    spec = {"schema": SPEC_SCHEMA, "job_id": job_id, "data_file": str(data_file), "config": str(config),
            "run_dir": str(run_dir), "overrides": overrides or {}, "adapters_dir": str(adapters_dir)}
    path = run_dir / "spec.json"
    fsio.write_json(path, spec)
    return path


def rank() -> int:
    return int(os.environ.get("RANK", "0") or 0)


def run(spec_path: Path, *, stop_flag: list[bool] | None = None, stop_signals: list[int] | None = None) -> int:
    """Run one job to its report; returns the exit code. Never raises. ``stop_signals``: the
    signals that asked for the stop, the first of which the report names."""
    stop = stop_flag if stop_flag is not None else [False]
    lead = rank() == 0
    spec_path = Path(spec_path)
    run_dir = spec_path.parent
    report: dict[str, Any] = {"schema": 1, "status": "failed", "error_class": None, "case": None,
                              "message": "", "traceback": None, "global_step": 0, "max_steps": 0,
                              "adapter": None}
    events: EventLog | None = None
    heartbeat: Heartbeat | None = None
    job: Any = None
    started = time.monotonic()
    try:
        spec = read_spec(spec_path)
        run_dir = Path(spec["run_dir"])
        run_dir.mkdir(parents=True, exist_ok=True)
        events = EventLog(run_dir / "events.jsonl") if lead else NullEventLog()
        heartbeat = Heartbeat(run_dir / "heartbeat.json" if lead else None)
        heartbeat.beat(0)
        events.emit("log", level="info", message=f"worker {os.getpid()} started", job_id=spec["job_id"])
        from trainconsole.engine.train.job import TrainJob  # torch and friends load from here on

        job = TrainJob(spec, events, heartbeat, stop)
        outcome = job.run()
        report.update(status=outcome.status, message=outcome.message, global_step=outcome.global_step,
                      max_steps=outcome.max_steps, adapter=outcome.adapter)
        if outcome.status == "interrupted":
            report["error_class"] = ErrorClass.INTERRUPTED.value
        code = EXIT_CODES[ErrorClass.INTERRUPTED] if outcome.status == "interrupted" else 0
    except BaseException as exc:  # the top: everything is classified and reported
        if isinstance(exc, SystemExit):
            raise
        loading = job is None or not job.training_started
        cls, case = classify(exc, loading=loading,
                             phase=job.phase if job is not None and loading else None)
        if isinstance(exc, KeyboardInterrupt):
            cls, case = ErrorClass.INTERRUPTED, None
        message = exc.message if isinstance(exc, TrainconsoleError) else f"{type(exc).__name__}: {exc}"
        report.update(error_class=cls.value, case=case, message=message)
        if not isinstance(exc, TrainconsoleError) or cls == ErrorClass.BUG:
            report["traceback"] = "".join(traceback.format_exception(exc))
        if job is not None:
            report.update(global_step=job.current_step, max_steps=job.plan.max_steps if job.plan else 0)
        code = EXIT_CODES[cls]
        if events is not None and not getattr(exc, "alerted", False):
            try:
                events.alert(case, f"job failed ({cls.value}): {message}", severity="critical",
                             job_id=job.job_id if job is not None else None, key="job-failed")
            except Exception:  # the report below is what matters
                pass
    report["stop_signal"] = signal_name(stop_signals[0]) if stop_signals else None
    report["elapsed_s"] = round(time.monotonic() - started, 3)
    if heartbeat is not None:
        heartbeat.close()
    try:
        if lead:
            fsio.write_json(run_dir / "report.json", report)
    except OSError:  # a full disk may refuse even the report; the exit code still tells the class
        pass
    if events is not None:
        events.emit("log", level="info", message=f"worker finished: {report['status']}"
                    + (f" ({report['error_class']})" if report["status"] == "failed" else ""))
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
        run_dir = Path(read_spec(Path(args[0]))["run_dir"])
    except Exception:
        run_dir = Path(args[0]).parent
    stacks_name = "stacks.txt" if rank() == 0 else f"stacks-rank{rank()}.txt"
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        stacks = open(run_dir / stacks_name, "w")  # noqa: SIM115 - held for the process's life
        faulthandler.register(STACKS_SIGNAL, file=stacks, all_threads=True)
    except OSError:
        pass

    for signum in STOP_SIGNALS:
        signal.signal(signum, request_stop)
    return run(Path(args[0]), stop_flag=stop, stop_signals=received)


if __name__ == "__main__":
    sys.exit(main())
