"""A job as an experiment, decided when it is queued: its settings (``--set``, ``--settings``, an
inbox sidecar), its lineage (``--lineage``, ``--new-lineage``, ``--from-adapter``), a sweep
(``--sweep KEY=V1,V2,...``, cartesian over several: one job per point, each in its own new
lineage named ``<sweep>.<key>=<value>``, so consoles group them by ``sweep``) and a dependency
(``--after JOB``). Everything is checked here, before anything is queued, and refused with the
key, the lineage or the adapter named: bad settings, an engine-wide key, a lineage name that is
taken for a new one, a base model that differs from the lineage's adapter."""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trainconsole.engine.adapters import (
    MAIN,
    check_lineage_name,
    find,
    list_adapters,
    read_adapter,
    resolve_latest,
)
from trainconsole.engine.config import Config
from trainconsole.engine.config.jobsettings import (
    Settings,
    assignments,
    parse_assignment,
    read_overlay,
    resolve,
)
from trainconsole.engine.errors import ConfigError
from trainconsole.engine.layout import Layout
from trainconsole.engine.store.types import Experiment, Job

START_BASE = "base"


@dataclass(frozen=True)
class Request:
    """What the operator asked for one file (command-line flags, or an inbox sidecar)."""

    sets: Sequence[str] = ()
    settings_file: Path | None = None
    lineage: str | None = None
    new_lineage: bool = False
    from_adapter: str | None = None
    sweeps: Sequence[str] = ()
    after: str | None = None
    sidecar: Path | None = None  # NAME.toml beside NAME.jsonl in the inbox
    cwd: Path = field(default_factory=Path.cwd)


def _short(dotted: str) -> str:
    return dotted.rsplit(".", 1)[-1]


def _value_text(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value).lower() if isinstance(value, bool) else str(value)


def parse_sweeps(sweeps: Iterable[str]) -> list[list[tuple[str, Any]]]:
    """``KEY=V1,V2,...`` each, as the values of each key (typed and checked one by one)."""
    axes = []
    for text in sweeps:
        key, sep, values = text.partition("=")
        parts = [v.strip() for v in values.split(",") if v.strip()]
        if not sep or not parts:
            raise ConfigError(f"--sweep {text!r}: write KEY=V1,V2,..., e.g. training.learning_rate=1e-4,2e-4")
        axes.append([parse_assignment(f"{key.strip()}={v}") for v in parts])
    keys = [axis[0][0] for axis in axes]
    if len(set(keys)) != len(keys):
        raise ConfigError(f"--sweep names {keys} : each key at most once")
    return axes


def lineage_in_use(name: str, layout: Layout, jobs: Iterable[Job]) -> bool:
    return (resolve_latest(layout.adapters, name) is not None
            or any(a.lineage == name for a in list_adapters(layout.adapters))
            or any(j.lineage == name for j in jobs))


def _lineage_base(name: str, layout: Layout, jobs: Sequence[Job]) -> tuple[str, str] | None:
    """The base model a lineage is on, and who says so: its newest adapter, else its newest job."""
    latest = resolve_latest(layout.adapters, name)
    found = read_adapter(latest) if latest is not None else None
    if found is not None and found.base_model:
        return found.base_model, f"its adapter {found.name}"
    for job in reversed(jobs):
        base = job.experiment.settings.get("model", {}).get("base_model")
        if job.lineage == name and job.status in ("queued", "held", "running", "done") and base:
            return str(base), f"its job {job.id}"
    return None


def plan(cfg: Config, layout: Layout, jobs: Sequence[Job], request: Request, *, stem: str,
         taken: set[str] | None = None) -> list[Experiment]:
    """The experiments (one, or one per sweep point) a file is queued as. Raises ``ConfigError``
    naming what is wrong; nothing is queued then. ``taken``: lineage names already planned in this
    batch (a second file with --new-lineage must not take the first one's name)."""
    taken = set() if taken is None else taken
    overlays: list[Settings] = []
    if request.sidecar is not None:
        overlays.append(read_overlay(request.sidecar))
    if request.settings_file is not None:
        overlays.append(read_overlay(request.settings_file))
    if request.sets:
        overlays.append(assignments((parse_assignment(s) for s in request.sets), cwd=request.cwd))
    axes = parse_sweeps(request.sweeps)
    if request.lineage is not None:
        why = check_lineage_name(request.lineage)
        if why:
            raise ConfigError(f"--lineage {request.lineage!r}: {why}")
    start_from: str | None = None
    if request.from_adapter is not None:
        found = find(layout.adapters, request.from_adapter)
        if found is None:
            raise ConfigError(f"--from-adapter {request.from_adapter!r}: no such adapter (an adapter folder's "
                              "name, a lineage name or a path to a PEFT adapter folder; see `trainconsole adapters`)")
        start_from = str(found)
    elif request.new_lineage or axes:
        start_from = START_BASE
    if request.after is not None and not any(j.id == request.after for j in jobs):
        raise ConfigError(f"--after {request.after!r}: no such job (see `trainconsole status`)")

    def fresh(name: str, what: str) -> str:
        if name in taken or lineage_in_use(name, layout, jobs):
            raise ConfigError(f"{what} {name!r} already exists; a new lineage needs a new name (or drop "
                              "--new-lineage/--from-adapter to continue it)")
        taken.add(name)
        return name

    points: list[list[tuple[str, Any]]] = [list(p) for p in itertools.product(*axes)] if axes else [[]]
    out = []
    sweep = None
    if axes:
        sweep = request.lineage or stem
        why = check_lineage_name(sweep)
        if why:
            raise ConfigError(f"sweep name {sweep!r} (from the file name; give one with --lineage): {why}")
    for point in points:
        settings = resolve(cfg, [*overlays, assignments(point, cwd=request.cwd)] if point else overlays)
        if sweep is not None:
            suffix = ",".join(f"{_short(k)}={_value_text(v)}" for k, v in point)
            lineage = fresh(f"{sweep}.{suffix}", "lineage")
        elif start_from is not None:
            lineage = fresh(request.lineage or _free_name(stem, layout, jobs, taken), "lineage")
        else:
            lineage = request.lineage or MAIN
            _check_base(lineage, settings, layout, jobs)
        if start_from not in (None, START_BASE):
            adapter = read_adapter(Path(start_from))
            base = settings["model"]["base_model"]
            if adapter is not None and adapter.base_model and adapter.base_model != base:
                raise ConfigError(f"--from-adapter {adapter.name} was trained on base model {adapter.base_model}, "
                                  f"but this job's base model is {base}; set model.base_model to match",
                                  case=13)
        out.append(Experiment(settings=settings, lineage=lineage, start_from=start_from, after=request.after,
                              sweep=sweep))
    return out


def _free_name(stem: str, layout: Layout, jobs: Sequence[Job], taken: set[str]) -> str:
    base = stem if check_lineage_name(stem) is None else "lineage"
    name, n = base, 1
    while name in taken or lineage_in_use(name, layout, jobs):
        n += 1
        name = f"{base}-{n}"
    return name


def _check_base(lineage: str, settings: Settings, layout: Layout, jobs: Sequence[Job]) -> None:
    known = _lineage_base(lineage, layout, jobs)
    base = str(settings["model"]["base_model"])
    if known is not None and known[0] != base:
        raise ConfigError(f"lineage {lineage}: {known[1]} is on base model {known[0]}, but this job's base "
                          f"model is {base}; continue a lineage on its own base, or start a new one "
                          "(--new-lineage, or --lineage NAME --new-lineage)", case=13)
