"""Every way a Slurm job ends, mapped to our outcomes (the pure function; the real cluster's own
endings are in test_cluster_jobs.py)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from trainconsole.engine.daemon.running import newest_checkpoint_step
from trainconsole.engine.daemon.slurm.endings import slurm_ending
from trainconsole.engine.daemon.slurm.state import SlurmJob
from trainconsole.engine.errors import ErrorClass
from trainconsole.engine.runfiles import Report, RunFolder


def _job(state: str, *, code: int | None = 0, sig: int | None = None, reason: str = "None") -> SlurmJob:
    return SlurmJob(slurm_id=41, name="trainconsole-0a1b2c3d-j0001", state=state, reason=reason, node="gpu-07",
                    exit_code=code, signal=sig, start_time=1.0, end_time=2.0, time_limit_min=60)


def _report(status: str, cls: str | None = None, *, case: int | None = None, stop: str | None = None,
            step: int = 12) -> Report:
    return Report.from_json({"schema": 1, "status": status, "error_class": cls, "case": case,
                             "message": f"{status} here", "traceback": None, "global_step": step,
                             "max_steps": 100, "adapter": None, "stop_signal": stop})


def test_completed_with_a_report_is_the_reports_outcome() -> None:
    ending = slurm_ending(_job("COMPLETED"), _report("done"))
    assert ending.outcome.done and ending.hold_reason is None


@pytest.mark.parametrize(("cls", "case"), [("oom", 23), ("data", 3), ("bug", 74), ("diverged", 65)])
def test_failed_with_a_report_is_its_class(cls: str, case: int) -> None:
    ending = slurm_ending(_job("FAILED", code=12), _report("failed", cls, case=case))
    assert ending.outcome.error_class is ErrorClass(cls) and ending.outcome.case == case


def test_the_time_limit_warning_is_a_resubmission_not_a_failure() -> None:
    ending = slurm_ending(_job("FAILED", code=18), _report("interrupted", "interrupted", stop="SIGUSR1"))
    assert ending.outcome.error_class is ErrorClass.INTERRUPTED and ending.hold_reason is None
    assert "time limit" in ending.outcome.message and "step 12" in ending.outcome.message
    # The worker checkpointed on Slurm's own SIGTERM at the limit: the same.
    late = slurm_ending(_job("TIMEOUT", code=None, sig=15), _report("interrupted", "interrupted", stop="SIGTERM"))
    assert late.outcome.error_class is ErrorClass.INTERRUPTED and "time limit" in late.outcome.message


def test_a_time_limit_before_any_new_checkpoint_is_charged_not_looped() -> None:
    stuck = slurm_ending(_job("FAILED", code=18), _report("interrupted", "interrupted", stop="SIGUSR1", step=0),
                         progressed=False)
    assert stuck.outcome.error_class is ErrorClass.TRANSIENT and "launcher.time_limit" in stuck.outcome.message
    # A preemption before the first checkpoint is not the job's doing: still not charged.
    early = slurm_ending(_job("PREEMPTED", code=18), _report("interrupted", "interrupted", stop="SIGTERM"),
                         progressed=False)
    assert early.outcome.error_class is ErrorClass.INTERRUPTED


def test_a_time_limit_without_a_checkpoint_is_transient_and_says_what_to_raise() -> None:
    ending = slurm_ending(_job("TIMEOUT", code=None, sig=9), None)
    assert ending.outcome.error_class is ErrorClass.TRANSIENT
    assert "launcher.time_limit" in ending.outcome.message


@pytest.mark.parametrize("state", ["NODE_FAIL", "BOOT_FAIL"])
def test_a_lost_node_is_transient_without_a_ladder_rung(state: str) -> None:
    ending = slurm_ending(_job(state, code=None, sig=9), None)
    assert ending.outcome.error_class is ErrorClass.TRANSIENT and ending.outcome.case == 42
    assert "last checkpoint" in ending.outcome.message and "gpu-07" in ending.outcome.message


def test_a_vanished_job_without_a_report_is_transient_and_with_one_is_the_report() -> None:
    assert slurm_ending(None, None).outcome.error_class is ErrorClass.TRANSIENT
    assert slurm_ending(None, _report("done")).outcome.done


def test_preemption_is_an_interruption_not_charged() -> None:
    bare = slurm_ending(_job("PREEMPTED", code=None, sig=15), None)
    assert bare.outcome.error_class is ErrorClass.INTERRUPTED
    saved = slurm_ending(_job("PREEMPTED", code=18), _report("interrupted", "interrupted", stop="SIGTERM"))
    assert saved.outcome.error_class is ErrorClass.INTERRUPTED and "preempted" in saved.outcome.message


@pytest.mark.edge(24)
def test_out_of_memory_is_the_ram_rung_of_the_ladder() -> None:
    ending = slurm_ending(_job("OUT_OF_MEMORY", code=None, sig=125), None)
    assert ending.outcome.error_class is ErrorClass.OOM and ending.outcome.case == 24
    assert "launcher.mem" in ending.outcome.message


def test_cancelled_by_someone_else_is_held_with_that_reason() -> None:
    for report in (None, _report("interrupted", "interrupted", stop="SIGTERM")):
        ending = slurm_ending(_job("CANCELLED", code=None, sig=15), report)
        assert ending.hold_reason is not None and "someone else" in ending.hold_reason
        assert "release" in ending.hold_reason
    # A job that finished as the cancel came is done, not held.
    assert slurm_ending(_job("CANCELLED", code=0), _report("done")).outcome.done


def test_cancelled_by_us_is_our_stop() -> None:
    ending = slurm_ending(_job("CANCELLED", code=None, sig=15), None, stopped_by_us=True)
    assert ending.hold_reason is None and ending.outcome.error_class is ErrorClass.INTERRUPTED
    # Cancelled while still pending: Slurm says exit 0 with no signal, and no report was written.
    pending = slurm_ending(_job("CANCELLED", code=0), None, stopped_by_us=True)
    assert pending.hold_reason is None and pending.outcome.error_class is ErrorClass.INTERRUPTED


@pytest.mark.edge(70)
def test_our_watchdog_ending_it_is_the_hang() -> None:
    ending = slurm_ending(_job("CANCELLED", code=None, sig=9), None, hung_for_s=300.0)
    assert ending.outcome.error_class is ErrorClass.TRANSIENT and ending.outcome.case == 70


def test_no_report_falls_back_to_the_local_rules_on_the_exit_status() -> None:
    assert slurm_ending(_job("FAILED", code=1), None).outcome.error_class is ErrorClass.BUG
    killed = slurm_ending(_job("FAILED", code=None, sig=9), None)
    assert killed.outcome.error_class is ErrorClass.TRANSIENT
    assert slurm_ending(_job("FAILED", code=14), None).outcome.error_class is ErrorClass.TRANSIENT


def test_a_followed_again_attempt_began_from_the_checkpoint_written_before_it_started(tmp_path: Path) -> None:
    """The time-limit judgement above compares with the checkpoint the attempt began from; an
    engine restarted mid-attempt finds it from the attempt's start time (the store's), not 0, so a
    resumed attempt that wrote nothing new is not taken for progress."""
    folder = RunFolder(tmp_path / "run")
    started = time.time() - 100
    for step, age in ((2, 300), (4, 200), (6, 50)):
        path = folder.checkpoints / f"checkpoint-{step}"
        path.mkdir(parents=True)
        os.utime(path, (time.time() - age, time.time() - age))
    assert newest_checkpoint_step(folder) == 6
    assert newest_checkpoint_step(folder, before=started) == 4
    assert newest_checkpoint_step(folder, before=started - 1000) == 0
