"""Mirroring a job's metrics into the libraries operators already read (``report.to``): the
Trainer's own ``report_to`` integrations, one run per job named ``<job>-<lineage>``.

What each gets, and where (set through the libraries' documented environment variables, only
where the operator has not set them for the engine already):
- tensorboard: event files in ``<runs>/tensorboard/<job>-<lineage>/``, so
  ``tensorboard --logdir runs/tensorboard`` compares every job (a sweep side by side);
- wandb: offline (``WANDB_MODE=offline``) into the job's run folder, run id fixed per job so a
  restarted worker continues the same run; ``wandb sync`` uploads it later, or set
  ``WANDB_MODE=online`` in the engine's environment;
- trackio: a local project ``trainconsole``; no Space is created.

Train loss reaches them from our own step hook (``Hooks.end_step``) at ``training.logging_steps``,
through the callbacks' ``on_log``: the Trainer's logging stays off, so there is no second host
sync per step and the Trainer's log history does not grow with the run. Evaluations reach them
through the Trainer's own ``evaluate``. A package that is missing costs one alert, not the job.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import MutableMapping
from dataclasses import dataclass
from pathlib import Path

from trainconsole.engine.events import EventLog
from trainconsole.engine.reporters import PACKAGES, installed, missing_reporters

PROJECT = "trainconsole"
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


@dataclass(frozen=True)
class Reporting:
    report_to: tuple[str, ...]  # what the Trainer gets (installed ones only); empty: none
    run_name: str

    @property
    def active(self) -> bool:
        return bool(self.report_to)


def run_name(job_id: str, lineage: str) -> str:
    return _UNSAFE.sub("_", f"{job_id}-{lineage}")


def tensorboard_dir(runs: Path, job_id: str, lineage: str) -> Path:
    """Where a job's TensorBoard event files go (also what ``trainconsole show`` names)."""
    return runs / "tensorboard" / run_name(job_id, lineage)


def setup(wanted: list[str], *, job_id: str, lineage: str, run_dir: Path, runs: Path, events: EventLog,
          env: MutableMapping[str, str] | None = None) -> Reporting:
    """Decide the ``report_to`` list and prepare each library's environment (in this process)."""
    env = os.environ if env is None else env
    name = run_name(job_id, lineage)
    chosen: list[str] = []
    for reporter in wanted:
        if reporter not in PACKAGES:
            continue
        if not installed(reporter):
            for line in missing_reporters([reporter]):
                events.alert(None, line, severity="warning", job_id=job_id, key=f"reporter-missing-{reporter}")
            continue
        chosen.append(reporter)
    if "tensorboard" in chosen:
        folder = tensorboard_dir(runs, job_id, lineage)
        folder.mkdir(parents=True, exist_ok=True)
        env["TENSORBOARD_LOGGING_DIR"] = str(folder)
    if "wandb" in chosen:
        env.setdefault("WANDB_MODE", "offline")
        env.setdefault("WANDB_DIR", str(run_dir))
        env.setdefault("WANDB_PROJECT", PROJECT)
        env.setdefault("WANDB_SILENT", "true")
        # One run per job across worker restarts; the queue's path keeps two queues' j0001 apart.
        tag = hashlib.sha256(os.fsencode(run_dir.absolute())).hexdigest()[:8]
        env["WANDB_RUN_ID"] = f"{name}-{tag}"
        env["WANDB_RESUME"] = "allow"
    return Reporting(tuple(chosen), name)
