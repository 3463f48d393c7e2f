"""Jobs as experiments through the real daemon and worker on the built-in model: per-job settings
fixed at queue time (a later config.toml edit changes nothing; a retry keeps them), two lineages
from one queue, and a sweep of three values in three new lineages."""

from __future__ import annotations

import json
import signal
from pathlib import Path
from typing import Any

import pytest

from tests.daemon.harness import FAST, TINY, chat_lines, configure, start_daemon, store_jobs, wait_for
from tests.daemon.realrun import REAL
from tests.helpers import run_cli
from trainconsole.engine.config import load_config, set_value
from trainconsole.engine.events import read_all


def _data(ws: Path, name: str) -> Path:
    path = ws / name
    path.write_text(chat_lines(16, name))
    return path


def _cli(config: Path, *args: str) -> Any:
    proc = run_cli("--config", str(config), *args)
    assert proc.returncode == 0, proc.stderr
    return proc


def _first_lr(layout: Any, job_id: str) -> float:
    return next(e["lr"] for e in read_all(layout.job_events(job_id)) if e["type"] == "step")


def _run_all(config: Path, count: int) -> None:
    daemon = start_daemon(config)
    try:
        wait_for(lambda: sum(j.status in ("done", "failed") for j in store_jobs(config)) == count,
                 240 * count, f"{count} jobs finished")
    finally:
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(120)


@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_two_learning_rates_in_two_lineages_from_one_queue(workspace: Path, tiny_model: Path) -> None:
    config = configure(workspace, {**FAST, **TINY, **REAL, "training.max_steps": 2,
                                   "training.lr_scheduler": "constant"})
    layout = load_config(config).layout()
    _cli(config, "add", str(_data(workspace, "a.jsonl")), "--lineage", "alpha",
         "--set", "training.learning_rate=0.001")
    _cli(config, "add", str(_data(workspace, "b.jsonl")), "--lineage", "beta", "--new-lineage",
         "--set", "training.learning_rate=0.003", "--set", "lora.r=4")
    _cli(config, "add", str(_data(workspace, "c.jsonl")), "--set", "training.learning_rate=0.002")
    _cli(config, "cancel", "j0003")
    # An edit of config.toml after queueing changes no queued job.
    set_value(config, "training.learning_rate", 0.0005)
    set_value(config, "lora.r", 16)
    _cli(config, "retry", "j0003")  # a retry keeps the job's own settings
    _cli(config, "hold", "j0003")  # (not trained here: two jobs are enough for what follows)
    a, b, c = store_jobs(config)
    assert (a.lineage, b.lineage, c.lineage) == ("alpha", "beta", "main")
    assert a.experiment.settings["training"]["learning_rate"] == 0.001
    assert b.experiment.settings["training"]["learning_rate"] == 0.003 and b.experiment.settings["lora"]["r"] == 4
    assert a.experiment.settings["lora"]["r"] == 8  # config.toml's value when it was queued
    assert c.experiment.settings["training"]["learning_rate"] == 0.002 and c.status == "held"

    _run_all(config, 2)
    a, b, _ = store_jobs(config)
    assert a.status == b.status == "done", (a.error, b.error)
    # The workers trained with the stored rates (constant schedule: the rate of every step).
    assert _first_lr(layout, a.id) == 0.001 and _first_lr(layout, b.id) == 0.003
    for job, lineage in ((a, "alpha"), (b, "beta")):
        assert job.adapter and Path(job.adapter).is_dir()
        meta = json.loads((Path(job.adapter) / "lineage.json").read_text())
        assert meta["lineage"] == lineage and meta["job_id"] == job.id
        assert (layout.adapters / f"latest-{lineage}").resolve() == Path(job.adapter).resolve()
    adapter_config = json.loads((Path(b.adapter or "") / "adapter_config.json").read_text())
    assert adapter_config["r"] == 4  # beta's own lora.r, not config.toml's 8 or 16
    status = json.loads(_cli(config, "status", "--json").stdout)
    rows = {j["id"]: j for j in status["jobs"]}
    assert rows[a.id]["lineage"] == "alpha" and rows[a.id]["settings"]["training"]["learning_rate"] == 0.001
    assert rows[a.id]["adapter"] == a.adapter and rows[a.id]["last_loss"] is not None
    shown = json.loads(_cli(config, "show", b.id, "--json").stdout)["job"]
    assert shown["lineage"] == "beta" and shown["settings"]["lora"]["r"] == 4 and shown["start_from"] == "base"
    listed = json.loads(_cli(config, "adapters", "--json").stdout)
    assert {g["name"] for g in listed["lineages"]} == {"alpha", "beta"}
    # A job whose base model differs from its lineage's adapter is refused, both named.
    other = workspace / "other-model"
    other.mkdir()
    refused = run_cli("--config", str(config), "add", str(_data(workspace, "d.jsonl")), "--lineage", "alpha",
                      "--set", f"model.base_model={other}")
    assert refused.returncode == 1
    assert "builtin:tiny-chat" in refused.stderr and str(other) in refused.stderr and "alpha" in refused.stderr


@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_a_sweep_of_three_values_is_three_jobs_in_three_new_lineages(workspace: Path, tiny_model: Path) -> None:
    config = configure(workspace, {**FAST, **TINY, **REAL, "training.max_steps": 2})
    added = _cli(config, "add", str(_data(workspace, "chat.jsonl")),
                 "--sweep", "training.learning_rate=1e-4,2e-4,5e-4")
    assert added.stdout.count("queued") == 3
    jobs = store_jobs(config)
    assert [j.lineage for j in jobs] == ["chat.learning_rate=0.0001", "chat.learning_rate=0.0002",
                                         "chat.learning_rate=0.0005"]
    assert {j.experiment.sweep for j in jobs} == {"chat"}
    assert [j.experiment.settings["training"]["learning_rate"] for j in jobs] == [1e-4, 2e-4, 5e-4]
    _run_all(config, 3)
    assert [j.status for j in store_jobs(config)] == ["done"] * 3
    listed = json.loads(_cli(config, "adapters", "--json").stdout)
    assert len(listed["lineages"]) == 3 and len(listed["adapters"]) == 3
    assert {a["lineage"] for a in listed["adapters"]} == {j.lineage for j in jobs}
