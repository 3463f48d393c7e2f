"""Submitting workers to the test cluster without the supervisor: a spec, a launcher whose worker
is the real one or the torch-free fake (``tests/daemon/fake_worker.py``), and waits."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from trainconsole.engine.config.schema import LauncherConfig
from trainconsole.engine.daemon.launcher import DevicePlan, worker_env
from trainconsole.engine.daemon.slurm.commands import SlurmCommands
from trainconsole.engine.daemon.slurm.launcher import SlurmLauncher, SlurmWorker
from trainconsole.engine.daemon.slurm.submit import queue_tag
from trainconsole.engine.daemon.slurm.tracker import SlurmTracker
from trainconsole.engine.runfiles import Report, read_report

FAKE_WORKER = Path(__file__).resolve().parents[1] / "daemon" / "fake_worker.py"
CPU = DevicePlan("cpu", 1, "")


def slurm_config(**kw: Any) -> LauncherConfig:
    values: dict[str, Any] = {"kind": "slurm", "gpus_per_job": 0, "cpus_per_job": 1, "mem": "200M",
                              "poll_s": 0.3, "warn_before_limit_s": 0}
    values.update(kw)
    return LauncherConfig(**values)


def write_spec(run_dir: Path, job_id: str, *, data: Path | None = None, config: Path | None = None,
               adapters: Path | None = None) -> Path:
    """The spec the supervisor writes (schema 1)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    spec = run_dir / "spec.json"
    spec.write_text(json.dumps({"schema": 1, "job_id": job_id, "data_file": str(data or run_dir / "none"),
                                "config": str(config or run_dir / "none"), "run_dir": str(run_dir),
                                "overrides": {}, "adapters_dir": str(adapters or run_dir / "adapters")}))
    return spec


class CommandLauncher(SlurmLauncher):
    """The Slurm launcher with another worker command (the fake worker, or a probe)."""

    def __init__(self, lc: LauncherConfig, queue: Path, command: Callable[[Path], list[str]], *,
                 plan: DevicePlan = CPU, tracker: SlurmTracker | None = None) -> None:
        super().__init__(lc, plan, queue_tag(queue), tracker=tracker)
        self._command = command

    def command(self, spec: Path) -> list[str]:
        return self._command(spec)


def fake_worker(spec: Path) -> list[str]:
    return [sys.executable, str(FAKE_WORKER), str(spec)]


def fake_launcher(lc: LauncherConfig, queue: Path, *, tracker: SlurmTracker | None = None) -> CommandLauncher:
    return CommandLauncher(lc, queue, fake_worker, tracker=tracker)


def submit(launcher: SlurmLauncher, run_dir: Path, job_id: str, env: Mapping[str, str] | None = None,
           **spec_kw: Any) -> SlurmWorker:
    spec = write_spec(run_dir, job_id, **spec_kw)
    base = worker_env(launcher.plan, job_id)
    return launcher.submit(job_id, spec, {**base, **(env or {})}, run_dir / "worker.log")


def wait_for(cond: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.1)
    raise AssertionError(f"{what}: not reached within {timeout:.0f}s")


def wait_ended(worker: SlurmWorker, timeout: float = 120.0) -> int:
    codes: list[int] = []

    def ended() -> bool:
        code = worker.poll()
        if code is not None:
            codes.append(code)
        return code is not None

    wait_for(ended, timeout, f"Slurm job {worker.slurm_id} ending (state {worker.state})")
    return codes[0]


def wait_running(worker: SlurmWorker, timeout: float = 60.0) -> None:
    wait_for(lambda: worker.poll() is None and worker.state == "RUNNING", timeout,
             f"Slurm job {worker.slurm_id} running (state {worker.state}, reason {worker.reason})")


def step_of(run_dir: Path) -> int:
    try:
        return int(json.loads((run_dir / "heartbeat.json").read_text())["step"])
    except (OSError, ValueError, KeyError):
        return -1


def report_of(run_dir: Path) -> Report | None:
    return read_report(run_dir / "report.json")


def commands() -> SlurmCommands:
    return SlurmCommands()
