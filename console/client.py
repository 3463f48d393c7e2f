"""The console's one data source: the job store, the event logs, resource samples and the engine's
process, turned into immutable snapshots. The app gets a client injected, so tests drive the real
UI with a scripted one; this module never imports Textual (or torch).

Everything here runs off the UI thread. The store is opened per call (short transactions, and a
SQLite connection belongs to the thread that made it); event logs are tailed from byte offsets,
so any number of consoles can watch one engine at once.

A poll's work does not grow with a run's length: a log is read newest part first and then only
what is new (``console/logtail.py``), its older part in bounded bites; the loss is kept decimated
as it arrives (``series.LossSeries``), so a view costs the same at 100k steps as at 5k; alerts
are counted as they come (``alert_book.py``).
"""

from __future__ import annotations

import dataclasses
import os
import re
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from trainconsole.console.alert_book import SHOWN, AlertBook
from trainconsole.console.client_actions import ClientActions
from trainconsole.console.logtail import TailFirst
from trainconsole.console.series import GROWTH_REDRAW_S, SETTLE, LossSeries, StepRate
from trainconsole.console.snapshot import EngineView, JobRow, LossView, Snapshot
from trainconsole.engine.events import EventTail
from trainconsole.engine.joblog import format_event, read_last
from trainconsole.engine.runfiles import read_report
from trainconsole.engine.store import Job, Store
from trainconsole.engine.store.acks import Acks
from trainconsole.engine.sysmon import Sysmon

if TYPE_CHECKING:
    from trainconsole.engine.config import Config
    from trainconsole.engine.layout import Layout

T = TypeVar("T")

MAX_ALERTS = SHOWN  # rows in the panel; the header counts all of them
ENGINE_WINDOW = 1 << 20  # the engine log's newest part read at once on a cold start
FOLLOW_LINES = 2000  # a followed log starts with its last this many events
# The engine's copy of a job's file (`j0002--name.jsonl`, see trainconsole.engine.store.files) leading a
# message: the id and name columns already say it, and at 80 columns it is all a reason showed.
_JOB_COPY = re.compile(r"\bj\d{4,}--[A-Za-z0-9._-]+\.jsonl: ")




@dataclass
class _Watch:
    """One job's log as this console follows it: the loss so far and its pace."""

    log: TailFirst
    series: LossSeries = field(default_factory=LossSeries)
    rate: StepRate = field(default_factory=StepRate)
    version: int = 0  # bumped by every change to ``series``: an unchanged one is not viewed again
    reshaped: bool = False  # more than grown at its end (history put in front): view it at once
    viewed: tuple[int, int, float, LossView] | None = None  # (version, width, when, the view)


def _float(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value)
    if value in ("nan", "inf", "-inf"):
        return float(value)
    return None


