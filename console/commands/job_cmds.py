"""One job at a time: ``trainconsole logs JOB [-f] [--lines N]`` and ``trainconsole show JOB [--json]``.

Both only read: the store read-only, the job's event log from a byte offset. ``logs -f`` follows a
job through every restart of its worker (retries, out-of-memory rungs, an engine restart) and
ends when the store says the job is done (exit 0), failed or cancelled (exit 1)."""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

SHOW_SCHEMA = 1


def build(parser: argparse.ArgumentParser, name: str) -> None:
    parser.add_argument("job", metavar="JOB", help="job id, e.g. j0003")
    if name == "logs":
        parser.description = ("Print a job's log (steps, evaluations, alerts, messages). With -f, keep "
                              "printing as it grows, through worker restarts, until the job ends: exit 0 "
                              "when it is done, 1 when it failed or was cancelled.")
        parser.add_argument("-f", "--follow", action="store_true", help="follow the log until the job ends")
        parser.add_argument("-n", "--lines", type=_count, default=None, metavar="N",
                            help="only the last N lines (default: all)")
    else:
        parser.description = ("Show one job: state and reason, attempts, out-of-memory rungs, adapter, "
                              "last loss and eval loss, and where its files are.")
        parser.add_argument("--json", action="store_true", help=f"machine-readable (schema {SHOW_SCHEMA})")


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 0:
        raise argparse.ArgumentTypeError("must be 0 or more")
    return value


def run(args: argparse.Namespace) -> int:
    return _logs(args) if args.command == "logs" else _show(args)


def _no_job(job_id: str) -> Exception:
    from trainconsole.engine.store import QueueError

    return QueueError(f"no job {job_id!r} (see `trainconsole status` for the job ids)")


def _logs(args: argparse.Namespace) -> int:
    from trainconsole.console.common import load_layout
    from trainconsole.engine.joblog import follow, format_event, read_last
    from trainconsole.engine.store.lookup import UNKNOWN, job_status

    _, layout = load_layout(args)
    job_id = str(args.job)
    state = job_status(layout, job_id) if layout.state_db.exists() else None
    if state is None:
        raise _no_job(job_id)
    log = layout.job_events(job_id)
    events, offset = read_last(log, args.lines)
    out = sys.stdout
    for event in events:
        out.write(format_event(event, dated=True) + "\n")
    out.flush()
    if not args.follow:
        return 0
    last: list[str | None] = [state]

    def status() -> str | None:
        now = job_status(layout, job_id)
        if now != UNKNOWN:  # an unreadable moment (a rebuild, a lost mount) is waited out
            last[0] = now
        return now

    for event in follow(log, offset, status):
        out.write(format_event(event, dated=True) + "\n")
        out.flush()
    final = last[0]
    print(f"{job_id}: {final or 'no longer in the queue'}", file=sys.stderr)
    return 0 if final == "done" else 1


def _show(args: argparse.Namespace) -> int:
    import orjson

    from trainconsole.console.common import load_layout
    from trainconsole.engine.jobinfo import describe
    from trainconsole.engine.store import Store

    cfg, layout = load_layout(args)
    if not layout.state_db.exists():
        raise _no_job(str(args.job))
    with Store.open(layout, policy=cfg.queue, repair=False) as store:
        info = describe(store, store.require(str(args.job)), time.time())
    if args.json:
        doc = {"schema": SHOW_SCHEMA, "job": info}
        sys.stdout.buffer.write(orjson.dumps(doc, option=orjson.OPT_INDENT_2) + b"\n")
        sys.stdout.flush()
        return 0
    _print(info)
    return 0


def _num(value: Any) -> str:
    return "-" if value is None else f"{value:.4g}" if isinstance(value, float) else str(value)


def _print(info: dict[str, Any]) -> None:
    rows: list[tuple[str, str]] = [
        ("job", f"{info['id']}  {info['name']}"),
        ("status", f"{info['status']}  ({info['reason']})" if info["reason"] != info["status"] else info["status"]),
        ("priority", info["priority"]),
        ("attempts", f"{info['attempts']} of {info['max_attempts']}"),
        ("progress", f"step {_num(info['step'])} of {_num(info['max_steps'])}"),
        ("loss", f"{_num(info['last_loss'])} at step {_num(info['last_loss_step'])}"),
        ("eval loss", f"{_num(info['eval_loss'])} at step {_num(info['eval_step'])}"),
        ("adapter", info["adapter"] or "-"),
        ("lineage", info["lineage"] + (f"  (starts from {info['start_from']})" if info["start_from"] else "")
         + (f"  (sweep {info['sweep']})" if info["sweep"] else "")),
    ]
    if info["after"]:
        rows.append(("after", info["after"]))
    for section, values in (info["settings"] or {}).items():
        rows.append((f"settings [{section}]", ", ".join(f"{k} = {v}" for k, v in values.items())))
    if info["rungs"]:
        rows.append(("oom rungs", ", ".join(f"{k}={v}" for k, v in info["rungs"].items())))
    if info["error"]:
        rows.append(("error", f"{info['error_class']}: {info['error']}"))
    for h in info["history"]:
        rows.append((f"attempt {h.get('attempt', '?')}", f"{h.get('t') or ''} {h.get('class', '')}: "
                                                         f"{h.get('message', '')}".strip()))
    for key in ("created_at", "started_at", "finished_at", "next_attempt_at"):
        if info[key]:
            rows.append((key.replace("_at", "").replace("_", " "), info[key]))
    rows += [(name.replace("_", " "), path) for name, path in info["paths"].items() if path]
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"{key:<{width}}  {value}")
