"""The soak's worker: the worker protocol (spec.json in; heartbeat.json, events.jsonl, a checkpoint
folder, report.json and the exit code out; SIGTERM -> stop after the step, exit 18) in the
standard library alone, so a job costs the daemon its own work and little else (the soak measures
the daemon, not training). ``TRAINCONSOLE_FAULT`` as the test fake's: ``crash@N`` (SIGKILL, no
report), ``bug@N`` (a ValueError reported as a bug, case 77), ``oom@N`` (GPU out of memory, 21:
the daemon walks its ladder down, then fails the job).
``SOAK_STEPS`` steps of ``SOAK_STEP_S`` s, a ``SOAK_CKPT_KB`` checkpoint folder each step (two kept)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
import time
from pathlib import Path

EXIT = {"oom": 12, "bug": 17, "interrupted": 18}


def _write(path: Path, obj: object) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj))
    os.replace(tmp, path)


def main() -> int:
    spec = json.loads(Path(sys.argv[1]).read_text())
    run, job = Path(spec["run_dir"]), spec["job_id"]
    stop: list[str] = []
    signal.signal(signal.SIGTERM, lambda s, f: stop.append("SIGTERM"))
    steps = int(os.environ.get("SOAK_STEPS", "2"))
    step_s = float(os.environ.get("SOAK_STEP_S", "0.01"))
    kb = int(os.environ.get("SOAK_CKPT_KB", "64"))
    kind, _, at = os.environ.get("TRAINCONSOLE_FAULT", "").partition("@")
    fault_at = int(at) if at.isdigit() else -1
    ckroot = run / "checkpoints"
    step = max((int(p.name.rsplit("-", 1)[1]) for p in ckroot.glob("checkpoint-*")), default=0)

    def report(status: str, cls: str | None, message: str, case: int | None = None) -> None:
        _write(run / "report.json", {"schema": 1, "status": status, "error_class": cls, "case": case,
                                     "message": message, "traceback": None, "global_step": step,
                                     "max_steps": steps, "adapter": None,
                                     "stop_signal": stop[0] if stop else None})

    with open(run / "events.jsonl", "a") as events:
        while step < steps:
            if step + 1 == fault_at:
                if kind == "crash":
                    os.kill(os.getpid(), signal.SIGKILL)
                if kind == "bug":
                    report("failed", "bug", "ValueError: injected by the soak", case=77)
                    return EXIT["bug"]
                if kind == "oom":
                    report("failed", "oom", "CUDA out of memory: injected by the soak", case=21)
                    return EXIT["oom"]
            time.sleep(step_s)
            step += 1
            folder = ckroot / f"checkpoint-{step}"
            folder.mkdir(parents=True, exist_ok=True)
            (folder / "adapter.bin").write_bytes(b"\0" * (kb << 10))
            for old in sorted(ckroot.glob("checkpoint-*"), key=lambda p: int(p.name.rsplit("-", 1)[1]))[:-2]:
                shutil.rmtree(old, ignore_errors=True)
            _write(run / "heartbeat.json", {"schema": 1, "pid": os.getpid(), "step": step,
                                            "mono": time.monotonic(), "step_time_s": step_s})
            events.write(json.dumps({"v": 1, "t": time.time(), "type": "step", "job_id": job, "step": step,
                                     "max_steps": steps, "loss": 1.0 / step, "lr": 1e-4, "grad_norm": 1.0,
                                     "tokens_per_s": 1000.0}) + "\n")
            events.flush()
            if stop:
                report("interrupted", "interrupted", "stopped after a checkpoint")
                return EXIT["interrupted"]
    report("done", None, "done")
    return 0


if __name__ == "__main__":
    sys.exit(main())
