"""The real worker as a Slurm job: the built-in model trains on the node and publishes its adapter,
the worker command being exactly the local launcher's."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.chatdata import arithmetic, write_jsonl
from tests.slurm.cluster import Cluster
from tests.slurm.jobs import CPU, report_of, slurm_config, wait_ended
from tests.worker.wutil import events_of, make_spec, new_workspace
from trainconsole.engine.daemon.launcher import LocalLauncher, worker_env
from trainconsole.engine.daemon.slurm.endings import slurm_ending
from trainconsole.engine.daemon.slurm.launcher import SlurmLauncher
from trainconsole.engine.daemon.slurm.submit import queue_tag


@pytest.mark.edge(14)
def test_a_job_trains_on_the_node_and_publishes_its_adapter(slurm: Cluster, tmp_path: Path,
                                                             shared_cache: Path) -> None:
    ws = new_workspace(tmp_path / "ws", shared_cache, training__max_steps=4, training__save_steps=2,
                       training__eval_fraction=0.0, guards__eval_samples=0)
    spec = make_spec(ws, "j0001", write_jsonl(ws / "data.jsonl", arithmetic(24)))
    launcher = SlurmLauncher(slurm_config(mem="2G"), CPU, queue_tag(ws / "queue"))
    assert launcher.command(spec) == LocalLauncher().command(spec)
    worker = launcher.submit("j0001", spec, worker_env(CPU, "data.jsonl"), spec.parent / "worker.log")
    assert wait_ended(worker, timeout=400) == 0, (spec.parent / "worker.log").read_text()[-3000:]
    assert worker.node == slurm.node
    report = report_of(spec.parent)
    ending = slurm_ending(worker.job, report)
    assert ending.outcome.done and report is not None and report.global_step == 4
    adapter = Path(str(report.adapter))
    assert adapter.is_dir() and (adapter / "adapter_model.safetensors").is_file()
    assert (ws / "adapters" / "latest").exists()
    assert (spec.parent / "worker.log").is_file()  # Slurm's --output: the run folder, as locally
    started = [e for e in events_of(spec.parent, "log") if "started" in str(e.get("message"))]
    assert started, "the worker's own events reach the run folder on the shared filesystem"
