"""Alerts reach a person: the engine's event log always, and at or above
``guards.alert_min_severity`` the operator's ``guards.alert_command`` (an argv list, no shell, the
alert as JSON on stdin), so someone is paged at 3 a.m.

The hook runs in a background thread with a timeout: a slow or failing command is logged and never
blocks supervision. The same alert (its key) is not repeated within a burst window, so a disk that
stays full does not page every second.
"""

from __future__ import annotations

import subprocess
import threading
import time
from typing import Any

import orjson

from trainconsole.engine.events import SEVERITIES, EventLog

HOOK_TIMEOUT_S = 20.0
MAX_HOOKS_IN_FLIGHT = 4


def severity_for(case: int | None) -> str:
    try:
        from trainconsole.engine.events import default_severity

        return default_severity(case)
    except ImportError:  # the catalogue is not installed: err on the loud side for numbered cases
        return "warning" if case is None else "critical"


class Notifier:
    def __init__(self, events: EventLog, command: list[str] | tuple[str, ...] = (), min_severity: str = "critical",
                 *, burst_s: float = 300.0, hook_timeout_s: float = HOOK_TIMEOUT_S) -> None:
        self.events = events
        self.command = list(command)
        self.min_rank = SEVERITIES.index(min_severity) if min_severity in SEVERITIES else 2
        self.burst_s = burst_s
        self.hook_timeout_s = hook_timeout_s
        self._sent: dict[str, float] = {}
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []

    def alert(self, case: int | None, message: str, *, severity: str | None = None,
              job_id: str | None = None, key: str | None = None, **extra: Any) -> bool:
        """Log (and maybe page) an alert; False when it was a repeat inside the burst window."""
        key = key or f"{case}:{job_id or ''}:{message}"
        now = time.monotonic()
        with self._lock:
            last = self._sent.get(key)
            if last is not None and now - last < self.burst_s:
                return False
            self._sent[key] = now
        severity = severity or severity_for(case)
        try:
            event = self.events.alert(case, message, severity=severity, job_id=job_id, key=key, **extra)
        except OSError:
            # The log's own disk is full or gone: the page below is then the only way out.
            from trainconsole.engine.events import make_event

            event = make_event("alert", case=case, severity=severity, message=message, job_id=job_id,
                               key=key, **extra)
        if self.command and SEVERITIES.index(severity) >= self.min_rank:
            self._run_hook(event)
        return True

    def forget(self, key: str) -> None:
        """Let an alert fire again at once (the condition cleared and came back)."""
        with self._lock:
            self._sent.pop(key, None)

    def _run_hook(self, event: dict[str, Any]) -> None:
        self._threads = [t for t in self._threads if t.is_alive()]
        if len(self._threads) >= MAX_HOOKS_IN_FLIGHT:
            self._log(f"alert command skipped: {len(self._threads)} still running")
            return
        thread = threading.Thread(target=self._hook, args=(event,), name="alert-hook", daemon=True)
        self._threads.append(thread)
        thread.start()

    def _log(self, message: str) -> None:
        try:
            self.events.emit("log", level="warning", message=message)
        except OSError:
            pass

    def _hook(self, event: dict[str, Any]) -> None:
        try:
            done = subprocess.run(self.command, input=orjson.dumps(event), capture_output=True,
                                  timeout=self.hook_timeout_s, close_fds=True, check=False)
            if done.returncode != 0:
                err = done.stderr.decode(errors="replace").strip()[-300:]
                self._log(f"alert command {self.command[0]!r} exited {done.returncode}: {err}")
        except subprocess.TimeoutExpired:
            self._log(f"alert command {self.command[0]!r} timed out after {self.hook_timeout_s:.0f}s "
                      "and was ended")
        except OSError as exc:
            self._log(f"alert command {self.command[0]!r} could not run: {exc}")

    def wait(self, timeout: float = 5.0) -> None:
        """For an orderly exit (and tests): give running hooks a moment to finish."""
        deadline = time.monotonic() + timeout
        for thread in list(self._threads):
            thread.join(max(0.0, deadline - time.monotonic()))
