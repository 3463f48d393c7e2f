"""`trainconsole logs -f` and `show` against the real daemon and worker on the built-in model: the
job's worker is SIGKILLed mid-run, the engine starts it again, and the follower keeps printing
through the restart to the end, then exits 0."""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

from tests.daemon.harness import (
    FAST,
    ROOT,
    TINY,
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


def test_logs_follow_survives_a_killed_worker_and_ends_with_the_job(workspace: Path, tiny_model: Path) -> None:
    config = configure(workspace, {**FAST, **TINY, **REAL, "training.max_steps": 10})
    layout = load_config(config).layout()
    drop(workspace, "a.jsonl")
    daemon = start_daemon(config)
    follower: subprocess.Popen[str] | None = None
    try:
        wait_for(lambda: bool(store_jobs(config)), 60, "the job queued")
        job_id = store_jobs(config)[0].id
        follower = subprocess.Popen(
            [sys.executable, "-m", "trainconsole.console.cli", "--config", str(config), "logs", job_id, "-f"],
            cwd=ROOT, env=daemon_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        wait_for(lambda: (store_jobs(config)[0].step or 0) >= 3, 300, "step 3")
        first_pid = store_jobs(config)[0].pid
        assert first_pid
        os.killpg(first_pid, signal.SIGKILL)  # the worker and anything it started
        wait_for(lambda: (store_jobs(config)[0].pid or first_pid) != first_pid, 120, "a second worker")
        out, err = follower.communicate(timeout=400)
        assert follower.returncode == 0, err
        assert err.strip().endswith(f"{job_id}: done")
        lines = out.splitlines()
        started = [ln for ln in lines if " info: worker " in ln and ln.endswith(" started")]
        assert len(started) == 2, lines  # both attempts, one log
        assert any(" step 10/10 " in ln for ln in lines) and "worker finished: done" in lines[-1]
        # Every event of the job's log was printed, in order, once.
        events = list(read_all(layout.job_events(job_id)))
        assert len(lines) == len(events)

        # --lines N: exactly the last N lines of the whole log.
        tail = run_cli("--config", str(config), "logs", job_id, "--lines", "3")
        assert tail.returncode == 0 and tail.stdout.splitlines() == lines[-3:]

        shown = run_cli("--config", str(config), "show", job_id, "--json")
        assert shown.returncode == 0, shown.stderr
        info = json.loads(shown.stdout)["job"]
        steps = [e for e in events if e["type"] == "step"]
        assert info["status"] == "done" and info["attempts"] == 2 and len(info["history"]) == 1
        assert info["last_loss"] == steps[-1]["loss"] and info["last_loss_step"] == 10
        assert info["adapter"] and (Path(info["adapter"]) / "adapter_model.safetensors").is_file()
        assert Path(info["paths"]["log"]).is_file() and Path(info["paths"]["worker_log"]).is_file()
        for key in ("created_at", "started_at", "finished_at"):
            assert dt.datetime.fromisoformat(info[key]).utcoffset() is not None
        text = run_cli("--config", str(config), "show", job_id)
        assert text.returncode == 0 and info["adapter"] in text.stdout and "attempt 1" in text.stdout
    finally:
        if follower is not None and follower.poll() is None:
            follower.kill()
        if daemon.poll() is None:
            daemon.send_signal(signal.SIGTERM)
            daemon.wait(120)
