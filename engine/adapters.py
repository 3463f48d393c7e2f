"""Reading the adapters folder, torch-free: what ``trainconsole adapters``, ``show`` and the console
list, and what the worker's publishing (``trainconsole.engine.train.lineage``) builds on.

Layout (``paths.adapters``): each finished job's adapter in ``<NNNN>-<job>/`` (a PEFT adapter
folder plus ``lineage.json`` and the checkpoint manifest, written last, so a folder without a
manifest is not an adapter yet). ``lineage.json`` names the job, the parent adapter, the step, the
eval loss and the base model's fingerprint."""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

LINEAGE_FILE = "lineage.json"
MANIFEST = "manifest.json"  # trainconsole.engine.checkpoints.MANIFEST, sealed last
MAIN = "main"
NUMBERED = re.compile(r"^(\d+)-(.+)$")


@dataclass(frozen=True)
class Adapter:
    name: str  # the folder's name, e.g. 0003-j0007
    path: Path
    number: int
    job_id: str
    lineage: str
    parent: str | None
    step: int | None
    eval_loss: float | None
    created_at: float | None
    base_model: str | None


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if value == value else None  # NaN is no loss


def read_adapter(path: Path) -> Adapter | None:
    """The adapter in ``path``, or None when the folder is no sealed adapter of ours."""
    match = NUMBERED.match(path.name)
    if match is None or not (path / MANIFEST).is_file():
        return None
    try:
        meta = json.loads((path / LINEAGE_FILE).read_bytes())
    except (OSError, ValueError):
        meta = {}
    if not isinstance(meta, dict):
        meta = {}
    base = meta.get("base")
    step = meta.get("global_step")
    parent = meta.get("parent")
    lineage = meta.get("lineage")
    return Adapter(
        name=path.name, path=path, number=int(match.group(1)), job_id=str(meta.get("job_id") or match.group(2)),
        lineage=lineage if isinstance(lineage, str) and lineage else MAIN,
        parent=parent if isinstance(parent, str) else None,
        step=step if isinstance(step, int) and not isinstance(step, bool) else None,
        eval_loss=_number(meta.get("eval_loss")), created_at=_number(meta.get("created_at")),
        base_model=str(base.get("name")) if isinstance(base, dict) and base.get("name") else None)


def list_adapters(adapters: Path) -> list[Adapter]:
    """Every sealed adapter, oldest first."""
    try:
        entries = list(os.scandir(adapters))
    except OSError:
        return []
    found = [read_adapter(Path(e.path)) for e in entries
             if NUMBERED.match(e.name) and e.is_dir(follow_symlinks=False)]
    return sorted((a for a in found if a is not None), key=lambda a: a.number)


def published_for(adapters: Path, job_id: str) -> Path | None:
    """The adapter this job published, if it did (a rerun after publishing must not publish twice)."""
    try:
        names = sorted(os.listdir(adapters))
    except OSError:
        return None
    for name in names:
        match = NUMBERED.match(name)
        if match and match.group(2) == job_id and (adapters / name / MANIFEST).is_file():
            return adapters / name
    return None


def resolve_latest(adapters: Path) -> Path | None:
    """The folder ``latest`` points at, or None when there is no adapter yet."""
    pointer = adapters / "latest"
    if pointer.is_symlink():
        return adapters / os.readlink(pointer)
    if pointer.is_dir():
        return pointer
    if pointer.is_file():  # a pointer written by hand as a file holding the folder name
        name = pointer.read_text().strip()
        return adapters / name if name else None
    return None
