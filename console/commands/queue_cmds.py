"""Queue commands: ``status``, ``add``, ``retry``, ``priority``, ``hold``, ``release``, ``cancel``.

They write the job store directly, so they work with or without a running engine; what needs the
engine's hand (stopping a running job) goes through the store's command table. This path is kept
light: no torch, no Textual, and the heavier modules imported inside the command that needs them.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from trainconsole.engine.layout import Layout
    from trainconsole.engine.store import Store

# 2: times are ISO 8601 text with offset (were epoch seconds); docs/contracts.md
STATUS_SCHEMA = 2


def build(parser: argparse.ArgumentParser, name: str) -> None:
    if name == "status":
        parser.add_argument("--json", action="store_true", help="machine-readable output (schema 2)")
        parser.add_argument("--all", action="store_true", help="list every finished job too")
    elif name == "add":
        parser.add_argument("files", nargs="+", metavar="FILE", help=".jsonl training files")
        parser.add_argument("--priority", default="normal", choices=("high", "normal", "low"))
        parser.add_argument("--force", action="store_true",
                            help="queue a file even if a job already has the same content")
        exp = parser.add_argument_group("experiment (fixed when queued; see `trainconsole show JOB`)")
        exp.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                         help="a per-job setting over config.toml, e.g. training.learning_rate=1e-4 "
                              "(sections model, lora, training, data, guards); repeatable")
        exp.add_argument("--settings", dest="settings_file", type=Path, metavar="PATH",
                         help="a TOML file of per-job settings ([training] learning_rate = 1e-4 ...)")
        exp.add_argument("--lineage", metavar="NAME",
                         help="the lineage whose newest adapter the job continues (default: main)")
        exp.add_argument("--new-lineage", action="store_true",
                         help="start a new lineage from the base model (named by --lineage, else by the file)")
        exp.add_argument("--from-adapter", metavar="NAME|PATH",
                         help="start a new lineage from this adapter (a folder name, a lineage or a path)")
        exp.add_argument("--sweep", dest="sweeps", action="append", default=[], metavar="KEY=V1,V2,...",
                         help="one job per value, each in its own new lineage; several --sweep: every "
                              "combination")
        exp.add_argument("--after", metavar="JOB",
                         help="start only after JOB finished done (if it fails, this job is held)")
    elif name == "retry":
        parser.add_argument("job", nargs="?", metavar="JOB", help="job id, e.g. j0003")
        parser.add_argument("--all-failed", action="store_true", help="retry every failed job")
    elif name == "priority":
        parser.add_argument("job", metavar="JOB")
        parser.add_argument("level", metavar="LEVEL", choices=("high", "normal", "low"))
    else:  # hold, release, cancel
        parser.add_argument("jobs", nargs="+", metavar="JOB")


def run(args: argparse.Namespace) -> int:
    import sqlite3

    handler = {
        "status": _status, "add": _add, "retry": _retry, "priority": _priority,
        "hold": _hold, "release": _release, "cancel": _cancel,
    }[args.command]
    try:
        return handler(args)
    except OSError as exc:  # a full disk or a read-only queue folder is the operator's to fix
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"trainconsole: {where}{exc.strerror or exc}", file=sys.stderr)
        return 1
    except sqlite3.Error as exc:
        print(f"trainconsole: the job database failed: {exc}", file=sys.stderr)
        return 1


def _open(args: argparse.Namespace, *, repair: bool = True) -> tuple[Layout, Store]:
    from trainconsole.console.common import load_layout
    from trainconsole.engine.events import EventLog
    from trainconsole.engine.store import Store

    cfg, layout = load_layout(args)
    store = Store.open(layout, EventLog(layout.engine_events), policy=cfg.queue, repair=repair)
    _say_if_rebuilt(store)
    return layout, store


def _say_if_rebuilt(store: Store) -> None:
    if store.rebuilt is not None:
        problem, aside = store.rebuilt
        print(f"trainconsole: note: the job database {problem}; it was kept as {aside} and rebuilt "
              f"from the queue folders (case 58)", file=sys.stderr)


# -- status -------------------------------------------------------------------------------------


def _engine_state(layout: Layout) -> dict[str, Any]:
    if not layout.pidfile.exists():  # the common "no engine" answer, without psutil's import cost
        return {"state": "stopped", "pid": None, "started_at": None}
    from trainconsole.engine.isotime import normalize
    from trainconsole.engine.lock import engine_running, read_pidfile

    info = engine_running(layout)
    if info is not None:
        return {"state": "running", "pid": info.pid, "started_at": normalize(info.started_at)}
    stale = read_pidfile(layout)
    return {"state": "stale" if stale is not None else "stopped",
            "pid": stale.pid if stale is not None else None, "started_at": None}


def _status(args: argparse.Namespace) -> int:
    import orjson

    from trainconsole.console.common import load_layout

    cfg, layout = load_layout(args)
    engine = _engine_state(layout)
    jobs: list[dict[str, Any]] = []
    paused = False
    try:
        db_size = layout.state_db.stat().st_size
    except OSError:
        db_size = 0
    # A deleted or emptied database while job files remain: rebuild from the folders (as any
    # writer would) rather than report an empty queue.
    lost = not db_size and any(
        next(folder.glob("j*.json"), None) for folder in (layout.jobs, layout.done, layout.failed))
    if db_size or lost or layout.state_db.exists():
        from trainconsole.engine.store import Store

        with Store.open(layout, policy=cfg.queue, repair=lost) as store:
            _say_if_rebuilt(store)
            paused, jobs = store.snapshot(time.time())
    counts = {s: 0 for s in ("queued", "held", "running", "done", "failed", "cancelled")}
    for job in jobs:
        counts[job["status"]] = counts.get(job["status"], 0) + 1
    if args.json:
        doc = {"schema": STATUS_SCHEMA, "engine": engine, "paused": paused, "queue": str(layout.queue),
               "counts": counts, "jobs": jobs}
        sys.stdout.buffer.write(orjson.dumps(doc, option=orjson.OPT_INDENT_2) + b"\n")
        sys.stdout.flush()
        return 0
    _print_status(engine, paused, counts, jobs, args.all)
    return 0


def _print_status(engine: dict[str, Any], paused: bool, counts: dict[str, int],
                  jobs: list[dict[str, Any]], show_all: bool) -> None:
    state = engine["state"]
    if state == "running":
        head = f"engine: running (pid {engine['pid']})"
    elif state == "stale":
        head = f"engine: not running (stale PID file names pid {engine['pid']})"
    else:
        head = "engine: not running (start it with `trainconsole` or `trainconsole daemon`)"
    summary = ", ".join(f"{n} {s}" for s, n in counts.items() if n) or "no jobs"
    print(head)
    print(f"queue:  {'PAUSED' if paused else 'active'}; {summary}")
    active = [j for j in jobs if j["status"] in ("running", "queued", "held")]
    finished = [j for j in jobs if j["status"] not in ("running", "queued", "held")]
    hidden = 0
    if not show_all and len(finished) > 10:
        hidden = len(finished) - 10
        finished = finished[-10:]
    rows = active + finished
    if not rows:
        print("Drop .jsonl files into the inbox, or `trainconsole add FILE`.")
        return
    print()
    width = min(40, max(4, *(len(j["name"]) for j in rows)))
    print(f"{'ID':<7} {'STATUS':<9} {'PRIO':<6} {'TRIES':<5} {'NAME':<{width}}  REASON")
    for job in rows:
        name = job["name"]
        shown = name if len(name) <= width else name[: width - 1] + "…"
        tries = f"{job['attempts']}/{job['max_attempts']}"
        print(f"{job['id']:<7} {job['status']:<9} {job['priority']:<6} {tries:<5} {shown:<{width}}  "
              f"{job['reason']}")
    if hidden:
        print(f"({hidden} older finished jobs not shown; `trainconsole status --all` lists them)")


# -- add ----------------------------------------------------------------------------------------


def _add(args: argparse.Namespace) -> int:
    """Every readable file in one batch: one pair of commits however many files are named."""
    import os
    import stat

    from trainconsole.engine.errors import TrainconsoleError
    from trainconsole.engine.names import display
    from trainconsole.engine.store.add import NewFile
    from trainconsole.engine.store.files import hash_file

    layout, store = _open(args)
    bad = 0
    files: list[tuple[str, NewFile]] = []
    for given in args.files:
        shown = display(given)
        try:
            if not stat.S_ISREG(os.stat(given).st_mode):
                print(f"trainconsole: {shown}: not a regular file; not added", file=sys.stderr)
                bad += 1
                continue
            real = Path(os.path.realpath(given))  # a link names the file the operator means
            sha, size = hash_file(real)
        except OSError as exc:
            print(f"trainconsole: {shown}: cannot be read ({exc.strerror})", file=sys.stderr)
            bad += 1
            continue
        files.append((shown, NewFile(Path(given).name, real, sha, size, args.priority)))
    with store:
        files = _experiments(args, store, files)
        # One file as several sweep points is several jobs of the same content, on purpose.
        force = args.force or bool(args.sweeps)
        results = store.add_files([f for _, f in files], force=force) if files else []
        for (shown, f), result in zip(files, results, strict=True):
            error = result.error
            if error is not None:
                reason = (error.message if isinstance(error, TrainconsoleError)
                          else f"{shown}: cannot be copied into the queue "
                          f"({error.strerror if isinstance(error, OSError) else error})")
                print(f"trainconsole: {reason}", file=sys.stderr)
                bad += 1
            elif result.job is None:
                dup = store.duplicate_of(f.sha256)
                what = f"{dup.id} ({dup.status})" if dup else "a job being added"
                print(f"{shown}: same content as {what}; not queued again (--force to queue it anyway)")
            else:
                job = result.job
                where = "" if job.lineage == "main" and not job.experiment.settings else f"  lineage {job.lineage}"
                print(f"{job.id}  queued  {args.priority:<6}  {shown}{where}")
    return 1 if bad else 0


def _experiments(args: argparse.Namespace, store: Store, files: list[tuple[str, Any]]) -> list[tuple[str, Any]]:
    """Each file as the experiments it is queued as (several for a sweep); all checked before any
    is queued, so a bad setting queues nothing."""
    import dataclasses

    from trainconsole.console.common import load_config
    from trainconsole.engine.store.experiments import Request, plan

    cfg = load_config(args)
    request = Request(sets=args.sets, settings_file=args.settings_file, lineage=args.lineage,
                      new_lineage=args.new_lineage, from_adapter=args.from_adapter, sweeps=args.sweeps,
                      after=args.after)
    jobs = store.jobs()
    taken: set[str] = set()
    out = []
    for shown, f in files:
        stem = Path(f.name).stem
        for experiment in plan(cfg, store.layout, jobs, request, stem=stem, taken=taken):
            out.append((shown, dataclasses.replace(f, experiment=experiment)))
    return out


# -- operator actions ---------------------------------------------------------------------------


def _retry(args: argparse.Namespace) -> int:
    from trainconsole.engine.errors import UsageError
    from trainconsole.engine.store import QueueError

    if bool(args.job) == bool(args.all_failed):
        raise UsageError("give one job id, or --all-failed (e.g. `trainconsole retry j0003`)")
    _, store = _open(args)
    with store:
        if args.all_failed:
            failed = store.jobs(["failed"])
            if not failed:
                print("no failed jobs to retry")
                return 0
            code = 0
            for job in failed:
                try:
                    store.retry(job.id)
                except QueueError as exc:  # its data file is gone: say so, retry the others
                    print(f"trainconsole: {exc.message}", file=sys.stderr)
                    code = 1
                    continue
                print(f"{job.id}  queued again (attempts reset)")
            return code
        job = store.retry(args.job)
        print(f"{job.id}  queued again (attempts reset)")
    return 0


def _priority(args: argparse.Namespace) -> int:
    _, store = _open(args)
    with store:
        job = store.set_priority(args.job, args.level)
        print(f"{job.id}  priority {job.priority}")
    return 0


def _each(args: argparse.Namespace, action: str) -> int:
    from trainconsole.engine.store import QueueError

    layout, store = _open(args)
    bad = 0
    with store:
        for job_id in args.jobs:
            try:
                before = store.require(job_id)
                job = getattr(store, action)(job_id)
            except QueueError as exc:
                print(f"trainconsole: {exc.message}", file=sys.stderr)
                bad += 1
                continue
            if action == "cancel" and before.status == "running":
                note = "" if _engine_state(layout)["state"] == "running" else \
                    " (the engine is not running; it will stop the job when it starts)"
                print(f"{job.id}  running; asked the engine to stop and cancel it{note}")
            else:
                print(f"{job.id}  {job.status}")
    return 1 if bad else 0


def _hold(args: argparse.Namespace) -> int:
    return _each(args, "hold")


def _release(args: argparse.Namespace) -> int:
    return _each(args, "release")


def _cancel(args: argparse.Namespace) -> int:
    return _each(args, "cancel")
