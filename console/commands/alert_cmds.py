"""``trainconsole ack [ALERT...|--all]``: acknowledge alerts, for every console at once.

Without arguments it lists the unread alerts, one a line, each with the short id to type
(``trainconsole.engine.events.alert_id``). Acknowledgements live in the store
(``trainconsole.engine.store.acks``): every console shows them read, and a restart keeps them. An
id that names no alert gets one line on stderr and exit 1; the good ones are still acknowledged.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from trainconsole.engine.layout import Layout
    from trainconsole.engine.store import Store


def build(parser: argparse.ArgumentParser, name: str) -> None:
    parser.description = ("Acknowledge alerts in every console. Without arguments, list the unread "
                          "ones with their ids.")
    parser.add_argument("alerts", nargs="*", metavar="ALERT", help="alert id as listed, e.g. a1b2c3d4")
    parser.add_argument("--all", action="store_true", help="acknowledge every alert so far")


@dataclass(frozen=True)
class Seen:
    id: str
    key: str
    t: float
    severity: str
    case: int | None
    job_id: str | None
    message: str


def run(args: argparse.Namespace) -> int:
    from trainconsole.console.common import load_layout
    from trainconsole.engine.errors import UsageError
    from trainconsole.engine.events import EventLog
    from trainconsole.engine.store import QueueError, Store

    if args.all and args.alerts:
        raise UsageError("give alert ids or --all, not both")
    _, layout = load_layout(args)
    if not layout.state_db.exists():
        raise QueueError(f"no queue at {layout.queue} yet: there is nothing to acknowledge")
    with Store.open(layout, EventLog(layout.engine_events), repair=False) as store:
        alerts = _newest(_alerts(layout, store))
        if args.all:
            before = max([time.time(), *(a.t for a in alerts.values())])
            acks = store.acks.read()
            count = sum(not acks.covers(a.key, a.t) for a in alerts.values())
            store.acks.acknowledge_all(before)
            print(f"acknowledged {count} alert(s)")
            return 0
        if not args.alerts:
            return _list(store, alerts)
        by_id = {a.id: a for a in alerts.values()}
        bad = [given for given in args.alerts if given not in by_id]
        for given in bad:
            print(f"trainconsole: no alert {given!r} (run `trainconsole ack` to list the unread ones "
                  "with their ids)", file=sys.stderr)
        chosen = [by_id[given] for given in dict.fromkeys(args.alerts) if given in by_id]
        if chosen:
            store.acks.acknowledge({a.key: a.t for a in chosen})
        for a in chosen:
            print(f"acknowledged {a.id}: {_line(a)}")
        return 1 if bad else 0


def _list(store: Store, alerts: dict[str, Seen]) -> int:
    acks = store.acks.read()
    unread = sorted((a for a in alerts.values() if not acks.covers(a.key, a.t)), key=lambda a: a.t)
    for a in unread:
        stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(a.t))
        print(f"{a.id}  {stamp}  {a.severity:8}  {_line(a)}")
    if not unread:
        print("no unread alerts")
    return 0


def _line(a: Seen) -> str:
    from trainconsole.engine.names import display

    case = f"case {a.case}" if a.case else "-"
    job = f"{a.job_id}: " if a.job_id and not a.message.startswith(a.job_id) else ""
    return f"{case}  {job}{display(a.message.splitlines()[0] if a.message else '')}"


def _alerts(layout: Layout, store: Store) -> Iterator[Seen]:
    """Every alert in the engine's log and the jobs' logs (rotated parts first), as consoles key
    them: a job log's alert without a job id is that job's."""
    yield from _from_log(layout.engine_events, None)
    for job in store.jobs():
        yield from _from_log(layout.job_events(job.id), job.id)


def _from_log(path: Any, job_hint: str | None) -> Iterator[Seen]:
    from trainconsole.engine.events import alert_id, alert_key, read_all, rotated

    for part in (rotated(path), path):
        for event in read_all(part, only=b'"alert"'):
            if event.get("type") != "alert":
                continue
            job_id = event.get("job_id") or job_hint
            key = alert_key(event if event.get("key") else {**event, "job_id": job_id})
            t = event.get("t")
            case = event.get("case")
            yield Seen(alert_id(key), key, float(t) if isinstance(t, int | float) else 0.0,
                       str(event.get("severity", "warning")),
                       case if isinstance(case, int) and not isinstance(case, bool) else None,
                       job_id if isinstance(job_id, str) else None, str(event.get("message", "")))


def _newest(alerts: Iterator[Seen]) -> dict[str, Seen]:
    """One row per key, its newest occurrence (as a console shows it)."""
    out: dict[str, Seen] = {}
    for a in alerts:
        if a.key not in out or a.t >= out[a.key].t:
            out[a.key] = a
    return out
