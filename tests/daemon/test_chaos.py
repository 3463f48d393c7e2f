"""kill -9 at random moments of real training, and poison jobs among healthy ones.

Both are slow by nature (each kill costs a worker restart: importing torch and loading the model);
`make chaos` runs 200 kills with TRAINCONSOLE_CHAOS_KILLS=200, `make test` 20."""

from __future__ import annotations

import json
import os
import random
import signal
import time
from pathlib import Path
from typing import Any

import psutil
import pytest

from tests.daemon.harness import FAST, TINY, configure, drop, start_daemon, store_jobs, wait_for
from tests.daemon.realrun import (
    REAL,
    assert_checkpoints_sound,
    leftover_temp_files,
    step_trail,
    worst_step_loss,
)
from trainconsole.engine import checkpoints as ckpt
from trainconsole.engine.config import load_config
from trainconsole.engine.daemon.launcher import WORKER_MODULE
from trainconsole.engine.procid import identity


def _workers_under(runs: Path) -> list[int]:
    pids = []
    for proc in psutil.process_iter(["cmdline"]):
        cmd = proc.info["cmdline"] or []
        if WORKER_MODULE in cmd and cmd[-1].startswith(str(runs)):
            pids.append(proc.pid)
    return pids


def _worker_or_idle(config: Path, dropped: list[str]) -> bool:
    jobs = store_jobs(config)
    if any(j.status == "running" and j.pid for j in jobs):
        return True
    return len(jobs) == len(dropped) and all(j.status == "done" for j in jobs)


KILLS = int(os.environ.get("TRAINCONSOLE_CHAOS_KILLS", "20"))


@pytest.mark.slow
@pytest.mark.timeout(300 + 20 * KILLS)
@pytest.mark.edge(41, 42, 43)
def test_chaos_kill_9_of_worker_and_daemon_at_random_points(workspace: Path, tiny_model: Path) -> None:
    kills = KILLS
    seed = int(os.environ.get("TRAINCONSOLE_CHAOS_SEED", str(int(time.time()))))
    rng = random.Random(seed)
    save_steps = 2
    config = configure(workspace, {**FAST, **TINY, **REAL, "training.max_steps": 16,
                                   "training.save_steps": save_steps, "queue.max_attempts": 100})
    layout = load_config(config).layout()
    dropped = [drop(workspace, f"chaos-{i}.jsonl").name for i in range(2)]
    daemon = start_daemon(config)
    log: list[str] = []
    try:
        for n in range(kills):
            # A job may finish at any moment, also between two looks: wait for either a worker to
            # kill or an idle queue (then give it more), never for a worker that cannot come.
            while True:
                wait_for(lambda: _worker_or_idle(config, dropped), 180,
                         f"a running worker or an idle queue (seed {seed}, kill {n})")
                if any(j.status == "running" and j.pid for j in store_jobs(config)):
                    break
                dropped.append(drop(workspace, f"chaos-{len(dropped)}.jsonl").name)
            if rng.random() < 0.6:
                # Mid-training (steps and saves), not only while the worker imports and loads.
                try:
                    wait_for(lambda: any(j.status == "running" and j.step for j in store_jobs(config)), 60)
                except AssertionError:
                    pass
                time.sleep(rng.uniform(0.0, 2.0))
            else:
                time.sleep(rng.uniform(0.0, 4.0))
            running = [j for j in store_jobs(config) if j.status == "running" and j.pid]
            target = rng.choice(["worker", "worker", "daemon", "both"])
            if target in ("worker", "both") and running:
                for pid in _workers_under(layout.runs):
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
            if target in ("daemon", "both"):
                os.kill(daemon.pid, signal.SIGKILL)
                daemon.wait()
                daemon = start_daemon(config)
            log.append(f"{n}:{target}@{running[0].step if running else '-'}")
            jobs = store_jobs(config)
            assert sorted(j.name for j in jobs) == sorted(dropped), f"seed {seed}: {log}"
        wait_for(lambda: all(j.status == "done" for j in store_jobs(config)), 600,
                 f"every job done (seed {seed}, {log})")
    finally:
        if daemon.poll() is None:
            daemon.send_signal(signal.SIGTERM)
            daemon.wait(120)
    jobs = store_jobs(config)
    worst = {job.id: worst_step_loss(step_trail(layout, job.id)) for job in jobs}
    _record(seed, log, dropped, jobs, worst, layout)
    assert len(jobs) == len(dropped) and len({j.sha256 for j in jobs}) == len(dropped)
    assert all(j.status == "done" for j in jobs)
    for job in jobs:
        assert (layout.done / job.path.name).exists()
        assert worst[job.id] <= save_steps, f"{job.id} went back {worst[job.id]} steps (seed {seed}, {log})"
    assert_checkpoints_sound(layout)
    assert not leftover_temp_files(layout), f"seed {seed}"
    assert not _workers_under(layout.runs)


