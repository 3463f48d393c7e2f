"""Reading the adapters folder, torch-free: what ``trainconsole adapters``, ``show`` and the console
list, and what the worker's publishing (``trainconsole.engine.train.lineage``) builds on.

Layout (``paths.adapters``): each finished job's adapter in ``<NNNN>-<job>/`` (a PEFT adapter
folder plus ``lineage.json`` and the checkpoint manifest, written last, so a folder without a
manifest is not an adapter yet). ``lineage.json`` names the job, its lineage, the parent adapter,
the step, the eval loss and the base model's fingerprint.

Lineages: each has its own pointer to its newest adapter, a relative symlink swapped atomically:
``latest`` for the lineage ``main``, ``latest-<name>`` for any other. So
``PeftModel.from_pretrained(base, "adapters/latest-lr-sweep.1")`` loads a lineage's newest.

Upgrading from a version without lineages changes nothing on disk: the old ``adapters/latest``
is exactly the pointer of ``main`` (the lineage every job belonged to), and an adapter whose
``lineage.json`` names no lineage belongs to ``main``. Jobs queued before the upgrade continue
``main``, as they would have continued ``latest``."""

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
# Safe as a file name, in a symlink's name, a TensorBoard run and a shell word; '=' and ','
# let a sweep name its lineages by their values (chat.learning_rate=0.0001).
LINEAGE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._=,+-]{0,99}$")


def check_lineage_name(name: str) -> str | None:
    """Why ``name`` cannot name a lineage, or None when it can."""
    if not LINEAGE_NAME.match(name):
        return ("a lineage name is 1-100 characters: letters, digits and . _ = , + - (not first), e.g. "
                "main or support-v2")
    return None


def pointer_name(lineage: str) -> str:
    return "latest" if lineage == MAIN else f"latest-{lineage}"


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


def resolve_latest(adapters: Path, lineage: str = MAIN) -> Path | None:
    """The folder a lineage's pointer names, or None when the lineage has no adapter yet."""
    pointer = adapters / pointer_name(lineage)
    if pointer.is_symlink():
        return adapters / os.readlink(pointer)
    if pointer.is_dir():
        return pointer
    if pointer.is_file():  # a pointer written by hand as a file holding the folder name
        name = pointer.read_text().strip()
        return adapters / name if name else None
    return None


@dataclass(frozen=True)
class Lineage:
    name: str
    latest: Adapter | None  # what its pointer names (None: no adapter yet, or a dangling pointer)
    adapters: tuple[Adapter, ...]  # oldest first
    base_model: str | None


def lineages(adapters: Path, found: list[Adapter] | None = None) -> list[Lineage]:
    """Every lineage that has an adapter, ``main`` first, then by name."""
    found = list_adapters(adapters) if found is None else found
    names = sorted({a.lineage for a in found}, key=lambda n: (n != MAIN, n))
    out = []
    for name in names:
        own = tuple(a for a in found if a.lineage == name)
        target = resolve_latest(adapters, name)
        latest = next((a for a in own if target is not None and a.path == target), None)
        if latest is None and target is not None and target.is_dir():
            latest = read_adapter(target)
        out.append(Lineage(name, latest, own, (latest or own[-1]).base_model))
    return out


def find(adapters: Path, given: str) -> Path | None:
    """An adapter named the way an operator would: a folder name (``0003-j0007``), a lineage name
    (its newest), ``latest``/``latest-<lineage>``, or a path. None when nothing matches."""
    candidates = [adapters / given] if "/" not in given else []
    if check_lineage_name(given) is None:
        latest = resolve_latest(adapters, given)
        if latest is not None:
            candidates.append(latest)
    candidates.append(Path(given).expanduser())
    for path in candidates:
        if path.is_dir() and (path / "adapter_config.json").is_file():
            return Path(os.path.realpath(path))
    return None
