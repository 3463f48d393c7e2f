"""One worker per run folder, whoever starts it: the engine's workers hold ``runs/<job>/train.lock``
just as `trainconsole train`'s do, so the two never train in one folder. Real daemon, real `train`,
real workers on the built-in tiny model; ``hang@1`` (engine/train/faults.py) keeps each worker
alive, holding its lock, for as long as the test needs."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from tests.daemon.harness import (
    FAST,
    ROOT,
    TINY,
    chat_lines,
    configure,
    daemon_env,
    drop,
    start_daemon,
    store_jobs,
    wait_for,
)
from tests.daemon.realrun import REAL
from tests.helpers import run_cli
from trainconsole.engine.config import load_config
from trainconsole.engine.events import read_all
from trainconsole.engine.lock import RunFolderBusy, engine_running, lock_run_folder


def _held(run_dir: Path) -> bool:
    try:
        fd = lock_run_folder(run_dir)
    except RunFolderBusy:
        return True
    os.close(fd)
    return False


def _kill_group(pid: int | None) -> None:
    if pid:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)


@pytest.mark.edge(48)
def test_engine_and_train_never_share_a_run_folder(workspace: Path, tiny_model: Path) -> None:
    config = configure(workspace, {**FAST, **TINY, **REAL})
    layout = load_config(config).layout()
    run_dir = layout.run_dir("j0001")
    data = workspace / "fg.jsonl"
    data.write_text(chat_lines(16, "fg"))
    daemon = start_daemon(config, env={"TRAINCONSOLE_FAULT_JOBS": "a*=hang@1"})
    fg: subprocess.Popen[bytes] | None = None
    fg_worker: int | None = None
    try:
        wait_for(lambda: engine_running(layout) is not None, 60, "the engine started")
        # A foreground run takes j0001 first; its worker hangs at step 1, holding the folder.
        fg = subprocess.Popen([sys.executable, "-m", "trainconsole.console.cli", "--config", str(config), "train",
                               "--job-id", "j0001", str(data)], cwd=ROOT,
                              env=daemon_env({"TRAINCONSOLE_FAULT": "hang@1"}),
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        wait_for(lambda: (run_dir / "spec.json").exists(), 60, "train wrote its spec")
        wait_for(lambda: bool(psutil.Process(fg.pid).children()), 60, "train started its worker")
        fg_worker = psutil.Process(fg.pid).children()[0].pid
        assert _held(run_dir)

        # The engine's job of the same id waits with an alert instead of joining that folder.
        drop(workspace, "a.jsonl")

        def waiting_alert() -> bool:
            return any(e["type"] == "alert" and "j0001 waits" in e["message"] and str(run_dir) in e["message"]
                       for e in read_all(layout.engine_events))
        wait_for(waiting_alert, 60, "the engine's alert that j0001's run folder is busy")
        job = store_jobs(config)[0]
        assert job.id == "j0001" and job.status == "queued" and job.attempts == 0, job
        assert daemon.poll() is None

        # The foreground run ends (killed outright: its worker's lock goes with it); the engine starts j0001.
        fg.kill()
        fg.wait(30)
        _kill_group(fg_worker)
        wait_for(lambda: store_jobs(config)[0].status == "running" and bool(store_jobs(config)[0].pid),
                 120, "the engine started j0001 once the folder was free")
        job = store_jobs(config)[0]
        assert job.attempts == 1

        # Now a foreground run of j0001 is refused: the engine's worker holds the folder.
        second = run_cli("--config", str(config), "train", "--job-id", "j0001", str(data), timeout=120)
        assert second.returncode == 1, second.stdout + second.stderr
        assert "Traceback" not in second.stderr
        assert "in use by another worker" in second.stderr and str(run_dir) in second.stderr
        assert psutil.pid_exists(job.pid) and store_jobs(config)[0].status == "running"
        assert daemon.poll() is None
    finally:
        for proc in (fg, daemon):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait(30)
        _kill_group(fg_worker)
        for job in store_jobs(config):
            _kill_group(job.pid)


@pytest.mark.edge(41, 48)
def test_an_engine_starting_leaves_a_foreground_run_alone(workspace: Path, tiny_model: Path) -> None:
    """Recovery ends orphans of a killed engine, found by their command line; a worker that a live
    `trainconsole train` started is the operator's, not an orphan, and keeps running."""
    config = configure(workspace, {**FAST, **TINY, **REAL})
    layout = load_config(config).layout()
    run_dir = layout.run_dir("fg1")
    data = workspace / "fg.jsonl"
    data.write_text(chat_lines(16, "fg"))
    fg = subprocess.Popen([sys.executable, "-m", "trainconsole.console.cli", "--config", str(config), "train",
                           "--job-id", "fg1", str(data)], cwd=ROOT,
                          env=daemon_env({"TRAINCONSOLE_FAULT": "hang@1"}),
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    daemon: subprocess.Popen[bytes] | None = None
    fg_worker: int | None = None
    try:
        wait_for(lambda: (run_dir / "spec.json").exists(), 60, "train wrote its spec")
        wait_for(lambda: bool(psutil.Process(fg.pid).children()), 60, "train started its worker")
        fg_worker = psutil.Process(fg.pid).children()[0].pid
        daemon = start_daemon(config)
        wait_for(lambda: engine_running(layout) is not None, 60, "the engine started")
        # Recovery runs before the engine's loop; a file taken from the inbox proves the loop began.
        assert run_cli("--config", str(config), "pause").returncode == 0
        drop(workspace, "a.jsonl")
        wait_for(lambda: len(store_jobs(config)) == 1, 60, "the engine's loop took the inbox file")
        assert psutil.pid_exists(fg_worker) and psutil.Process(fg_worker).status() != psutil.STATUS_ZOMBIE
        assert fg.poll() is None and _held(run_dir)
    finally:
        for proc in (fg, daemon):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait(30)
        _kill_group(fg_worker)
