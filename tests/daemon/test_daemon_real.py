"""The daemon with the real worker training the built-in tiny model: real processes, real
signals, real checkpoints. Faults a CPU machine cannot produce (GPU OOM, a hang, a bug in the
worker) are injected inside the worker with TRAINCONSOLE_FAULT (engine/train/faults.py), which
raises the real exception types at a chosen step."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from tests.daemon.harness import FAST, TINY, Harness, configure, drop, start_daemon, store_jobs, wait_for
from tests.daemon.realrun import (
    REAL,
    assert_checkpoints_sound,
    gone,
    leftover_temp_files,
    step_trail,
    worst_step_loss,
)
from trainconsole.engine.config import load_config
from trainconsole.engine.daemon.launcher import launcher_for
from trainconsole.engine.errors import ErrorClass
from trainconsole.engine.events import read_all


def real(ws: Path, values: dict | None = None) -> Harness:
    return Harness(ws, {**TINY, **REAL, **(values or {})}, launcher_factory=launcher_for)


@pytest.fixture
def model(tiny_model: Path) -> Path:
    return tiny_model


@pytest.mark.edge(23)
def test_real_oom_walks_down_the_ladder_and_finishes(workspace: Path, model: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    # torch.OutOfMemoryError raised in the worker at step 2 while the micro-batch is above 1.
    monkeypatch.setenv("TRAINCONSOLE_FAULT", "oom_above_batch:1@2")
    h = real(workspace)
    try:
        drop(workspace, "a.jsonl")
        h.run_until(lambda: h.jobs()[0].status in ("done", "failed"), timeout=240)
        job = h.jobs()[0]
        assert job.status == "done", job.error
        assert job.overrides["batch_size"] == 1 and job.overrides["gradient_accumulation"] == 2
        assert job.overrides["oom_rung"] == 1 and job.attempts == 1
        logs = [e["message"] for e in read_all(h.layout.job_events(job.id)) if e["type"] == "log"]
        assert any("OOM ladder rung 1" in m and "effective batch 2" in m for m in logs)
        # Resumed from the checkpoint of step 1, not from scratch.
        assert worst_step_loss(step_trail(h.layout, job.id)) <= h.cfg.training.save_steps
    finally:
        h.close()


@pytest.mark.edge(70)
def test_real_hang_is_caught_by_the_watchdog(workspace: Path, model: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRAINCONSOLE_FAULT", "hang@2")
    # Step 1 is no save or evaluation step, so the short step-based limit applies after it.
    h = real(workspace, {"guards.hang_floor_s": 3.0, "guards.hang_multiple": 5.0, "training.save_steps": 50})
    try:
        drop(workspace, "a.jsonl")
        h.run_until(lambda: bool(h.jobs()[0].history), timeout=240)
        job = h.jobs()[0]
        assert job.history[0]["class"] == ErrorClass.TRANSIENT and "watchdog" in job.history[0]["message"]
        logs = [e["message"] for e in read_all(h.layout.job_events(job.id)) if e["type"] == "log"]
        stacks = [m for m in logs if "Python stacks" in m]
        assert stacks, logs
        assert 'File "' in stacks[0] and "worker" in stacks[0]
    finally:
        h.close()


@pytest.mark.edge(74, 75, 77, 78)
def test_real_bugs_are_reported_with_traceback_not_retried(workspace: Path, model: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRAINCONSOLE_FAULT_JOBS", "k*=raise:KeyError@2;i*=raise:IndexError@2;"
                                                  "v*=raise:ValueError@2;z*=raise:ZeroDivisionError@2")
    h = real(workspace)
    try:
        for name in ("k.jsonl", "i.jsonl", "v.jsonl", "z.jsonl", "healthy.jsonl"):
            drop(workspace, name)
        h.run_until(lambda: all(j.status in ("done", "failed") for j in h.jobs()) and len(h.jobs()) == 5,
                    timeout=400)
        by_name = {j.name: j for j in h.jobs()}
        assert by_name["healthy.jsonl"].status == "done"
        for name, exc in (("k.jsonl", "KeyError"), ("i.jsonl", "IndexError"), ("v.jsonl", "ValueError"),
                          ("z.jsonl", "ZeroDivisionError")):
            job = by_name[name]
            assert job.status == "failed" and job.attempts == 1 and job.error_class == ErrorClass.BUG
            report = next(h.layout.failed.glob(f"{job.id}*report*")).read_text()
            assert "Traceback" in report and exc in report
    finally:
        h.close()


@pytest.mark.edge(27)
def test_two_cpu_processes_under_torchrun(workspace: Path, model: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The several-device path (torchrun, DDP through the HF Trainer) with two CPU processes (gloo).
    monkeypatch.setenv("TRAINCONSOLE_NPROC", "2")
    h = real(workspace, {"queue.max_attempts": 1})
    try:
        drop(workspace, "a.jsonl")
        h.run_until(lambda: h.sup.current is not None, timeout=60)
        assert h.sup.current is not None
        worker = h.sup.current.worker
        assert "torch.distributed.run" in worker.popen.args
        ranks: set[int] = set()

        def two_ranks() -> bool:
            ranks.update(worker.worker_pids())
            return len(ranks) >= 2 or h.sup.current is None

        h.run_until(two_ranks, timeout=120)
        assert len(ranks) == 2  # torchrun started two worker processes
        h.run_until(lambda: h.jobs()[0].status in ("done", "failed"), timeout=300)
        job = h.jobs()[0]
        assert job.status == "done", f"{job.error}"
    finally:
        h.close()


@pytest.mark.edge(41)
def test_sigterm_mid_step_checkpoints_requeues_uncharged_and_resumes(workspace: Path, model: Path) -> None:
    config = configure(workspace, {**FAST, **TINY, **REAL, "training.max_steps": 40})
    layout = load_config(config).layout()
    drop(workspace, "a.jsonl")
    daemon = start_daemon(config)
    try:
        wait_for(lambda: any((j.step or 0) >= 3 for j in store_jobs(config)), 240, "step 3")
        daemon.send_signal(signal.SIGTERM)
        assert daemon.wait(120) == 0
        job = store_jobs(config)[0]
        assert job.status == "queued" and job.attempts == 0 and job.pid is None
        report = (layout.run_dir(job.id) / "report.json").read_text()
        assert '"interrupted"' in report
        reached = max(step_trail(layout, job.id))
        assert assert_checkpoints_sound(layout) >= 1
        daemon = start_daemon(config)
        wait_for(lambda: store_jobs(config)[0].status == "done", 300, "job done after restart")
        trail = step_trail(layout, job.id)
        assert worst_step_loss(trail) <= 1 and max(trail) == 40 and reached >= 3
    finally:
        if daemon.poll() is None:
            daemon.send_signal(signal.SIGTERM)
            daemon.wait(120)


@pytest.mark.edge(41, 42, 43, 49)
def test_kill_9_of_daemon_and_worker_recovers(workspace: Path, model: Path) -> None:
    """A killed daemon leaves its worker orphaned (41); power loss or a reboot kills both (42, 43).
    The next daemon ends the orphan before anything trains, requeues the job without charging it,
    sweeps leftovers, and the job resumes from its newest good checkpoint."""
    config = configure(workspace, {**FAST, **TINY, **REAL, "training.max_steps": 12})
    layout = load_config(config).layout()
    drop(workspace, "a.jsonl")
    daemon = start_daemon(config)
    try:
        wait_for(lambda: any((j.step or 0) >= 2 for j in store_jobs(config)), 240, "step 2")
        job = store_jobs(config)[0]
        orphan = job.pid
        assert orphan
        os.kill(daemon.pid, signal.SIGKILL)
        daemon.wait()
        assert os.path.exists(f"/proc/{orphan}")  # the worker outlived its daemon
        # A leftover a killed save would leave, and a dead writer's temp file.
        (layout.run_dir(job.id) / "checkpoints" / ".staging-checkpoint-99-999999-deadbeef").mkdir(parents=True)
        (layout.tmp / "store-999999-x.tmp").write_text("x")
        daemon = start_daemon(config)
        wait_for(lambda: gone(orphan), 60, "orphan ended")
        wait_for(lambda: store_jobs(config)[0].status == "done", 300, "job done")
        job = store_jobs(config)[0]
        assert job.attempts == 1  # the interrupted attempt was given back
        assert worst_step_loss(step_trail(layout, job.id)) <= 1
        assert not leftover_temp_files(layout)
        assert_checkpoints_sound(layout)
        alerts = [e for e in read_all(layout.engine_events) if e["type"] == "alert" and e["case"] == 41]
        assert any("ending 1 worker" in a["message"] for a in alerts)
    finally:
        if daemon.poll() is None:
            daemon.send_signal(signal.SIGTERM)
            daemon.wait(120)
        time.sleep(0)


@pytest.mark.edge(41)
def test_a_job_an_orphan_finished_while_no_engine_ran_is_not_redone(workspace: Path, model: Path) -> None:
    config = configure(workspace, {**FAST, **TINY, **REAL})
    layout = load_config(config).layout()
    drop(workspace, "a.jsonl")
    daemon = start_daemon(config)
    wait_for(lambda: any(j.pid for j in store_jobs(config)), 120, "a worker")
    os.kill(daemon.pid, signal.SIGKILL)
    daemon.wait()
    job = store_jobs(config)[0]
    report = layout.run_dir(job.id) / "report.json"
    wait_for(lambda: report.exists() and gone(job.pid), 240, "the orphan done")
    daemon = start_daemon(config)
    try:
        wait_for(lambda: store_jobs(config)[0].status == "done", 60, "done")
        assert store_jobs(config)[0].attempts == 1
        assert '"done"' in report.read_text()  # not overwritten by a second run
    finally:
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(120)
