"""A stand-in for ``trainconsole.engine.train.worker`` that speaks the same protocol (spec.json in;
heartbeat.json, events.jsonl, report.json and the exit code out; SIGTERM or SIGUSR1 -> checkpoint
at the next step boundary and exit 18, the report naming the signal; stacks on SIGUSR2) without torch, so supervision unit tests launch it
in a tenth of a second. Acceptance tests use the real worker.

Steps: ``FAKE_STEPS`` (default 4) of ``FAKE_STEP_S`` seconds (default 0.05). A "checkpoint" is
``fake_ckpt.json`` holding the last step, written every step; with ``FAKE_CKPT_KB`` also a
``checkpoints/checkpoint-N`` folder holding that many KB, the newest two kept (for retention). Faults: ``TRAINCONSOLE_FAULT`` as in
engine/train/faults.py (oom, oom_above_batch:N, hang, crash, device, raise:Name, enospc), plus
``hog`` / ``hog_above_batch:N``: take host memory until the kernel's OOM killer ends the process
(run it in a memory cgroup: tests/daemon/cgroups.py). Under torchrun only rank 0 writes the run's
files; two ranks renaming one temporary file into place would fail each other.
"""

from __future__ import annotations

import builtins
import faulthandler
import json
import os
import shutil
import signal
import sys
import time
import traceback
from pathlib import Path

from trainconsole.engine.train.worker import classify_exception, oom_case  # torch-free at import

EXIT = {"data": 10, "config": 11, "oom": 12, "device": 13, "transient": 14, "disk_full": 15,
        "diverged": 16, "bug": 17, "interrupted": 18}


RANK = int(os.environ.get("RANK", "0"))


def write_json(path: Path, obj: object) -> None:
    if RANK:  # under torchrun only rank 0 writes the run's files, as the real worker does
        return
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(obj))
    os.replace(tmp, path)


def main() -> int:
    spec = json.loads(Path(sys.argv[1]).read_text())
    run = Path(spec["run_dir"])
    job = spec["job_id"]
    over = spec.get("overrides", {})
    stacks = open(run / ("stacks.txt" if not RANK else f"stacks-rank{RANK}.txt"), "w")  # noqa: SIM115 - held for the process's life
    faulthandler.register(signal.SIGUSR2, file=stacks, all_threads=True)
    stop: dict[str, object] = {"asked": False, "signal": None}

    def request_stop(signum: int, frame: object) -> None:
        stop["asked"] = True
        stop["signal"] = stop["signal"] or signal.Signals(signum).name

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGUSR1, request_stop)
    steps = int(os.environ.get("FAKE_STEPS", "4"))
    step_s = float(os.environ.get("FAKE_STEP_S", "0.05"))
    ckpt_kb = int(os.environ.get("FAKE_CKPT_KB", "0"))
    fault = os.environ.get("TRAINCONSOLE_FAULT", "")
    kind, _, at = fault.rpartition("@")
    at_step = int(at) if at.lstrip("-").isdigit() else -1
    ckpt = run / "fake_ckpt.json"
    start = json.loads(ckpt.read_text())["step"] if ckpt.exists() else 0
    events = open(run / "events.jsonl" if not RANK else os.devnull, "a")  # noqa: SIM115
    write_json(run / "env.json", {k: os.environ.get(k) for k in (
        "PYTORCH_CUDA_ALLOC_CONF", "CUDA_VISIBLE_DEVICES", "TRAINCONSOLE_FAULT")} | {"overrides": over})

    def report(status: str, cls: str | None, message: str, step: int, tb: str | None = None,
               case: int | None = None) -> None:
        write_json(run / "report.json", {"schema": 1, "status": status, "error_class": cls, "case": case,
                                         "message": message, "traceback": tb, "global_step": step,
                                         "max_steps": steps, "adapter": None,
                                         "stop_signal": stop["signal"]})

    step = start
    try:
        while step < steps:
            nxt = step + 1
            if nxt == at_step:
                name, _, arg = kind.partition(":")
                batch = int(over.get("batch_size", 4))
                if name == "oom" or (name == "oom_above_batch" and batch > int(arg)):
                    # The number the real worker gives an OOM in that phase (FAKE_OOM_PHASE).
                    phase = os.environ.get("FAKE_OOM_PHASE", "training")
                    report("failed", "oom", "CUDA out of memory (injected)", step, case=oom_case(phase))
                    return EXIT["oom"]
                if name == "hog" or (name == "hog_above_batch" and batch > int(arg)):
                    hoard = []
                    while True:  # written, not only reserved: the pages are really used
                        hoard.append(b"\x01" * (8 << 20))
                if name == "hang":
                    while True:
                        time.sleep(1)
                if name == "crash":
                    os.kill(os.getpid(), signal.SIGKILL)
                if name == "device":
                    report("failed", "device", "CUDA error: an illegal memory access (injected)", step,
                           case=28)
                    return EXIT["device"]
                if name == "enospc":
                    report("failed", "disk_full", "No space left on device (injected)", step, case=25)
                    return EXIT["disk_full"]
                if name == "raise":
                    raise getattr(builtins, arg)("injected")
            time.sleep(step_s)
            step = nxt
            write_json(ckpt, {"step": step})
            if ckpt_kb and not RANK:  # checkpoint folders with bytes in them, the newest two kept, as the real worker
                folder = run / "checkpoints" / f"checkpoint-{step}"
                folder.mkdir(parents=True, exist_ok=True)
                (folder / "adapter.bin").write_bytes(b"\0" * (ckpt_kb << 10))
                for old in sorted((run / "checkpoints").glob("checkpoint-*"),
                                  key=lambda p: int(p.name.rsplit("-", 1)[1]))[:-2]:
                    shutil.rmtree(old, ignore_errors=True)
            write_json(run / "heartbeat.json", {"pid": os.getpid(), "step": step, "mono": time.monotonic(),
                                                "step_time_s": step_s})
            events.write(json.dumps({"v": 1, "t": time.time(), "type": "step", "job_id": job, "step": step,
                                     "max_steps": steps, "loss": 1.0, "lr": 0.1, "grad_norm": 1.0,
                                     "tokens_per_s": 1.0}) + "\n")
            events.flush()
            if stop["asked"]:
                report("interrupted", "interrupted", "stopped after a checkpoint", step)
                return EXIT["interrupted"]
    except Exception as exc:  # classified by the real worker's rules, so a wrong number shows
        cls, case = classify_exception(exc, loading=False)
        report("failed", cls.value, f"{type(exc).__name__}: {exc}", step, traceback.format_exc(), case=case)
        return EXIT[cls.value]
    report("done", None, "done", step)
    return 0


if __name__ == "__main__":
    sys.exit(main())
