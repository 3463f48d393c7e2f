"""A real engine process with launcher.kind = "slurm" and the real worker on the test cluster: a job
trains on the built-in model through Slurm and publishes its adapter, the engine SIGKILLed and
restarted under it following the same Slurm job again, never submitting a second one."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import pytest

from tests.daemon.harness import FAST, TINY, configure, drop, start_daemon, store_jobs, wait_for
from tests.daemon.realrun import REAL, assert_checkpoints_sound, step_trail
from tests.slurm.cluster import Cluster
from tests.slurm.daemon import SLURM
from trainconsole.engine.config import load_config
from trainconsole.engine.daemon.slurm.submit import job_id_from_name, queue_tag
from trainconsole.engine.events import read_all


def _ours(slurm: Cluster, queue: Path) -> list[tuple[int, str]]:
    tag = queue_tag(queue)
    return [(int(j["job_id"]), str(j["job_state"])) for j in slurm.jobs()
            if job_id_from_name(str(j["name"]), tag)]


def _stop(daemon: subprocess.Popen[bytes]) -> None:
    if daemon.poll() is None:
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(180)


@pytest.mark.edge(14, 41)
def test_a_job_trains_through_slurm_survives_an_engine_kill_and_publishes(
        slurm: Cluster, workspace: Path, tiny_model: Path) -> None:
    config = configure(workspace, {**FAST, **TINY, **REAL, **SLURM, "launcher.mem": "2G",
                                   "training.max_steps": 8, "training.save_steps": 2})
    layout = load_config(config).layout()
    drop(workspace, "a.jsonl")
    daemon = start_daemon(config)
    try:
        wait_for(lambda: any((j.step or 0) >= 2 for j in store_jobs(config)), 400, "step 2 on the node")
        job = store_jobs(config)[0]
        assert job.slurm_id and job.node == slurm.node and job.pid is None
        os.kill(daemon.pid, signal.SIGKILL)
        daemon.wait()
        assert [state for _, state in _ours(slurm, layout.queue)] == ["RUNNING"]  # Slurm's, not ours
        daemon = start_daemon(config)
        wait_for(lambda: store_jobs(config)[0].status == "done", 400, "the job done")
        done = store_jobs(config)[0]
        assert done.attempts == 1 and done.slurm_id == job.slurm_id  # followed again, never resubmitted
        assert _ours(slurm, layout.queue) == [(job.slurm_id, "COMPLETED")]
        assert (layout.adapters / "latest").exists()
        assert max(step_trail(layout, job.id)) == 8
        assert_checkpoints_sound(layout)
        alerts = [e for e in read_all(layout.engine_events) if e["type"] == "alert"]
        assert any("followed again, not submitted twice" in a["message"] for a in alerts)
        assert not any(a.get("case") == 41 and "requeued" in a["message"] for a in alerts)
    finally:
        _stop(daemon)
