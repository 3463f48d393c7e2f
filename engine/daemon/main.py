"""The engine daemon: exactly one per queue folder, small, and never importing torch.

Start-up order matters: folders checked writable (46), the lock taken (48), then recovery before
anything trains (``trainconsole.engine.daemon.recovery``: orphaned workers ended, jobs left running
requeued, leftovers swept; 41-43), then the supervision loop (``trainconsole.engine.daemon.supervisor``). SIGTERM, SIGINT or a ``stop`` command: the worker
checkpoints at its next step boundary and exits, its job is requeued without charge, and the
daemon exits 0. SIGHUP is ignored (a closed terminal must not stop training; config changes take
a restart). Workers are our children and reaped as they end (49).
"""

from __future__ import annotations

import signal
import sys
from pathlib import Path
from types import FrameType
from typing import Any

from trainconsole.engine.config import Config, load_config
from trainconsole.engine.daemon.notify import Notifier
from trainconsole.engine.daemon.recovery import recover
from trainconsole.engine.daemon.resources import check_writable
from trainconsole.engine.daemon.supervisor import Supervisor
from trainconsole.engine.errors import TrainconsoleError
from trainconsole.engine.events import EventLog
from trainconsole.engine.layout import Layout
from trainconsole.engine.lock import EngineLock
from trainconsole.engine.store import Store
from trainconsole.engine.sysmon import Sysmon

__all__ = ["main", "run_daemon"]


def _say(message: str) -> None:
    print(f"trainconsole engine: {message}", flush=True)


class _Signals:
    """Installed first thing, so a SIGHUP or SIGTERM that arrives while we start is not fatal."""

    def __init__(self) -> None:
        self.pending: str | None = None
        self.sup: Supervisor | None = None
        self.events: EventLog | None = None
        self.previous: dict[int, Any] = {}

    def install(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            self.previous[sig] = signal.signal(sig, self._stop)
        self.previous[signal.SIGHUP] = signal.signal(signal.SIGHUP, self._hup)

    def restore(self) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)

    def _stop(self, signum: int, frame: FrameType | None) -> None:
        self.pending = signal.Signals(signum).name
        if self.sup is not None:
            self.sup.signalled = self.pending

    def _hup(self, signum: int, frame: FrameType | None) -> None:
        if self.events is not None:
            self.events.emit("log", level="info",
                             message="SIGHUP ignored: restart the engine to load a changed config")


def run_daemon(cfg: Config) -> int:
    """Run the engine in the foreground until stopped. Returns the exit code."""
    signals = _Signals()
    signals.install()
    try:
        layout = cfg.layout()
        problems = check_writable(layout.folders())
        if problems:
            raise TrainconsoleError("the engine cannot start: " + "; ".join(problems), case=46)
        lock = EngineLock(layout)
        info = lock.acquire()  # AlreadyRunning (case 48) propagates: one line, exit 1
        # Bounded: rotated to events.jsonl.1 at retention.events_max_mb (consoles follow it).
        events = EventLog(layout.engine_events, max_bytes=max(1, int(cfg.retention.events_max_mb * (1 << 20))))
        signals.events = events
        try:
            notifier = Notifier(events, cfg.guards.alert_command, cfg.guards.alert_min_severity)
            return _serve(cfg, layout, events, notifier, info.pid, signals)
        finally:
            lock.release()
            events.close()
    finally:
        signals.restore()


def _serve(cfg: Config, layout: Layout, events: EventLog, notifier: Notifier, pid: int,
           signals: _Signals) -> int:
    store = Store.open(layout, events, policy=cfg.queue)
    sup = Supervisor(cfg, store, events, notifier, Sysmon())
    signals.sup = sup
    sup.signalled = signals.pending
    try:
        _say(f"started (pid {pid}) for {layout.queue}")
        events.emit("log", level="info", message=f"engine started (pid {pid}, config {cfg.source})")
        from trainconsole.engine.reporters import missing_reporters

        for line in missing_reporters(cfg.report.to):  # said once here, not once per job
            notifier.alert(None, line, severity="warning", key="reporter-missing")
        owned = sup.reattach()  # Slurm attempts an earlier engine left: followed, never resubmitted
        recover(store, layout, notifier, events, grace_s=sup.hang_grace_s, config=cfg.source, owned=owned)
        if store.paused() and any(j.error_class == "disk_full" for j in store.jobs(["queued"])):
            # Paused by a full disk before a restart: resume on our own once there is room again.
            sup.holds.disk_paused = True
            sup.guard.hold_for_disk(layout.runs, max(64.0, float(cfg.hardware.min_free_disk_mb)),
                                    from_now=False)
        code = sup.run()
        events.emit("log", level="info", message="engine stopped")
        _say("stopped")
        return code
    finally:
        notifier.wait(2.0)
        store.close()


def main(config: str) -> int:
    """The engine's entry point (``python -m trainconsole.engine.daemon CONFIG``): a problem that
    is the operator's to fix is one line on stderr and exit 1, never a traceback."""
    try:
        return run_daemon(load_config(Path(config)))
    except TrainconsoleError as exc:
        print(f"trainconsole: {exc.message}", file=sys.stderr)
        return 1
    except OSError as exc:
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"trainconsole: {where}{exc.strerror or exc}", file=sys.stderr)
        return 1
