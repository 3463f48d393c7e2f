"""`trainconsole train` starts its worker the way the engine does (the launcher): the allocator
setting against fragmentation (case 29), the planned devices (26, 27), torchrun for several
processes, and a spec that says who launched it."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from tests.chatdata import arithmetic, write_jsonl
from tests.daemon.harness import wait_for
from tests.helpers import run_cli
from tests.worker.wutil import new_workspace
from trainconsole.engine.daemon.launcher import ALLOC_CONF, WORKER_MODULE
from trainconsole.engine.runfiles import JobSpec
from trainconsole.engine.sysmon import Sysmon


def _environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes()
    return dict(item.split("=", 1) for item in raw.decode(errors="replace").split("\0") if "=" in item)


def _start(ws: Path, job_id: str, env: dict[str, str]) -> subprocess.Popen[bytes]:
    data = write_jsonl(ws / "data.jsonl", arithmetic(20))
    return subprocess.Popen([sys.executable, "-m", "trainconsole.console.cli", "train", str(data),
                             "--job-id", job_id], cwd=ws, env={**os.environ, **env},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)


def _stop(fg: subprocess.Popen[bytes], worker: int | None) -> None:
    for pid in (worker, fg.pid):
        if pid:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)
    fg.wait(30)


@pytest.mark.edge(29)
def test_train_starts_its_worker_through_the_launcher(tmp_path: Path, shared_cache: Path) -> None:
    ws = new_workspace(tmp_path / "ws", shared_cache)
    fg = _start(ws, "fg1", {"TRAINCONSOLE_FAULT": "hang@1", "PYTORCH_CUDA_ALLOC_CONF": ""})
    worker = None
    try:
        wait_for(lambda: bool(psutil.Process(fg.pid).children()), 60, "train started its worker")
        child = psutil.Process(fg.pid).children()[0]
        worker = child.pid
        assert WORKER_MODULE in child.cmdline()
        env = _environ(worker)
        assert env["PYTORCH_CUDA_ALLOC_CONF"] == ALLOC_CONF
        assert env["CUDA_VISIBLE_DEVICES"] == ""  # hardware.device = "cpu": no GPU is handed over
        assert os.getsid(worker) == worker  # its own session, as the engine's workers
        spec = JobSpec.read(ws / "runs" / "fg1" / "spec.json")
        assert spec.launched_by == "train" and spec.launcher_pid == fg.pid
    finally:
        _stop(fg, worker)


def test_train_runs_several_processes_under_torchrun(tmp_path: Path, shared_cache: Path) -> None:
    ws = new_workspace(tmp_path / "ws", shared_cache)
    fg = _start(ws, "fg2", {"TRAINCONSOLE_NPROC": "2", "TRAINCONSOLE_FAULT": "hang@1"})
    worker = None
    try:
        wait_for(lambda: bool(psutil.Process(fg.pid).children()), 60, "train started torchrun")
        child = psutil.Process(fg.pid).children()[0]
        worker = child.pid
        cmd = child.cmdline()
        assert "torch.distributed.run" in cmd and "--nproc_per_node=2" in cmd and WORKER_MODULE in cmd
    finally:
        _stop(fg, worker)


@pytest.mark.edge(26)
def test_train_with_device_cuda_and_no_gpu_refuses_before_starting(tmp_path: Path, shared_cache: Path) -> None:
    if Sysmon().sample().gpu_state == "ok":
        pytest.skip("this machine has a GPU")
    ws = new_workspace(tmp_path / "ws", shared_cache, hardware__device="cuda")
    data = write_jsonl(ws / "data.jsonl", arithmetic(20))
    result = run_cli("train", str(data), "--job-id", "fg3", cwd=ws, timeout=120)
    assert result.returncode == 1, result.stderr
    assert 'hardware.device is "cuda"' in result.stderr and "Traceback" not in result.stderr
    assert not (ws / "runs" / "fg3" / "worker.log").exists()  # no worker was started