class WorkspaceClient(ClientActions):
    """The real data source for one config's queue folder."""

    def __init__(self, cfg: Config, *, readonly: bool = False) -> None:
        self.cfg = cfg
        self.readonly = readonly
        self.layout: Layout = cfg.layout()
        gpus = cfg.hardware.gpus
        # RAM, swap and disk move slowly: read every 2 s (the devices still every second).
        self.sysmon = Sysmon(gpus if isinstance(gpus, list) else None, host_every_s=2.0)
        self.disk_labels = {str(self.layout.queue): "queue", str(self.layout.runs): "runs"}
        self._engine_log = TailFirst(self.layout.engine_events, window=ENGINE_WINDOW)
        self._watches: dict[str, _Watch] = {}
        self._cluster = ""  # the last "cluster" line the engine sampled (launcher.kind = "slurm")
        self.alerts = AlertBook()
        self._statuses: dict[str, str] = {}
        self._lock = threading.Lock()
        self._polling = threading.Lock()  # one poll at a time: the store's connection is shared
        self._store: Store | None = None
        self._store_identity: tuple[int, int] | None = None
        self._jobs_read: tuple[int, list[Job], bool] | None = None  # (data_version, jobs, paused)
        self._shortened: dict[str, str] = {}
        self._rows: dict[str, tuple[Job, str, JobRow]] = {}  # each job's last row, and what made it
        self._history_waits = False  # the next poll reads no older history (see _warm)

    # --- reading ---------------------------------------------------------------------------

    def _open_store(self) -> Store:
        # repair=False: reconciling folders is the daemon's business, never a watcher's.
        return Store.open(self.layout, repair=False, memo=True)

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
        self._jobs_read = None  # data_version counts per connection
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
        # SQLite's data_version moves when another connection commits (the engine, a command,
        # this console's own writes): unchanged, so are the jobs, and reading them again (the
        # poll's largest cost while the queue is quiet) is skipped. Reasons hold times: recomputed.
        version = store.db.conn.execute("PRAGMA data_version").fetchone()[0]
        if self._jobs_read is not None and self._jobs_read[0] == version:
            _, jobs, paused = self._jobs_read
        else:
            jobs = store.jobs()
            paused = store.paused()
            self._jobs_read = (version, jobs, paused)
        try:
            reasons = store.reasons(time.time(), jobs)
        except Exception:  # noqa: BLE001 - a reason is decoration, never worth the screen
            reasons = {}
        for job in jobs:
            if job.status == "running" and job.slurm_id is not None:
                # A Slurm job may wait in Slurm's queue (its reason stays), else: where it runs.
                if not job.slurm_reason:
                    reasons[job.id] = f"on {job.node or '?'}, slurm job {job.slurm_id}"
            # Progress and status already say these; the column is for why a job waits.
            elif job.status in ("running", "done", "cancelled"):
                reasons[job.id] = ""
        return jobs, paused, reasons, ""

    def _read_acks(self) -> Acks | None:
        """The store's acknowledged alerts; None while unreadable (an old engine's database
        without the table, a rebuild): the console's own acknowledgements still count."""
        try:
            return self._reader().acks.read()
        except Exception:  # noqa: BLE001 - acknowledgements are decoration, never worth the screen
            return None

    def _short(self, text: str) -> str:
        # Called for every job's reason and error at every poll, mostly on the same few texts.
        short = self._shortened.get(text)
        if short is None:
            if len(self._shortened) > 4096:
                self._shortened.clear()
            short = self._shortened[text] = _JOB_COPY.sub("", text.replace(f"{self.layout.jobs}/", ""))
        return short

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
                          started_at=info.start_time,
                          step_rate=running_rate)

    def _take_events(self, events: list[dict[str, Any]], job_hint: str | None,
                     watch: _Watch | None = None, older: bool = False) -> None:
        """One read's events. Steps go to the loss in one batch (a history bite is thousands):
        the job's series for new ones, a series of their own for an older bite, put in front."""
        steps: list[float] = []
        losses: list[float] = []
        evals: list[tuple[float, float]] = []
        planned = 0
        rate = watch.rate if watch is not None and not older else None
        for event in events:
            kind = event.get("type")
            if kind == "step":
                if watch is None:
                    continue
                step, loss = event.get("step"), event.get("loss")
                if type(step) is not int and type(step) is not float:
                    step = _float(step)
                if type(loss) is not float and type(loss) is not int:
                    loss = _float(loss)
                if step is None or loss is None:
                    continue
                steps.append(step)
                losses.append(loss)
                if rate is not None:
                    t = event.get("t")
                    if isinstance(t, int | float):
                        rate.add(float(t), float(step))
                    planned = event.get("max_steps") or planned
            elif kind == "eval" and watch is not None:
                step, loss = _float(event.get("step")), _float(event.get("eval_loss"))
                if step is not None and loss is not None:
                    evals.append((step, loss))
            elif kind == "resource" and isinstance(event.get("cluster"), str) and not older:
                self._cluster = str(event["cluster"])
            elif kind == "alert":
                job_id = event.get("job_id") or job_hint
                self.alerts.take(event, job_id if isinstance(job_id, str) else None, self._short)
        if watch is None or not (steps or evals):
            return
        series = watch.series if not older else LossSeries(
            settle=0 if watch.log.bite_at_start else SETTLE, span=watch.series.train.span)
        series.extend(steps, losses)
        for step, loss in evals:
            series.add_eval(step, loss)
        if isinstance(planned, int) and not isinstance(planned, bool) and planned > 0:
            series.max_steps = planned
        if older:
            watch.series.absorb_older(series)
            watch.reshaped = True
        watch.version += 1

    def _watch(self, job_id: str) -> _Watch:
        watch = self._watches.get(job_id)
        if watch is None:
            watch = self._watches[job_id] = _Watch(TailFirst(self.layout.job_events(job_id)))
        return watch

    def _tail_jobs(self, jobs: list[Job], focus: str | None, history: bool = True) -> None:
        for job in jobs:
            before = self._statuses.get(job.id)
            self._statuses[job.id] = job.status
            # Tail running jobs, the focused one, and any whose state changed since the last look
            # (a file rejected between two polls still shows its alert); on the first look, the
            # failed ones too, for their alerts. Only a plotted job has its older history read.
            changed = before != job.status and (before is not None or job.status == "failed")
            plotted = job.status == "running" or job.id == focus
            if not (plotted or changed):
                continue
            watch = self._watch(job.id)
            first = watch.log.older_end is None
            new, older = watch.log.read(with_older=plotted and history)
            if first and watch.log.live.began_at:  # the window starts inside the history
                watch.series.settle = SETTLE
            self._take_events(new, job.id, watch)
            self._take_events(older, job.id, watch, older=True)

    def _loss_view(self, job_id: str, watch: _Watch, width: int) -> LossView:
        series = watch.series
        last_step = int(series.last_step) if series.last_step is not None else 0
        # The plot draws a growing curve at most every GROWTH_REDRAW_S: decimating it into columns
        # more often is work nobody sees. Within that time a view of a curve that only grew keeps
        # its points and takes the newest step and loss (the title); a new width, or a history
        # put in front, is viewed at once.
        now = time.monotonic()
        viewed = watch.viewed
        if viewed is not None and viewed[1] == width and not watch.reshaped:
            if viewed[0] == watch.version:
                return viewed[3]
            if now - viewed[2] < GROWTH_REDRAW_S:
                view = dataclasses.replace(viewed[3], last_loss=series.last_loss, last_step=last_step)
                watch.viewed = (watch.version, width, viewed[2], view)
                return view
        watch.reshaped = False
        tx, ty = series.train.view(width)
        sx, sy = series.smooth.view(width)
        ex, ey = series.evals.view(width)
        view = LossView(job_id, tuple(tx), tuple(ty), tuple(sx), tuple(sy), tuple(ex), tuple(ey),
                        last_loss=series.last_loss, last_step=last_step, max_steps=series.max_steps)
        watch.viewed = (watch.version, width, now, view)
        return view

    def warm(self) -> None:
        """Begin a first poll now, on a thread of its own: opening the store (it checks the
        file's integrity), the newest windows of the logs, NVML's start. The console calls it
        before importing its UI, which takes most of a second; the app's first poll then finds
        that work done (polls are serialised) and its first frame comes that much sooner."""
        threading.Thread(target=self._warm, name="console-warm", daemon=True).start()

    def _warm(self) -> None:
        with self._polling:
            try:
                self._snapshot(None, 60)
            except Exception:  # noqa: BLE001 - the app's own poll meets the problem and shows it
                pass
            # The app's first poll makes its first frame: it takes only what is new since this
            # one, and the older history (a 2 MB bite on a long run, an eighth of a second)
            # is read from the poll after, behind a screen that is already up.
            self._history_waits = True

    def snapshot(self, focus: str | None, width: int) -> Snapshot:
        with self._polling:
            return self._snapshot(focus, width)

    def _snapshot(self, focus: str | None, width: int) -> Snapshot:
        problems: list[str] = []
        history = not self._history_waits
        self._history_waits = False
        try:
            jobs, paused, reasons, note = self._read_jobs()
            if note:
                problems.append(note)
        except Exception as exc:  # noqa: BLE001 - a store mid-migration must not end the console
            jobs, paused, reasons = [], False, {}
            problems.append(f"job store unreadable: {exc}")
        acks = self._read_acks() if self._store is not None else None
        with self._lock:
            if acks is not None:
                self.alerts.apply(acks)
            new, older = self._engine_log.read()
            self._take_events(new, None)
            self._take_events(older, None)
            self._tail_jobs(jobs, focus, history)

        now = time.time()
        running = [j for j in jobs if j.status == "running"]
        rate = None
        rows = []
        made: dict[str, tuple[Job, str, JobRow]] = {}
        for job in jobs:
            reason = reasons.get(job.id, "")
            before = self._rows.get(job.id)
            if before is not None and before[0] is job and before[1] == reason and job.status != "running":
                # The same store row (unchanged data_version) and reason: the same JobRow, which
                # the table then passes over by identity.
                rows.append(before[2])
                made[job.id] = before
                continue
            watch = self._watches.get(job.id)
            job_rate = watch.rate.rate(now) if watch is not None and job.status == "running" else None
            if job_rate is not None:
                rate = job_rate
            step = int(job.step or 0)
            last = watch.series.last_step if watch is not None else None
            if job.status == "running" and last is not None:
                step = max(step, int(last))  # the store's progress lags the events
            max_steps = int(job.max_steps or 0)
            eta = (max_steps - step) / job_rate if job_rate and max_steps > step else None
            error = self._short(str(job.error or ""))
            row = JobRow(
                id=job.id, name=str(job.name), priority=str(job.priority), status=str(job.status),
                attempts=int(job.attempts or 0), step=step, max_steps=max_steps, eta_s=eta,
                reason=self._short(reason), error=error,
                error_class=str(job.error_class or ""), created_at=job.created_at,
                started_at=job.started_at, finished_at=job.finished_at, lineage=job.lineage,
                sweep=job.experiment.sweep, eval_loss=job.eval_loss, last_loss=job.last_loss,
                slurm_id=job.slurm_id, node=str(job.node or ""))
            rows.append(row)
            made[job.id] = (job, reason, row)
        self._rows = made
        try:
            engine = self._engine(rate, paused)
        except Exception as exc:  # noqa: BLE001
            engine = EngineView("not running", detail=f"engine state unknown: {exc}")
            problems.append(engine.detail)

        loss = None
        plotted = [w for w in (focus, running[0].id if running else None)
                   if w is not None and w in self._watches and not self._watches[w].series.empty]
        if plotted:
            loss = self._loss_view(plotted[0], self._watches[plotted[0]], max(8, width))
        elif focus is not None:
            loss = LossView(focus)

        with self._lock:
            alerts, unread, critical, total = self.alerts.view()
        pids = [j.pid for j in running if j.pid]
        sample = self.sysmon.sample([self.layout.queue, self.layout.runs], pids=pids)
        return Snapshot(jobs=tuple(rows), engine=engine, paused=paused, resources=sample,
                        gpu_detail=self.sysmon.gpu_detail, alerts=alerts, loss=loss,
                        problem="; ".join(problems), disk_labels=dict(self.disk_labels), cluster=self._cluster,
                        alert_unread=unread, alert_critical=critical, alert_total=total)

    def job_log(self, job_id: str) -> list[str]:
        lines: list[str] = []
        report = read_report(self.layout.run_folder(job_id).report)
        if report is not None:
            lines.append(f"report: {report.status} {report.error_class or ''} "
                         f"case {report.case or '-'}: {report.message}")
            trace = (report.traceback or "").rstrip().splitlines()[-15:]
            lines += [f"  {line}" for line in trace]
        for event in _read_events(self.layout.job_events(job_id)):
            lines.append(format_event(event))
        return [self._short(line) for line in lines[-2000:]]

    def follow_log(self, job_id: str, offset: int | None) -> tuple[list[str], int]:
        """A job's log as ``trainconsole logs -f`` reads it (engine/joblog.py): first its last
        2,000 events (``offset`` None), then, from the offset handed back, only what is new, so
        following a long run's log costs what it writes. Every attempt appends to the same file."""
        path = self.layout.job_events(job_id)
        if offset is None:
            events, offset = read_last(path, FOLLOW_LINES)
        else:
            tail = EventTail(path, offset)
            events = tail.read_new()
            offset = tail.offset
        return [self._short(format_event(event)) for event in events], offset

    def close(self) -> None:
        self._drop_reader()


def _read_events(path: Path, limit: int = 512 << 10) -> list[dict[str, Any]]:
    """The newest events of a log (the detail screen re-reads it every refresh: a bounded tail,
    whatever the run's length), from the first whole line in the window."""
    return EventTail.from_end(path, limit, max_bytes=limit + (64 << 10)).read_new()
