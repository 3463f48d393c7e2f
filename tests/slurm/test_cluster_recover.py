"""A starting engine and the Slurm jobs an earlier one left (real cluster, real store): each
running job is followed again by its recorded id or found by its name, judged if it ended,
requeued if it never went out; strays are cancelled; nothing is submitted twice."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.queue.conftest import add
from tests.slurm.cluster import Cluster
from tests.slurm.jobs import fake_launcher, slurm_config, submit, wait_ended, wait_running
from trainconsole.engine.config import load_config, set_value
from trainconsole.engine.daemon.slurm.cluster import SlurmCluster
from trainconsole.engine.daemon.slurm.submit import job_id_from_name
from trainconsole.engine.errors import TransientError
from trainconsole.engine.store import Store

LONG = {"FAKE_STEPS": "100000", "FAKE_STEP_S": "0.1"}


def _ours(slurm: Cluster, tag: str) -> dict[str, list[tuple[int, str]]]:
    found: dict[str, list[tuple[int, str]]] = {}
    for j in slurm.jobs():
        owner = job_id_from_name(str(j["name"]), tag)
        if owner:
            found.setdefault(owner, []).append((int(j["job_id"]), str(j["job_state"])))
    return found


def test_a_restart_follows_judges_requeues_and_cancels(slurm: Cluster, workspace: Path, tmp_path: Path) -> None:
    config = workspace / "config.toml"
    for key, value in {"launcher.kind": "slurm", "launcher.gpus_per_job": 0, "launcher.cpus_per_job": 1,
                       "launcher.mem": "200M", "launcher.poll_s": 0.3}.items():
        set_value(config, key, value)
    cfg = load_config(config)
    layout = cfg.layout()
    layout.ensure()
    with Store.open(layout) as store:
        ids = [add(store, tmp_path, f"{n}.jsonl") for n in ("recorded", "unrecorded", "ended", "never", "stray")]
        recorded, unrecorded, ended, never, stray = ids
        for job_id in ids[:4]:
            store.start(job_id)
        # What an earlier engine left: submitted attempts, only some of them recorded.
        launcher = fake_launcher(slurm_config(), layout.queue)
        workers = {job_id: submit(launcher, layout.run_dir(job_id), job_id, LONG)
                   for job_id in (recorded, unrecorded, stray)}
        short = submit(launcher, layout.run_dir(ended), ended, {"FAKE_STEPS": "2"})
        store.set_slurm(recorded, workers[recorded].slurm_id)
        store.set_slurm(ended, short.slurm_id)
        for worker in workers.values():
            wait_running(worker)
        wait_ended(short)

        side = SlurmCluster(cfg)
        assert side.tag == launcher.tag
        found = side.recover(store, wait_s=5)

        attached = {job.id: worker.slurm_id for job, worker in found.attach}
        assert attached == {recorded: workers[recorded].slurm_id, unrecorded: workers[unrecorded].slurm_id}
        assert [(job.id, seen.state if seen else None) for job, seen in found.judge] == [(ended, "COMPLETED")]
        assert [job.id for job in found.requeue] == [never]
        assert found.cancelled == [workers[stray].slurm_id]  # the store has it queued, not running
        assert found.owned == {recorded, unrecorded, ended}
        assert store.require(unrecorded).slurm_id == workers[unrecorded].slurm_id  # recorded now
        assert store.require(recorded).node == slurm.node
        wait_ended(workers[stray])
        ours = _ours(slurm, side.tag)
        assert all(len(attempts) == 1 for attempts in ours.values())  # nothing submitted twice
        assert never not in ours


def test_a_silent_controller_at_start_stops_the_engine_rather_than_guess(slurm: Cluster, workspace: Path) -> None:
    config = workspace / "config.toml"
    set_value(config, "launcher.kind", "slurm")
    cfg = load_config(config)
    cfg.layout().ensure()
    with Store.open(cfg.layout()) as store:
        slurm.stop("slurmctld")
        try:
            with pytest.raises(TransientError, match="will not risk submitting one twice"):
                SlurmCluster(cfg).recover(store, wait_s=2)
        finally:
            slurm.start("slurmctld")
            slurm.wait_responding()
