"""The console's one data source: the job store, the event logs, resource samples and the engine's
process, turned into immutable snapshots. The app gets a client injected, so tests drive the real
UI with a scripted one; this module never imports Textual (or torch).

Everything here runs off the UI thread. The store is opened per call (short transactions, and a
SQLite connection belongs to the thread that made it); event logs are tailed from byte offsets,
so any number of consoles can watch one engine at once.
"""

from __future__ import annotations

import bisect
import os
import re
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import orjson

from trainconsole.console.series import Ema, downsample
from trainconsole.console.snapshot import AlertRow, EngineView, JobRow, LossView, Snapshot
from trainconsole.engine.events import EventTail
from trainconsole.engine.joblog import format_event
from trainconsole.engine.store import Job, Store
from trainconsole.engine.sysmon import Sysmon

if TYPE_CHECKING:
    from trainconsole.engine.config import Config
    from trainconsole.engine.layout import Layout

T = TypeVar("T")

MAX_ALERTS = 200
MAX_POINTS = 200_000  # per job; a longer run keeps its newest points
PRIORITIES = ("low", "normal", "high")
# The engine's copy of a job's file (`j0002--name.jsonl`, see trainconsole.engine.store.files) leading a
# message: the id and name columns already say it, and at 80 columns it is all a reason showed.
_JOB_COPY = re.compile(r"\bj\d{4,}--[A-Za-z0-9._-]+\.jsonl: ")


class ConsoleClient(Protocol):
    """What the app asks of its data source. Mutations go through the store (or its commands
    table), never to the engine directly."""

    readonly: bool

    def snapshot(self, focus: str | None, width: int) -> Snapshot: ...
    def job_log(self, job_id: str) -> list[str]: ...
    def set_priority(self, job_id: str, level: str) -> None: ...
    def hold(self, job_id: str) -> None: ...
    def release(self, job_id: str) -> None: ...
    def retry(self, job_id: str) -> None: ...
    def retry_all_failed(self) -> int: ...
    def cancel(self, job_id: str) -> None: ...
    def set_paused(self, paused: bool) -> None: ...
    def stop_engine(self) -> None: ...
    def acknowledge(self, keys: list[str]) -> None: ...
    def close(self) -> None: ...


@dataclass
class _Series:
    """One job's loss history. A resume after a rollback repeats steps: the old tail is cut."""

    steps: list[float] = field(default_factory=list)
    loss: list[float] = field(default_factory=list)
    smooth: list[float] = field(default_factory=list)
    ema: Ema = field(default_factory=Ema)
    eval_steps: list[float] = field(default_factory=list)
    eval_loss: list[float] = field(default_factory=list)
    recent: deque[tuple[float, float]] = field(default_factory=lambda: deque(maxlen=30))  # (t, step)

    def add_step(self, step: float, loss: float, t: float) -> None:
        if self.steps and self.steps[-1] >= step:
            cut = bisect.bisect_left(self.steps, step)
            del self.steps[cut:], self.loss[cut:]
            # The average restarts from the kept points: rollbacks are rare, steps are not.
            self.ema = Ema()
            self.smooth = [self.ema.add(v) for v in self.loss]
        self.steps.append(step)
        self.loss.append(loss)
        self.smooth.append(self.ema.add(loss))
        if len(self.steps) > MAX_POINTS:
            extra = len(self.steps) - MAX_POINTS
            del self.steps[:extra], self.loss[:extra], self.smooth[:extra]
        self.recent.append((t, step))

    def add_eval(self, step: float, loss: float) -> None:
        while self.eval_steps and self.eval_steps[-1] >= step:
            self.eval_steps.pop()
            self.eval_loss.pop()
        self.eval_steps.append(step)
        self.eval_loss.append(loss)

    def rate(self) -> float | None:
        if len(self.recent) < 2:
            return None
        (t0, s0), (t1, s1) = self.recent[0], self.recent[-1]
        # A burst read at once (a history written long ago) says nothing about the current pace.
        return (s1 - s0) / (t1 - t0) if t1 - t0 >= 1.0 and s1 > s0 else None

    def view(self, job_id: str, width: int) -> LossView:
        tx, ty = downsample(self.steps, self.loss, width)
        sx, sy = downsample(self.steps, self.smooth, width)
        ex, ey = downsample(self.eval_steps, self.eval_loss, width)
        return LossView(job_id, tuple(tx), tuple(ty), tuple(sx), tuple(sy), tuple(ex), tuple(ey),
                        last_loss=self.loss[-1] if self.loss else None,
                        last_step=int(self.steps[-1]) if self.steps else 0)


