"""One engine per queue folder (case 48), with real daemon processes."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from tests.daemon.harness import FAST, ROOT, configure, daemon_env, wait_for
from tests.helpers import run_cli
from trainconsole.engine.config import load_config
from trainconsole.engine.daemon.start import start_detached
from trainconsole.engine.lock import EngineLock, engine_running, read_pidfile


@pytest.mark.edge(48)
def test_twenty_daemons_at_once_exactly_one_runs(workspace: Path) -> None:
    config = configure(workspace, FAST)
    layout = load_config(config).layout()
    procs = [subprocess.Popen([sys.executable, "-m", "trainconsole.console.cli", "--config", str(config), "daemon"],
                              cwd=ROOT, env=daemon_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, start_new_session=True) for _ in range(20)]
    try:
        wait_for(lambda: sum(p.poll() is not None for p in procs) >= 19, 120, "19 daemons refused")
        time.sleep(0.5)
        alive = [p for p in procs if p.poll() is None]
        assert len(alive) == 1
        winner = alive[0]
        info = engine_running(layout)
        assert info is not None and info.pid == winner.pid
        for p in procs:
            if p is winner:
                continue
            _, err = p.communicate()
            assert p.returncode == 1
            assert "already running" in err and f"pid {winner.pid}" in err and "since" in err
            assert "Traceback" not in err
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs:
            p.communicate(timeout=60)
    assert winner.returncode == 0
    assert engine_running(layout) is None and not layout.pidfile.exists()


@pytest.mark.edge(48)
def test_a_stale_pid_file_naming_a_live_unrelated_process_never_blocks(workspace: Path) -> None:
    config = configure(workspace, FAST)
    layout = load_config(config).layout()
    layout.ensure()
    other = subprocess.Popen(["sleep", "60"])
    try:
        # The PID file names a live process that is not an engine (its start time differs).
        layout.pidfile.write_text(json.dumps({"pid": other.pid, "start_time": 1000.0,
                                              "started_at": "2020-01-01T00:00:00+00:00"}))
        assert read_pidfile(layout) is not None and engine_running(layout) is None
        done = run_cli("doctor", "--config", str(config))
        assert "stale PID file" in done.stdout
        with EngineLock(layout) as lock:
            assert lock.info is not None and engine_running(layout) == lock.info
        assert other.poll() is None  # the unrelated process was never touched
    finally:
        other.kill()
        other.wait()


@pytest.mark.edge(48, 49)
def test_detached_start_survives_its_parent_and_stop_stops_it(workspace: Path) -> None:
    config = configure(workspace, FAST)
    layout = load_config(config).layout()
    pid = start_detached(config)
    try:
        info = engine_running(layout)
        assert info is not None and info.pid == pid
        proc = psutil.Process(pid)
        assert proc.ppid() != os.getpid()  # re-parented: never a zombie of ours
        assert os.getsid(pid) == pid  # its own session: a closed terminal does not reach it
        os.kill(pid, signal.SIGHUP)  # a closed terminal's hang-up is ignored
        time.sleep(0.5)
        assert engine_running(layout) is not None
        again = run_cli("daemon", "--config", str(config))
        assert again.returncode == 1 and "already running" in again.stderr
        done = run_cli("stop", "--config", str(config))
        assert done.returncode == 0, done.stderr
        assert "engine stopped" in done.stdout
    finally:
        if engine_running(layout) is not None:
            os.kill(pid, signal.SIGKILL)
    assert engine_running(layout) is None
    assert (layout.queue / "engine.log").exists()


def test_pause_resume_and_stop_without_an_engine(workspace: Path) -> None:
    config = configure(workspace, FAST)
    out = run_cli("pause", "--config", str(config))
    assert out.returncode == 0 and "paused" in out.stdout and "no engine is running" in out.stdout
    out = run_cli("resume", "--config", str(config))
    assert out.returncode == 0 and "resumed" in out.stdout
    out = run_cli("stop", "--config", str(config))
    assert out.returncode == 0 and "no engine is running" in out.stdout


def test_doctor_reports_each_check(workspace: Path) -> None:
    config = configure(workspace, FAST)
    out = run_cli("doctor", "--config", str(config), "--json")
    data = json.loads(out.stdout)
    checks = {c["check"] for c in data["checks"]}
    assert {"config", "gpu", "disk", "memory", "permissions", "engine", "model", "torch"} <= checks
    assert out.returncode == (0 if data["ok"] else 1)
    configure(workspace, {"hardware.device": "cuda"})
    out = run_cli("doctor", "--config", str(config))
    assert out.returncode == 1 and "FAIL" in out.stdout and "gpu" in out.stdout


def _daemon_once(config: Path, *, unprivileged: bool = False) -> subprocess.CompletedProcess[str]:
    """`trainconsole daemon` run to its exit. ``unprivileged``: as a user file modes bind, which for
    root means setpriv dropping its DAC override (a real permission check, not a fake)."""
    cmd = [sys.executable, "-m", "trainconsole.console.cli", "--config", str(config), "daemon"]
    if unprivileged and os.geteuid() == 0:
        if shutil.which("setpriv") is None:
            pytest.skip("root opens files whatever their mode, and setpriv is not here to drop that")
        caps = "-dac_override,-dac_read_search"
        cmd = ["setpriv", "--bounding-set", caps, "--inh-caps", caps, *cmd]
    return subprocess.run(cmd, cwd=ROOT, env=daemon_env(), capture_output=True, text=True, timeout=60)


@pytest.mark.edge(46, 48)
def test_a_pid_file_that_is_a_folder_is_one_line_and_leaves_no_temp_file(workspace: Path) -> None:
    config = configure(workspace, FAST)
    layout = load_config(config).layout()
    layout.ensure()
    layout.pidfile.mkdir()
    done = _daemon_once(config)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and str(layout.pidfile) in lines[0] and "is a folder" in lines[0]
    assert f"rmdir {layout.pidfile}" in lines[0]
    assert not list(layout.queue.glob(".engine.pid.*.tmp"))
    for command in ("status", "doctor"):
        seen = run_cli(command, "--config", str(config))
        assert "Traceback" not in seen.stdout + seen.stderr, command
    doctor = run_cli("doctor", "--config", str(config))
    assert doctor.returncode == 1 and "is a folder" in doctor.stdout
    # The lock was given back: once the folder is gone, an engine starts.
    layout.pidfile.rmdir()
    with EngineLock(layout):
        pass


@pytest.mark.edge(46)
def test_an_unreadable_lock_file_is_one_line_naming_it(workspace: Path) -> None:
    config = configure(workspace, FAST)
    layout = load_config(config).layout()
    layout.ensure()
    layout.lockfile.touch()
    layout.lockfile.chmod(0)
    try:
        done = _daemon_once(config, unprivileged=True)
    finally:
        layout.lockfile.chmod(0o644)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and str(layout.lockfile) in lines[0] and "Permission denied" in lines[0]
    assert not layout.pidfile.exists()
