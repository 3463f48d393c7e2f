"""Shared pieces of the daemon tests: configs tuned for seconds instead of hours, data files, an
in-process supervisor driven tick by tick, and a real daemon process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from tests.chatdata import chat_lines
from trainconsole.engine.config import load_config, set_value
from trainconsole.engine.daemon.launcher import DevicePlan, Launcher, LocalLauncher
from trainconsole.engine.daemon.notify import Notifier
from trainconsole.engine.daemon.supervisor import Supervisor
from trainconsole.engine.events import EventLog, read_all
from trainconsole.engine.store import Job, Store

ROOT = Path(__file__).resolve().parents[2]
FAKE_WORKER = Path(__file__).with_name("fake_worker.py")
FAKE_DAEMON = Path(__file__).with_name("fake_daemon.py")

FAST: dict[str, Any] = {
    "queue.poll_s": 0.1,
    "queue.stable_s": 0.0,
    "queue.backoff_s": 0.0,
    "hardware.min_free_ram_mb": 0,
    "hardware.min_free_disk_mb": 0,
    "guards.hang_floor_s": 2.0,
    "guards.hang_multiple": 5.0,
    "guards.first_step_grace_s": 120.0,
}
# The smallest real training run: a few steps of the built-in tiny model.
TINY: dict[str, Any] = {
    "training.max_steps": 3,
    "training.epochs": 0,
    "training.batch_size": 2,
    "training.max_length": 128,
    "training.save_steps": 1,
    "training.eval_steps": 1000,
    "training.eval_fraction": 0.0,
    "guards.eval_samples": 0,
}


def configure(ws: Path, values: Mapping[str, Any]) -> Path:
    path = ws / "config.toml"
    for key, value in values.items():
        set_value(path, key, value)
    return path


def drop(ws: Path, name: str, n: int = 16, tag: str = "") -> Path:
    """A data file into the inbox, written elsewhere and renamed in, as a careful user would."""
    inbox = ws / "queue" / "incoming"
    inbox.mkdir(parents=True, exist_ok=True)
    tmp = ws / f".{name}.part"
    tmp.write_text(chat_lines(n, tag or name))
    os.replace(tmp, inbox / name)
    return inbox / name


class FakeLauncher(LocalLauncher):
    name = "fake"

    def command(self, spec: Path) -> list[str]:
        return [sys.executable, str(FAKE_WORKER), str(spec)]


def fake_factory(plan: DevicePlan) -> Launcher:
    return FakeLauncher()


class Harness:
    """A supervisor in this process, with the fake worker, driven tick by tick."""

    def __init__(self, ws: Path, values: Mapping[str, Any] | None = None, *,
                 launcher_factory: Callable[[DevicePlan], Launcher] = fake_factory,
                 sysmon: Any = None) -> None:
        self.ws = ws
        self.cfg = load_config(configure(ws, {**FAST, **(values or {})}))
        self.layout = self.cfg.layout()
        self.layout.ensure()
        self.events = EventLog(self.layout.engine_events)
        self.store = Store.open(self.layout, self.events, policy=self.cfg.queue)
        self.notifier = Notifier(self.events, self.cfg.guards.alert_command, self.cfg.guards.alert_min_severity)
        if sysmon is None:
            from trainconsole.engine.sysmon import Sysmon

            sysmon = Sysmon()
        self.sup = Supervisor(self.cfg, self.store, self.events, self.notifier, sysmon,
                              launcher_factory=launcher_factory)

    def run_until(self, done: Callable[[], bool], timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.sup.tick()
            if done():
                return
            time.sleep(0.05)
        raise AssertionError(f"condition not reached in {timeout}s; jobs: {self.summary()}; "
                             f"alerts: {self.alerts()[-5:]}")

    def settled(self) -> bool:
        return self.sup.current is None and not self.store.jobs(["queued", "running"])

    def jobs(self) -> list[Job]:
        return self.store.jobs()

    def summary(self) -> list[tuple[str, str, int, str | None]]:
        return [(j.id, j.status, j.attempts, j.error_class) for j in self.store.jobs()]

    def alerts(self) -> list[dict[str, Any]]:
        return [e for e in read_all(self.layout.engine_events) if e["type"] == "alert"]

    def close(self) -> None:
        if self.sup.current is not None:
            self.sup.current.worker.signal_group(signal.SIGKILL)
            self.sup.current.worker.wait(10)
        self.store.close()
        self.events.close()


def daemon_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("TRAINCONSOLE_CONFIG", None)
    env.pop("TRAINCONSOLE_FAULT", None)
    env["PYTHONUNBUFFERED"] = "1"
    if extra:
        env.update(extra)
    return env


def start_daemon(config: Path, env: Mapping[str, str] | None = None, log: Path | None = None, *,
                 fake_worker: bool = False) -> subprocess.Popen[bytes]:
    """``trainconsole daemon`` in its own process; ``fake_worker`` makes its launcher start
    tests/daemon/fake_worker.py (tests/daemon/fake_daemon.py) instead of the torch worker."""
    out = open(log or config.parent / "daemon.log", "ab")  # noqa: SIM115 - the child holds it
    entry = [str(FAKE_DAEMON)] if fake_worker else ["-m", "trainconsole.console.cli"]
    try:
        return subprocess.Popen([sys.executable, *entry, "--config", str(config), "daemon"],
                                cwd=ROOT, env=daemon_env(env), stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    finally:
        out.close()


def wait_for(cond: Callable[[], bool], timeout: float = 60.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.05)
    raise AssertionError(f"{what} not reached within {timeout}s")


def store_jobs(config: Path) -> list[Job]:
    cfg = load_config(config)
    with Store.open(cfg.layout(), repair=False) as store:
        return store.jobs()


def job_events(layout: Any, job_id: str) -> Iterator[dict[str, Any]]:
    return read_all(layout.job_events(job_id))