def _float(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value)
    if value in ("nan", "inf", "-inf"):
        return float(value)
    return None


class WorkspaceClient:
    """The real data source for one config's queue folder."""

    def __init__(self, cfg: Config, *, readonly: bool = False) -> None:
        self.cfg = cfg
        self.readonly = readonly
        self.layout: Layout = cfg.layout()
        gpus = cfg.hardware.gpus
        self.sysmon = Sysmon(gpus if isinstance(gpus, list) else None)
        self.disk_labels = {str(self.layout.queue): "queue", str(self.layout.runs): "runs"}
        self._engine_tail = EventTail(self.layout.engine_events)
        self._job_tails: dict[str, EventTail] = {}
        self._series: dict[str, _Series] = {}
        self._alerts: dict[str, AlertRow] = {}
        self._acked: set[str] = set()
        self._statuses: dict[str, str] = {}
        self._lock = threading.Lock()
        self._store: Store | None = None
        self._store_identity: tuple[int, int] | None = None

    # --- reading ---------------------------------------------------------------------------

    def _open_store(self) -> Store:
        # repair=False: reconciling folders is the daemon's business, never a watcher's.
        return Store.open(self.layout, repair=False)

    def _reader(self) -> Store:
        """The polls' own store, kept open: opening checks the file's integrity, a cost per open
        that grows with the queue. Reopened when the file is replaced (a rebuilt database)."""
        st = os.stat(self.layout.state_db)
        identity = (st.st_dev, st.st_ino)
        if self._store is None or self._store_identity != identity:
            self._drop_reader()
            self._store = store = self._open_store()
            self._store_identity = identity
            return store
        return self._store

    def _drop_reader(self) -> None:
        if self._store is not None:
            try:
                self._store.close()
            except Exception:  # noqa: BLE001 - closing a broken connection is best effort
                pass
        self._store = None

    def _read_jobs(self) -> tuple[list[Job], bool, dict[str, str], str]:
        if not self.layout.state_db.exists():
            self._drop_reader()
            return [], False, {}, "no queue yet: the engine creates it on start"
        try:
            return self._query_jobs(self._reader())
        except Exception:
            self._drop_reader()  # the next poll starts afresh
            raise

    def _query_jobs(self, store: Store) -> tuple[list[Job], bool, dict[str, str], str]:
        jobs = store.jobs()
        paused = store.paused()
        try:
            reasons = store.reasons(time.time(), jobs)
        except Exception:  # noqa: BLE001 - a reason is decoration, never worth the screen
            reasons = {}
        for job in jobs:
            # Progress and status already say these; the column is for why a job waits.
            if job.status in ("running", "done", "cancelled"):
                reasons[job.id] = ""
        return jobs, paused, reasons, ""

    def _short(self, text: str) -> str:
        return _JOB_COPY.sub("", text.replace(f"{self.layout.jobs}/", ""))

    def _engine(self, running_rate: float | None, paused: bool) -> EngineView:
        from trainconsole.engine.lock import engine_running, read_pidfile

        info = engine_running(self.layout)
        if info is None:
            # The console has no start key: opening it is what starts an engine (not read-only).
            # Short: at 80 columns the status line has room for little more.
            hint = "" if self.readonly else "reopen the console to start it"
            if read_pidfile(self.layout) is not None:
                return EngineView("stopped", detail=f"it exited; {hint}" if hint
                                  else "the engine exited (stale pid file)")
            return EngineView("not running", detail=hint)
        uptime = max(0.0, time.time() - info.start_time)
        return EngineView("paused" if paused else "running", pid=info.pid, uptime_s=uptime,
                          step_rate=running_rate)

    def _take_event(self, event: dict[str, Any], job_hint: str | None) -> None:
        kind = event.get("type")
        job_id = event.get("job_id") or job_hint
        t = _float(event.get("t")) or 0.0
        if kind == "step" and job_id:
            step, loss = _float(event.get("step")), _float(event.get("loss"))
            if step is not None and loss is not None:
                self._series.setdefault(job_id, _Series()).add_step(step, loss, t)
        elif kind == "eval" and job_id:
            step, loss = _float(event.get("step")), _float(event.get("eval_loss"))
            if step is not None and loss is not None:
                self._series.setdefault(job_id, _Series()).add_eval(step, loss)
        elif kind == "alert":
            case = event.get("case")
            raw = str(event.get("message", ""))
            key = str(event.get("key") or f"{t}|{case}|{job_id}|{raw}")
            message = self._short(raw)
            before = self._alerts.get(key)
            if before is not None and t > before.t:
                self._acked.discard(key)  # it happened again: news again
            self._alerts[key] = AlertRow(
                key=key, case=case if isinstance(case, int) else None,
                severity=str(event.get("severity", "warning")), job_id=job_id, t=t, message=message,
                acked=key in self._acked)

    def _tail_jobs(self, jobs: list[Any], focus: str | None) -> None:
        for job in jobs:
            before = self._statuses.get(job.id)
            self._statuses[job.id] = job.status
            # Tail running jobs, the focused one, and any whose state changed since the last look
            # (a file rejected between two polls still shows its alert); on the first look, the
            # failed ones too, for their alerts.
            changed = before != job.status and (before is not None or job.status == "failed")
            if not (job.status == "running" or job.id == focus or changed):
                continue
            tail = self._job_tails.setdefault(job.id, EventTail(self.layout.job_events(job.id)))
            for event in tail.read_new():
                self._take_event(event, job.id)

    def snapshot(self, focus: str | None, width: int) -> Snapshot:
        problems: list[str] = []
        try:
            jobs, paused, reasons, note = self._read_jobs()
            if note:
                problems.append(note)
        except Exception as exc:  # noqa: BLE001 - a store mid-migration must not end the console
            jobs, paused, reasons = [], False, {}
            problems.append(f"job store unreadable: {exc}")
        with self._lock:
            for event in self._engine_tail.read_new():
                self._take_event(event, None)
            self._tail_jobs(jobs, focus)

        running = [j for j in jobs if j.status == "running"]
        rate = None
        rows = []
        for job in jobs:
            series = self._series.get(job.id)
            job_rate = series.rate() if series is not None and job.status == "running" else None
            if job_rate is not None:
                rate = job_rate
            step = int(job.step or 0)
            if series is not None and job.status == "running" and series.steps:
                step = max(step, int(series.steps[-1]))  # the store's progress lags the events
            max_steps = int(job.max_steps or 0)
            eta = (max_steps - step) / job_rate if job_rate and max_steps > step else None
            error = self._short(str(job.error or ""))
            rows.append(JobRow(
                id=job.id, name=str(job.name), priority=str(job.priority), status=str(job.status),
                attempts=int(job.attempts or 0), step=step, max_steps=max_steps, eta_s=eta,
                reason=self._short(reasons.get(job.id, "")), error=error,
                error_class=str(job.error_class or ""), created_at=job.created_at,
                started_at=job.started_at, finished_at=job.finished_at, lineage=job.lineage,
                sweep=job.experiment.sweep, eval_loss=job.eval_loss, last_loss=job.last_loss))
        try:
            engine = self._engine(rate, paused)
        except Exception as exc:  # noqa: BLE001
            engine = EngineView("not running", detail=f"engine state unknown: {exc}")
            problems.append(engine.detail)

        loss = None
        target = focus if focus in self._series else (running[0].id if running else None)
        if target is not None and target in self._series:
            loss = self._series[target].view(target, max(8, width))
        elif focus is not None:
            loss = LossView(focus)

        with self._lock:
            if len(self._alerts) > MAX_ALERTS:
                oldest = sorted(self._alerts, key=lambda k: self._alerts[k].t)
                for key in oldest[: len(self._alerts) - MAX_ALERTS]:
                    del self._alerts[key]
            alerts = tuple(sorted(self._alerts.values(), key=lambda a: a.t, reverse=True))
        sample = self.sysmon.sample([self.layout.queue, self.layout.runs])
        return Snapshot(jobs=tuple(rows), engine=engine, paused=paused, resources=sample,
                        gpu_detail=self.sysmon.gpu_detail, alerts=alerts, loss=loss,
                        problem="; ".join(problems), disk_labels=dict(self.disk_labels))

    def job_log(self, job_id: str) -> list[str]:
        lines: list[str] = []
        report = self.layout.run_dir(job_id) / "report.json"
        try:
            data = orjson.loads(report.read_bytes())
            lines.append(f"report: {data.get('status')} {data.get('error_class') or ''} "
                         f"case {data.get('case') or '-'}: {data.get('message') or ''}")
            trace = str(data.get("traceback") or "").rstrip().splitlines()[-15:]
            lines += [f"  {line}" for line in trace]
        except (OSError, ValueError, AttributeError):
            pass
        for event in _read_events(self.layout.job_events(job_id)):
            lines.append(format_event(event))
        return [self._short(line) for line in lines[-2000:]]

    # --- writing ---------------------------------------------------------------------------

    def _write(self, act: Callable[[Store], T]) -> T:
        if self.readonly:
            raise PermissionError("this console is read-only")
        store = self._open_store()
        try:
            return act(store)
        finally:
            store.close()

    def set_priority(self, job_id: str, level: str) -> None:
        self._write(lambda store: store.set_priority(job_id, level))

    def hold(self, job_id: str) -> None:
        self._write(lambda store: store.hold(job_id))

    def release(self, job_id: str) -> None:
        self._write(lambda store: store.release(job_id))

    def retry(self, job_id: str) -> None:
        self._write(lambda store: store.retry(job_id))

    def retry_all_failed(self) -> int:
        return len(self._write(lambda store: store.retry_all_failed()))

    def cancel(self, job_id: str) -> None:
        self._write(lambda store: store.cancel(job_id))

    def set_paused(self, paused: bool) -> None:
        self._write(lambda store: store.set_paused(paused))

    def stop_engine(self) -> None:
        self._write(lambda store: store.post_command("stop"))

    def acknowledge(self, keys: list[str]) -> None:
        # Acknowledgement is this console's own: another operator's console still shows them.
        # Called from the UI thread while a poll may be reading the same alerts: hence the lock.
        with self._lock:
            self._acknowledge(keys)

    def _acknowledge(self, keys: list[str]) -> None:
        for key in keys:
            self._acked.add(key)
            row = self._alerts.get(key)
            if row is not None:
                self._alerts[key] = AlertRow(row.key, row.case, row.severity, row.job_id, row.t,
                                             row.message, acked=True)

    def close(self) -> None:
        self._drop_reader()


def _read_events(path: Path, limit: int = 512 << 10) -> list[dict[str, Any]]:
    """The newest events of a log (the detail screen re-reads it every refresh: a bounded tail,
    whatever the run's length). A line cut by the start of the window is skipped as torn."""
    tail = EventTail(path, max_bytes=limit)
    try:
        size = path.stat().st_size
    except OSError:
        return []
    tail.offset = max(0, size - limit)
    events = tail.read_new()
    return events
