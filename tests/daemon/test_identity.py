"""Process identity survives a clock step (cases 41, 43, 48): the PID file, the store's worker
record and recovery's orphan check keep recognising the same live processes after psutil's view
of the boot time (and so of every create_time) moves by seconds, as it does when NTP steps the
wall clock or a VM resumes."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import psutil
import pytest

from tests.daemon.harness import FAST, ROOT, Harness, configure, daemon_env, drop, store_jobs, wait_for
from trainconsole.engine.config import load_config
from trainconsole.engine.daemon.inbox import Inbox
from trainconsole.engine.events import read_all
from trainconsole.engine.lock import engine_running, read_pidfile
from trainconsole.engine.procid import identity
from trainconsole.engine.store import Store

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"),
                                reason="psutil derives create_time from the boot time only on Linux")
STEPS = (7.0, -7.0)


def shifted(seconds: float, module: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tests.daemon.clockstep", str(seconds), module, *args],
                          cwd=ROOT, env=daemon_env(), capture_output=True, text=True, timeout=120)


def probe(config: Path, seconds: float) -> dict[str, Any]:
    done = shifted(seconds, "tests.daemon.identity_probe", str(config))
    assert done.returncode == 0, done.stderr
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def spawn_daemon(config: Path, shift: float | None = None) -> subprocess.Popen[bytes]:
    cli = ["-m", "trainconsole.console.cli", "--config", str(config), "daemon"]
    argv = [sys.executable, *cli] if shift is None else [
        sys.executable, "-m", "tests.daemon.clockstep", str(shift), *cli[1:]]
    return subprocess.Popen(argv, cwd=ROOT, env=daemon_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)


def stop(daemon: subprocess.Popen[bytes]) -> None:
    if daemon.poll() is None:
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(60)


@pytest.mark.edge(48)
def test_a_live_engine_is_still_the_engine_after_the_clock_steps(workspace: Path) -> None:
    config = configure(workspace, FAST)
    layout = load_config(config).layout()
    daemon = spawn_daemon(config)
    try:
        wait_for(lambda: engine_running(layout) is not None, 60, "the engine's PID file")
        info = read_pidfile(layout)
        assert info is not None and info.pid == daemon.pid
        for step in STEPS:
            seen = probe(config, step)
            # The step is real for psutil: the old rule (create times within 0.05 s) says stale.
            moved = seen["engine_create_time"] - info.start_time
            assert abs(moved - step) < 0.5, seen
            assert seen["engine_pid"] == daemon.pid, seen
            status = shifted(step, "trainconsole.console.cli", "--config", str(config), "status", "--json")
            engine = json.loads(status.stdout)["engine"]
            assert (engine["state"], engine["pid"]) == ("running", daemon.pid), status.stdout
            second = shifted(step, "trainconsole.console.cli", "--config", str(config), "daemon")
            assert second.returncode == 1 and f"already running for {layout.queue} (pid {daemon.pid}," \
                in second.stderr, second.stderr
        assert daemon.poll() is None and engine_running(layout) == info
    finally:
        stop(daemon)
    assert engine_running(layout) is None


@pytest.mark.edge(48)
def test_an_engine_started_before_a_clock_step_is_recognised_by_one_started_after(workspace: Path) -> None:
    """The reverse direction: the PID file written in the stepped world, read in the plain one."""
    config = configure(workspace, FAST)
    layout = load_config(config).layout()
    daemon = spawn_daemon(config, shift=30.0)
    try:
        wait_for(lambda: engine_running(layout) is not None, 60, "the engine's PID file")
        info = read_pidfile(layout)
        assert info is not None and info.pid == daemon.pid
        # Its own view of its start time is 30 s off from ours: the old rule would call it stale.
        assert abs(info.start_time - psutil.Process(daemon.pid).create_time() - 30.0) < 0.5
        assert engine_running(layout) is not None and info.identity == identity(daemon.pid)
    finally:
        stop(daemon)


@pytest.mark.edge(41, 43)
def test_a_running_worker_is_still_ours_after_the_clock_steps(
        workspace: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_STEPS", "100000")
    monkeypatch.setenv("FAKE_STEP_S", "0.2")
    h = Harness(workspace)
    try:
        drop(workspace, "long.jsonl")
        h.run_until(lambda: any(j.status == "running" and j.pid for j in h.jobs()))
        (job,) = h.jobs()
        assert job.pid is not None and job.pid_start == identity(job.pid)
        created = psutil.Process(job.pid).create_time()
        for step in (0.0, *STEPS):
            seen = probe(h.ws / "config.toml", step)
            worker = seen["workers"][job.id]
            assert abs(worker["create_time"] - created - step) < 0.5, seen
            assert worker["same"] is True and worker["identity"] == job.pid_start, seen
            assert seen["orphans"] == [[job.pid, job.id, "recorded in the store"]], seen
    finally:
        h.close()


@pytest.mark.edge(43)
def test_a_recorded_pid_now_held_by_an_unrelated_process_is_left_alone_and_the_job_requeued(
        workspace: Path) -> None:
    """After a power loss the kernel gave the dead worker's pid to an unrelated process (here a
    ``sleep`` that started at another time than the recorded worker). The next engine must not
    kill it, and must requeue the job without charging the attempt the lost worker used."""
    config = configure(workspace, FAST)
    layout = load_config(config).layout()
    layout.ensure()
    drop(workspace, "a.jsonl")
    unrelated = subprocess.Popen(["sleep", "120"], start_new_session=True)
    try:
        now = identity(unrelated.pid)
        assert now is not None
        kind, boot, ticks = now.rsplit(":", 2)
        lost_worker = f"{kind}:{boot}:{int(ticks) - 250}"  # same pid, started 2.5 s earlier
        with Store.open(layout) as store:
            Inbox(layout).scan(store, stable_s=0.0)
            (job,) = store.jobs()
            store.start(job.id, pid=unrelated.pid, pid_start=lost_worker)
            store.set_paused(True)  # recovery only: nothing is to train afterwards
            assert store.jobs()[0].attempts == 1
        daemon = spawn_daemon(config)
        try:
            wait_for(lambda: store_jobs(config)[0].status == "queued", 60, "the job requeued")
            (job,) = store_jobs(config)
            assert job.attempts == 0 and job.pid is None, job  # the lost attempt is not charged
            assert unrelated.poll() is None  # never signalled
            alerts = [e for e in read_all(layout.engine_events) if e["type"] == "alert"]
            assert not any("ending" in a["message"] for a in alerts), alerts
            assert any(a["case"] == 41 and "requeued" in a["message"] for a in alerts), alerts
        finally:
            stop(daemon)
        assert unrelated.poll() is None
    finally:
        unrelated.kill()
        unrelated.wait()