def _record(seed: int, log: list[str], dropped: list[str], jobs: list[Any], worst: dict[str, int],
            layout: Any) -> None:
    """`make chaos` keeps its figures (TRAINCONSOLE_CHAOS_RESULTS names the file), written before the
    assertions so a failing run still says what it saw."""
    where = os.environ.get("TRAINCONSOLE_CHAOS_RESULTS")
    if not where:
        return
    names = [j.name for j in jobs]
    corrupt = 0
    for run_dir in layout.runs.iterdir():
        found = ckpt.list_checkpoints(run_dir / "checkpoints")
        if found and not isinstance(ckpt.verify(found[0][1], fingerprint=None), ckpt.Checkpoint):
            corrupt += 1
    targets = [entry.split(":", 1)[1].split("@", 1)[0] for entry in log]
    metrics = {
        "kills": len(log),
        "worker_kills": sum(t in ("worker", "both") for t in targets),
        "daemon_kills": sum(t in ("daemon", "both") for t in targets),
        "jobs": len(dropped),
        "jobs_done": sum(j.status == "done" for j in jobs),
        "lost_jobs": len(set(dropped) - set(names)),
        "duplicated_jobs": len(names) - len(set(names)) + len(jobs) - len({j.sha256 for j in jobs}),
        "corrupt_newest_checkpoints": corrupt,
        "leftover_temp_files": len(leftover_temp_files(layout)),
        "worst_steps_lost": max(worst.values(), default=0),
        "seed": seed,
    }
    Path(where).parent.mkdir(parents=True, exist_ok=True)
    Path(where).write_text(json.dumps({"benchmark": "chaos", "quick": False, "metrics": metrics}, indent=2) + "\n")
    print("\n".join(f"{k:28} {v}" for k, v in metrics.items()))


@pytest.mark.slow
@pytest.mark.timeout(600)
@pytest.mark.edge(60)
def test_five_poison_jobs_among_twenty_healthy(workspace: Path) -> None:
    """Poison jobs kill their worker every time (SIGKILL, no report): each fails after exactly
    max_attempts, every healthy job finishes, and the one daemon never restarts.

    The daemon is the real one in its own process; its workers are the fake worker (thirty worker
    lives, each a tenth of a second instead of an import of torch). The real worker's own crash
    handling is covered by tests/daemon/test_daemon_real.py."""
    max_attempts = 2
    config = configure(workspace, {**FAST, **TINY, "queue.max_attempts": max_attempts})
    names = [f"healthy-{i:02d}.jsonl" for i in range(20)]
    names[3:3] = [f"poison-{i}.jsonl" for i in range(5)]
    for name in names:
        drop(workspace, name, n=8)
    daemon = start_daemon(config, env={"TRAINCONSOLE_FAULT_JOBS": "poison-*=crash@1"}, fake_worker=True)
    started = identity(daemon.pid)  # not psutil's create_time, which a clock step moves
    try:
        wait_for(lambda: len(store_jobs(config)) == 25 and
                 all(j.status in ("done", "failed") for j in store_jobs(config)), 400, "all jobs finished")
        assert daemon.poll() is None and started is not None and identity(daemon.pid) == started
    finally:
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(120)
    for job in store_jobs(config):
        if job.name.startswith("poison"):
            assert job.status == "failed" and job.attempts == max_attempts, job
        else:
            assert job.status == "done" and job.attempts == 1, job
