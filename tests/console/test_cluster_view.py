"""What the console shows of a Slurm cluster: each job's Slurm id and node (from the store), and a
"cluster" line in the resources panel (from the engine's resource events, sampled with sinfo)."""

from __future__ import annotations

from pathlib import Path

from tests.console.test_client import add
from tests.console.test_widgets_text import sample
from trainconsole.console.client import WorkspaceClient
from trainconsole.console.snapshot import JobRow
from trainconsole.console.widgets.gauges import render_gauges
from trainconsole.console.widgets.job_detail import describe
from trainconsole.engine.config import load_config
from trainconsole.engine.events import EventLog
from trainconsole.engine.store import Store


def test_the_resources_panel_starts_with_the_cluster_line() -> None:
    lines = [t.plain for t in render_gauges(sample(), "", {}, 40, cluster="4 nodes, 1 idle, 3 allocated")]
    assert lines[0] == "cluster 4 nodes, 1 idle, 3 allocated"
    assert [t.plain for t in render_gauges(sample(), "", {}, 40)][0].startswith("no GPU")  # local: as before


def test_the_job_detail_names_the_slurm_job_and_node() -> None:
    row = JobRow(id="j0001", name="a.jsonl", priority="normal", status="running", attempts=1, slurm_id=4312,
                 node="gpu-07")
    assert "slurm job 4312 on gpu-07" in describe(row)
    assert "slurm job" not in describe(JobRow(id="j0002", name="b", priority="normal", status="queued", attempts=0))


def test_the_client_carries_node_slurm_id_and_the_cluster_line(workspace: Path) -> None:
    cfg = load_config(workspace / "config.toml")
    layout = cfg.layout()
    layout.ensure()
    job_id = add(layout, "a.jsonl")
    with Store.open(layout) as store:
        store.start(job_id)
        store.set_slurm(job_id, 4312, "gpu-07")
    with EventLog(layout.engine_events) as log:
        log.emit("resource", ram_total_mb=1.0, cluster="2 nodes, 0 idle, 2 allocated")
    snap = WorkspaceClient(cfg).snapshot(None, 60)
    (row,) = snap.jobs
    assert (row.slurm_id, row.node, row.reason) == (4312, "gpu-07", "on gpu-07, slurm job 4312")
    assert snap.cluster == "2 nodes, 0 idle, 2 allocated"
    with Store.open(layout) as store:
        store.set_slurm(job_id, 4313, None, "Priority")
    (row,) = WorkspaceClient(cfg).snapshot(None, 60).jobs
    assert row.reason == "pending in Slurm (Priority)"
