"""The restart plan: follow what runs, judge what ended, requeue what never went out, cancel
what no running job owns; never a second submission."""

from __future__ import annotations

from trainconsole.engine.daemon.slurm.reattach import plan
from trainconsole.engine.daemon.slurm.state import SlurmJob
from trainconsole.engine.daemon.slurm.submit import job_name

TAG = "0a1b2c3d"


def _sj(slurm_id: int, job_id: str, state: str, tag: str = TAG) -> SlurmJob:
    return SlurmJob(slurm_id=slurm_id, name=job_name(tag, job_id), state=state, reason="None", node="n1",
                    exit_code=0, signal=None, start_time=None, end_time=None, time_limit_min=None)


def _index(*jobs: SlurmJob) -> dict[int, SlurmJob]:
    return {j.slurm_id: j for j in jobs}


def test_a_recorded_running_job_is_followed_again() -> None:
    p = plan({"j0001": 11}, _index(_sj(11, "j0001", "RUNNING")), TAG)
    assert p.attach == {"j0001": 11} and not (p.judge or p.requeue or p.cancel)


def test_a_job_submitted_but_not_recorded_is_found_by_its_name() -> None:
    p = plan({"j0001": None}, _index(_sj(12, "j0001", "PENDING")), TAG)
    assert p.attach == {"j0001": 12} and not p.requeue


def test_one_that_ended_meanwhile_is_judged_and_a_forgotten_one_by_its_report() -> None:
    ended = _sj(11, "j0001", "COMPLETED")
    p = plan({"j0001": 11, "j0002": 13}, _index(ended), TAG)
    assert p.judge == {"j0001": ended, "j0002": None} and not p.attach and not p.requeue
    unrecorded = plan({"j0003": None}, _index(_sj(14, "j0003", "FAILED")), TAG)
    assert unrecorded.judge["j0003"] is not None and unrecorded.judge["j0003"].slurm_id == 14


def test_never_submitted_is_requeued() -> None:
    p = plan({"j0001": None}, _index(_sj(20, "j0001", "RUNNING", tag="ffffffff")), TAG)
    assert p.requeue == ["j0001"] and not p.cancel  # another queue's job is not ours to touch


def test_stray_attempts_are_cancelled_never_doubled() -> None:
    p = plan({"j0001": 11}, _index(_sj(11, "j0001", "RUNNING"), _sj(15, "j0001", "PENDING"),
                                   _sj(16, "j0009", "RUNNING"), _sj(17, "j0008", "COMPLETED")), TAG)
    assert p.attach == {"j0001": 11} and sorted(p.cancel) == [15, 16]
