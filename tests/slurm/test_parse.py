"""Slurm's JSON as 22.05 prints it (fields trimmed from a real ``squeue --json``/``sinfo --json`` on
the test cluster) and as the later data parsers print it; no Slurm needed."""

from __future__ import annotations

import json

import pytest

from trainconsole.engine.daemon.slurm.state import (
    SlurmError,
    gres_gpus,
    parse_scontrol_job,
    parse_sinfo,
    parse_squeue,
    partitions_of,
)

META = {"plugin": {"type": "openapi/v0.0.38", "name": "Slurm OpenAPI v0.0.38"},
        "Slurm": {"version": {"major": 22, "micro": 8, "minor": 5}, "release": "22.05.8"}}


def _job(**kw: object) -> dict[str, object]:
    base: dict[str, object] = {
        "job_id": 7, "name": "trainconsole-0a1b2c3d-j0001", "job_state": "RUNNING", "state_reason": "None",
        "nodes": "vm", "batch_host": "vm", "exit_code": 0, "derived_exit_code": 0, "start_time": 1796394635,
        "end_time": 1796394695, "time_limit": 1, "restart_cnt": 0, "flags": ["JOB_WAS_RUNNING"]}
    base.update(kw)
    return base


def _squeue(*jobs: dict[str, object], errors: list[object] | None = None) -> str:
    return json.dumps({"meta": META, "errors": errors or [], "jobs": list(jobs)})


def test_a_running_job() -> None:
    job = parse_squeue(_squeue(_job()))[7]
    assert (job.state, job.node, job.exit_code, job.signal) == ("RUNNING", "vm", 0, None)
    assert job.active and job.running and job.time_limit_min == 1


@pytest.mark.parametrize(("raw", "code", "sig"), [
    (4608, 18, None),  # FAILED NonZeroExitCode: the worker's interrupted code, 18 << 8
    (15, None, 15),  # CANCELLED: SIGTERM
    (9, None, 9),  # kill -9 on the node
    (0, 0, None),
])
def test_the_raw_wait_status_is_split(raw: int, code: int | None, sig: int | None) -> None:
    job = parse_squeue(_squeue(_job(job_state="FAILED", exit_code=raw)))[7]
    assert (job.exit_code, job.signal) == (code, sig) and not job.active


def test_the_newer_data_parser_shape() -> None:
    newer = _job(job_state=["TIMEOUT"], time_limit={"set": True, "infinite": False, "number": 60},
                 start_time={"set": True, "infinite": False, "number": 1796394635},
                 exit_code={"status": ["SIGNALED"], "return_code": {"set": True, "number": 0},
                            "signal": {"id": {"set": True, "number": 15}, "name": "TERM"}})
    job = parse_squeue(_squeue(newer))[7]
    assert (job.state, job.time_limit_min, job.signal, job.start_time) == ("TIMEOUT", 60, 15, 1796394635)
    exited = _job(exit_code={"status": ["EXITED"], "return_code": {"set": True, "number": 18},
                             "signal": {"id": {"set": False, "number": 0}, "name": ""}})
    assert parse_squeue(_squeue(exited))[7].exit_code == 18


def test_a_controller_that_does_not_answer_is_an_error_not_an_empty_queue() -> None:
    # What 22.05's squeue --json prints, with exit status 0, while slurmctld restarts.
    down = _squeue(errors=[{"description": "Failed while looking for jobs", "error_number": -1,
                            "error": "Unspecified error", "source": "slurm_load_jobs"}])
    with pytest.raises(SlurmError, match="did not answer"):
        parse_squeue(down)
    with pytest.raises(SlurmError, match="not JSON"):
        parse_squeue("slurm_load_jobs error: Unable to contact slurm controller")


def test_sinfo_counts_nodes_by_what_they_can_do() -> None:
    nodes = [{"name": "a", "state": "idle", "state_flags": [], "gres": "gpu:a100:4(S:0-1)", "partitions": ["gpu"]},
             {"name": "b", "state": "mixed", "state_flags": [], "gres": "gpu:4", "partitions": ["gpu", "long"]},
             {"name": "c", "state": "allocated", "state_flags": [], "gres": ""},
             {"name": "d", "state": "idle", "state_flags": ["DRAIN"], "gres": ""},
             {"name": "e", "state": ["DOWN", "NOT_RESPONDING"], "gres": "(null)"}]
    text = json.dumps({"meta": META, "errors": [], "nodes": nodes})
    summary = parse_sinfo(text)
    assert (summary.nodes, summary.idle, summary.allocated, summary.unavailable, summary.gpus) == (5, 1, 2, 2, 8)
    assert summary.line() == "5 nodes, 1 idle, 2 allocated, 2 down/drained, 8 GPUs"
    assert partitions_of(text) == {"gpu", "long"}


@pytest.mark.parametrize(("gres", "n"), [("gpu:8", 8), ("gpu:h100:2,gpu:a100:2", 4), ("shard:8", 0), ("", 0)])
def test_gres_gpus(gres: str, n: int) -> None:
    assert gres_gpus(gres) == n


def test_an_scontrol_line() -> None:
    line = ("JobId=1 JobName=tc-a UserId=root(0) GroupId=root(0) MCS_label=N/A Priority=4294901759 Nice=0 "
            "Account=(null) QOS=(null) JobState=FAILED Reason=NonZeroExitCode Dependency=(null) Requeue=1 "
            "Restarts=0 BatchFlag=1 Reboot=0 ExitCode=18:0 RunTime=00:00:20 NodeList=vm BatchHost=vm "
            "Command=/tmp/a dir/job.sh WorkDir=/tmp/a dir StdOut=/tmp/a dir/out.log Power= \n")
    job = parse_scontrol_job(line)
    assert job is not None
    assert (job.slurm_id, job.state, job.reason, job.exit_code, job.signal, job.node) == (
        1, "FAILED", "NonZeroExitCode", 18, None, "vm")
    killed = parse_scontrol_job("JobId=2 JobName=x JobState=CANCELLED Reason=None ExitCode=0:15 NodeList=vm")
    assert killed is not None and (killed.exit_code, killed.signal) == (None, 15)
