"""Workers submitted to a real Slurm (the session's one-node cluster), followed and ended through
Slurm alone: submission, one squeue per interval, Slurm's pending reason, a hand scancel, our own
stop, kill -9 on the node, the time-limit warning and resubmission, the cgroup's OOM, and a
controller restart under a running job. The fake worker (torch-free) keeps these quick; the real
worker trains in test_cluster_train.py."""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import psutil
import pytest

from tests.slurm.cluster import Cluster
from tests.slurm.jobs import (
    FAKE_WORKER,
    CommandLauncher,
    fake_launcher,
    report_of,
    slurm_config,
    step_of,
    submit,
    wait_ended,
    wait_for,
    wait_running,
)
from trainconsole.engine.daemon.launcher import DevicePlan
from trainconsole.engine.daemon.slurm.endings import slurm_ending
from trainconsole.engine.daemon.slurm.launcher import SlurmWorker
from trainconsole.engine.daemon.slurm.tracker import SlurmTracker
from trainconsole.engine.errors import ErrorClass

LONG = {"FAKE_STEPS": "100000", "FAKE_STEP_S": "0.1"}


class Clock:
    """The tracker's clock, moved by the test: polls between two moves must not call squeue."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def tick_and_poll(self, workers: list[SlurmWorker], step: float) -> list[int | None]:
        self.now += step
        return [w.poll() for w in workers]


def test_a_job_runs_on_the_node_and_its_report_is_the_ending(slurm: Cluster, tmp_path: Path) -> None:
    launcher = fake_launcher(slurm_config(), tmp_path / "queue")
    worker = submit(launcher, tmp_path / "runs" / "j0001", "j0001", {"FAKE_STEPS": "5"})
    assert worker.slurm_id > 0 and worker.name.startswith("trainconsole-")
    assert wait_ended(worker) == 0
    assert worker.node == slurm.node and worker.job is not None and worker.job.state == "COMPLETED"
    ending = slurm_ending(worker.job, report_of(tmp_path / "runs" / "j0001"))
    assert ending.outcome.done and ending.outcome.global_step == 5
    script = (tmp_path / "runs" / "j0001" / "slurm-job.sh").read_text()
    assert "exec " in script and "fake_worker.py" in script


def test_one_squeue_per_interval_follows_every_job(slurm: Cluster, tmp_path: Path) -> None:
    """Three jobs at once (the partition oversubscribes two cores), one call answering for all."""
    clock = Clock()
    lc = slurm_config(poll_s=5.0)
    launcher = fake_launcher(lc, tmp_path / "queue")
    launcher.tracker = tracker = SlurmTracker(launcher.commands, lc.poll_s, clock=clock)
    workers = [submit(launcher, tmp_path / "runs" / f"j000{i}", f"j000{i}", LONG) for i in (1, 2, 3)]
    for _ in range(10):
        assert all(w.poll() is None for w in workers)
    assert tracker.calls == 1
    wait_for(lambda: clock.tick_and_poll(workers, 5.0) is not None and all(w.state == "RUNNING" for w in workers),
             60, "all three running at once")
    before = tracker.calls
    for _ in range(10):
        for w in workers:
            w.poll()
    assert tracker.calls == before  # the clock did not move: no new call, whatever the number of jobs
    for w in workers:
        w.signal_group(signal.SIGTERM)
    wait_for(lambda: None not in clock.tick_and_poll(workers, 5.0), 60, "all three ending")
    for w in workers:
        ending = slurm_ending(w.job, report_of(w.log_path.parent), stopped_by_us=True)
        assert ending.outcome.error_class is ErrorClass.INTERRUPTED and ending.hold_reason is None


def test_a_pending_job_shows_slurms_reason(slurm: Cluster, tmp_path: Path) -> None:
    memory = next(n["real_memory"] for n in slurm.sinfo()["nodes"] if n["name"] == slurm.node)
    big = fake_launcher(slurm_config(mem=f"{memory}M"), tmp_path / "queue")
    first = submit(big, tmp_path / "runs" / "j0001", "j0001", LONG)
    wait_running(first)
    small = fake_launcher(slurm_config(), tmp_path / "queue")
    second = submit(small, tmp_path / "runs" / "j0002", "j0002", {"FAKE_STEPS": "3"})
    wait_for(lambda: second.poll() is None and second.reason != "", 30, "a pending reason")
    assert second.state == "PENDING" and second.reason in ("Resources", "Priority")
    first.cancel()
    assert wait_ended(second) == 0 and second.reason == ""


def test_scancel_by_hand_holds_the_job_with_that_reason(slurm: Cluster, tmp_path: Path) -> None:
    run = tmp_path / "runs" / "j0001"
    worker = submit(fake_launcher(slurm_config(), tmp_path / "queue"), run, "j0001", LONG)
    wait_for(lambda: step_of(run) >= 2, 60, "training steps")
    assert slurm.run("scancel", str(worker.slurm_id)).returncode == 0
    wait_ended(worker)
    assert worker.job is not None and worker.job.state == "CANCELLED"
    report = report_of(run)
    assert report is not None and report.status == "interrupted" and report.stop_signal == "SIGTERM"
    ending = slurm_ending(worker.job, report)
    assert ending.hold_reason is not None and "someone else" in ending.hold_reason
    assert str(worker.slurm_id) in ending.hold_reason


def _worker_pid(run: Path) -> int | None:
    for proc in psutil.process_iter(["pid", "cmdline"]):
        if str(run / "spec.json") in (proc.info["cmdline"] or []):
            return int(proc.info["pid"])
    return None


@pytest.mark.edge(41)
def test_kill_9_of_the_worker_on_the_node_is_a_transient_ending(slurm: Cluster, tmp_path: Path) -> None:
    run = tmp_path / "runs" / "j0001"
    worker = submit(fake_launcher(slurm_config(), tmp_path / "queue"), run, "j0001", LONG)
    wait_for(lambda: step_of(run) >= 2, 60, "training steps")
    pid = _worker_pid(run)
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    assert wait_ended(worker) == -signal.SIGKILL
    assert report_of(run) is None
    ending = slurm_ending(worker.job, None)
    assert ending.outcome.error_class is ErrorClass.TRANSIENT and ending.hold_reason is None


def test_the_time_limit_warning_checkpoints_and_a_resubmission_resumes(slurm: Cluster, tmp_path: Path) -> None:
    """--time=1 with --signal=B:USR1@30: Slurm warns well before the minute is out (its timer runs
    every 30 s or so); the worker checkpoints and exits, and the next submission resumes there."""
    run = tmp_path / "runs" / "j0001"
    lc = slurm_config(time_limit="1", warn_before_limit_s=30)
    launcher = fake_launcher(lc, tmp_path / "queue")
    worker = submit(launcher, run, "j0001", LONG)
    wait_ended(worker, timeout=150)
    report = report_of(run)
    assert report is not None and report.status == "interrupted" and report.stop_signal == "SIGUSR1"
    ending = slurm_ending(worker.job, report)
    assert ending.outcome.error_class is ErrorClass.INTERRUPTED and "time limit" in ending.outcome.message
    saved = report.global_step
    assert saved > 0
    (run / "report.json").unlink()
    again = submit(fake_launcher(slurm_config(), tmp_path / "queue"), run, "j0001", LONG)
    wait_for(lambda: step_of(run) > saved, 60, "the resubmitted job's first step")
    lines = (run / "events.jsonl").read_text().splitlines()
    steps = [int(line.split('"step": ')[1].split(",")[0]) for line in lines if '"type": "step"' in line]
    assert steps[steps.index(saved) + 1] == saved + 1  # resumed where it stopped: no step lost or redone
    again.cancel()


HOG = "import time\nx = []\nfor _ in range(200):\n    x.append(bytearray(20 << 20)); time.sleep(0.05)\ntime.sleep(30)\n"


@pytest.mark.edge(24)
def test_a_job_over_its_memory_is_slurms_out_of_memory_and_the_ram_rung(slurm: Cluster, tmp_path: Path) -> None:
    if not slurm.oom_enforced:
        pytest.skip("the test cluster has no memory enforcement here (no writable cgroup tree): "
                    "Slurm cannot end a job as OUT_OF_MEMORY")
    launcher = CommandLauncher(slurm_config(mem="150M"), tmp_path / "queue",
                               lambda spec: [sys.executable, "-c", HOG])
    worker = submit(launcher, tmp_path / "runs" / "j0001", "j0001")
    wait_ended(worker)
    assert worker.job is not None and worker.job.state == "OUT_OF_MEMORY"
    ending = slurm_ending(worker.job, None)
    assert ending.outcome.error_class is ErrorClass.OOM and ending.outcome.case == 24


def test_a_controller_restart_under_a_running_job_changes_nothing(slurm: Cluster, tmp_path: Path) -> None:
    run = tmp_path / "runs" / "j0001"
    lc = slurm_config(poll_s=0.2)
    worker = submit(fake_launcher(lc, tmp_path / "queue"), run, "j0001", {"FAKE_STEPS": "120",
                                                                          "FAKE_STEP_S": "0.1"})
    wait_running(worker)
    slurm.stop("slurmctld")
    wait_for(lambda: worker.poll() is None and worker.tracker.error is not None, 30,
             "the tracker noticing the silent controller")
    assert worker.state == "RUNNING" and not worker.vanished  # silence is not an ending
    slurm.start("slurmctld")
    slurm.wait_responding()
    assert wait_ended(worker, timeout=120) == 0
    assert worker.tracker.error is None
    ending = slurm_ending(worker.job, report_of(run))
    assert ending.outcome.done and ending.outcome.global_step == 120


def test_under_torchrun_the_time_limit_warning_reaches_every_rank(slurm: Cluster, tmp_path: Path) -> None:
    """Several GPUs: the batch shell runs torchrun and turns Slurm's B:USR1 into SIGTERM for it,
    which torchrun passes to each rank; here two CPU ranks of the fake worker."""
    run = tmp_path / "runs" / "j0001"
    launcher = CommandLauncher(slurm_config(mem="1G"), tmp_path / "queue", lambda spec: [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
        str(FAKE_WORKER), str(spec)], plan=DevicePlan("cpu", 2, ""))
    worker = submit(launcher, run, "j0001", LONG)
    wait_for(lambda: step_of(run) >= 2, 120, "training steps under torchrun")
    ranks = [p for p in psutil.process_iter(["cmdline"]) if str(run / "spec.json") in (p.info["cmdline"] or [])
             and "torch.distributed.run" not in (p.info["cmdline"] or [])]
    assert len(ranks) == 2
    assert slurm.run("scancel", "--signal=USR1", "--batch", str(worker.slurm_id)).returncode == 0
    wait_ended(worker)
    report = report_of(run)
    assert report is not None and report.status == "interrupted" and report.stop_signal == "SIGTERM"
    assert not any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in ranks)
    assert "child=$!" in (run / "slurm-job.sh").read_text()
