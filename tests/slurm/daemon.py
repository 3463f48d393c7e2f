"""The supervisor with launcher.kind = "slurm" on the test cluster: in this process, driven tick by
tick (tests/daemon/harness.py), its workers the torch-free fake worker submitted through Slurm."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tests.daemon.harness import Harness
from tests.slurm.jobs import CommandLauncher, fake_worker
from trainconsole.engine.daemon.slurm.launcher import SlurmWorker
from trainconsole.engine.daemon.slurm_runs import SlurmRuns

SLURM: dict[str, Any] = {
    "launcher.kind": "slurm",
    "launcher.gpus_per_job": 0,
    "launcher.cpus_per_job": 1,
    "launcher.mem": "200M",
    "launcher.poll_s": 0.3,
    "launcher.warn_before_limit_s": 0,
}


def slurm_runs(h: Harness) -> SlurmRuns:
    assert h.sup.slurm is not None
    return h.sup.slurm


def slurm_harness(ws: Path, values: Mapping[str, Any] | None = None) -> Harness:
    """The engine's own Slurm launcher, its worker command swapped for the fake worker's."""
    h = Harness(ws, {**SLURM, **(values or {})})
    cluster = slurm_runs(h).cluster
    cluster.launcher = CommandLauncher(h.cfg.launcher, h.layout.queue, fake_worker, tracker=cluster.tracker)
    return h


def slurm_worker(h: Harness, job_id: str) -> SlurmWorker | None:
    run = h.sup.running.get(job_id)
    return run.worker if run is not None and isinstance(run.worker, SlurmWorker) else None
