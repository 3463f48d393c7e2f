"""Checks shared by the tests that train the real tiny model under the daemon."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

from trainconsole.engine import checkpoints as ckpt
from trainconsole.engine.events import read_all
from trainconsole.engine.layout import Layout

# Real worker runs: the watchdog floor must cover a save and the end of a job on a busy 2-core box.
REAL: dict[str, Any] = {"guards.hang_floor_s": 30.0, "guards.hang_multiple": 20.0}


def step_trail(layout: Layout, job_id: str) -> list[int]:
    return [e["step"] for e in read_all(layout.job_events(job_id))
            if e["type"] == "step" and isinstance(e.get("step"), int)]


def worst_step_loss(trail: list[int]) -> int:
    """The most steps ever redone after a restart: the highest step reached before a restart minus
    the step the next attempt resumed from (its first logged step minus one)."""
    worst = 0
    high = 0
    for prev, step in zip([0, *trail], trail, strict=False):
        if step <= prev:  # a new attempt started over from a checkpoint
            worst = max(worst, high - (step - 1))
        high = max(high, step)
    return worst


def assert_checkpoints_sound(layout: Layout) -> int:
    """The checkpoint a resume would take (the newest of each run) verifies in full. An older one
    may be left half-deleted by a kill during pruning (engine/checkpoints.py removes old ones in
    place); the resume scan skips and quarantines those, so they are reported, not failed."""
    count = 0
    for run_dir in layout.runs.iterdir():
        found = ckpt.list_checkpoints(run_dir / "checkpoints")
        if not found:
            continue
        newest = found[0][1]
        verdict = ckpt.verify(newest, fingerprint=None)
        assert isinstance(verdict, ckpt.Checkpoint), f"the newest checkpoint {newest} is corrupt: {verdict}"
        count += 1
        for _, path in found[1:]:
            older = ckpt.verify(path, fingerprint=None)
            if isinstance(older, ckpt.Checkpoint):
                count += 1
            else:
                warnings.warn(f"older checkpoint left incomplete (a kill while pruning?): {older}",
                              stacklevel=2)
    return count


def leftover_temp_files(layout: Layout) -> list[Path]:
    found = [p for p in layout.runs.rglob(".staging-*") if "quarantine" not in p.parts]
    found += list(layout.adapters.glob(".staging-*"))
    # quarantine/ holds what a worker set aside on purpose (evidence, never deleted); not temp files.
    found += [p for p in layout.runs.rglob("*.tmp") if "quarantine" not in p.parts]
    found += [p for p in layout.runs.rglob("quarantine/*staging-*")]  # partial saves must not pile up
    try:
        found += list(layout.tmp.iterdir())
    except FileNotFoundError:
        pass
    return found


def gone(pid: int | None) -> bool:
    """No such process, or only a zombie left for whoever adopted it."""
    if not pid:
        return True
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True
