"""report.to through the real daemon and worker on the built-in model: the Trainer's own
TensorBoard integration receives every logged step's loss and each evaluation, read back with
TensorBoard's event reader; a named library that is not installed costs one alert, not the job."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from tests.daemon.harness import FAST, TINY, configure, drop, start_daemon, store_jobs, wait_for
from tests.daemon.realrun import REAL
from trainconsole.engine.config import load_config
from trainconsole.engine.events import read_all
from trainconsole.engine.reporters import installed


def _scalars(folder: Path, tag: str) -> dict[int, float]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(folder))
    acc.Reload()
    if tag not in acc.Tags()["scalars"]:
        return {}
    return {s.step: s.value for s in acc.Scalars(tag)}


def test_tensorboard_event_files_hold_each_steps_loss(workspace: Path, tiny_model: Path) -> None:
    if installed("trackio"):
        pytest.skip("trackio is installed here; this test needs a named library that is missing")
    config = configure(workspace, {**FAST, **TINY, **REAL, "training.max_steps": 4,
                                   "training.eval_fraction": 0.25, "training.eval_steps": 2,
                                   "report.to": ["tensorboard", "trackio"]})
    layout = load_config(config).layout()
    drop(workspace, "a.jsonl")
    daemon = start_daemon(config)
    try:
        wait_for(lambda: bool(store_jobs(config)) and store_jobs(config)[0].status in ("done", "failed"),
                 300, "job finished")
        job = store_jobs(config)[0]
        assert job.status == "done", job.error
        events = list(read_all(layout.job_events(job.id)))
        steps = {e["step"]: e["loss"] for e in events if e["type"] == "step"}
        evals = {e["step"]: e["eval_loss"] for e in events if e["type"] == "eval"}
        folder = layout.runs / "tensorboard" / f"{job.id}-main"
        assert list(folder.glob("events.out.tfevents.*")), sorted(p.name for p in layout.runs.iterdir())
        loss = _scalars(folder, "train/loss")
        assert sorted(loss) == sorted(steps) == [1, 2, 3, 4]
        for step, value in steps.items():
            assert loss[step] == pytest.approx(value, rel=1e-5)
        eval_loss = _scalars(folder, "eval/loss")
        assert eval_loss and set(eval_loss) <= set(evals)
        for step, value in eval_loss.items():
            assert value == pytest.approx(evals[step], rel=1e-5)
        # The missing library: one line naming it and the extra that provides it, at engine start
        # and in the job's log; the job trained all the same.
        engine_alerts = [e["message"] for e in read_all(layout.engine_events) if e["type"] == "alert"]
        job_alerts = [e["message"] for e in events if e["type"] == "alert"]
        for alerts in (engine_alerts, job_alerts):
            said = [m for m in alerts if "trackio" in m]
            assert len(said) == 1 and "trainconsole[trackio]" in said[0], alerts
    finally:
        if daemon.poll() is None:
            daemon.send_signal(signal.SIGTERM)
            daemon.wait(120)
