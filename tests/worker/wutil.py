"""Helpers for the worker's tests: a config tuned for short runs, chat data the tiny model can
learn, and ways to run a job in-process or as a real worker process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.chatdata import arithmetic, write_jsonl  # noqa: F401 - older imports of them from here
from trainconsole.engine.config import set_value
from trainconsole.engine.events import read_all

ROOT = Path(__file__).resolve().parents[2]

# Short runs: a few dozen steps at most on the built-in model.
FAST = {
    "training.max_steps": 8,
    "training.batch_size": 4,
    "training.max_length": 128,
    "training.save_steps": 4,
    "training.eval_steps": 4,
    "training.eval_fraction": 0.1,
    "training.learning_rate": 0.005,
    "training.warmup_steps": 0.0,
    "hardware.device": "cpu",
    "guards.eval_samples": 4,
    "guards.min_accuracy": 0.0,
}


def make_spec(ws: Path, job_id: str, data: Path, overrides: dict[str, Any] | None = None) -> Path:
    from trainconsole.engine.runfiles import write_spec

    return write_spec(ws / "runs" / job_id, job_id=job_id, data_file=data, config=ws / "config.toml",
                      adapters_dir=ws / "adapters", overrides=overrides)


def run_inprocess(spec: Path, fault: str | None = None) -> tuple[int, dict[str, Any]]:
    """The worker's own entry, in this process (saves a torch import per test)."""
    from trainconsole.engine.train.worker import run

    old = os.environ.pop("TRAINCONSOLE_FAULT", None)
    if fault:
        os.environ["TRAINCONSOLE_FAULT"] = fault
    try:
        code = run(spec)
    finally:
        os.environ.pop("TRAINCONSOLE_FAULT", None)
        if old is not None:
            os.environ["TRAINCONSOLE_FAULT"] = old
    return code, json.loads((spec.parent / "report.json").read_text())


def spawn(spec: Path, fault: str | None = None, **kw: Any) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if k != "TRAINCONSOLE_FAULT"}
    if fault:
        env["TRAINCONSOLE_FAULT"] = fault
    return subprocess.Popen([sys.executable, "-m", "trainconsole.engine.train.worker", str(spec)], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, **kw)


def events_of(run_dir: Path, type_: str | None = None) -> list[dict[str, Any]]:
    return [e for e in read_all(run_dir / "events.jsonl") if type_ is None or e["type"] == type_]


def losses(run_dir: Path) -> dict[int, float]:
    """The last logged loss of each step (a resumed run logs some steps twice)."""
    return {e["step"]: e["loss"] for e in events_of(run_dir, "step")}


def alerts(run_dir: Path) -> list[dict[str, Any]]:
    return events_of(run_dir, "alert")


def new_workspace(root: Path, cache: Path, **overrides: Any) -> Path:
    """A workspace folder with a FAST config (plus overrides) sharing the session's model cache."""
    from trainconsole.engine.config import default_config_text

    root.mkdir(parents=True, exist_ok=True)
    cfg = root / "config.toml"
    cfg.write_text(default_config_text().replace('cache = ".cache"', f'cache = "{cache}"'))
    for key, value in {**FAST, **{k.replace("__", "."): v for k, v in overrides.items()}}.items():
        set_value(cfg, key, value)
    return root
