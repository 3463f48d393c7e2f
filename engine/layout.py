"""Where everything lives at run time. One place computes every path; nothing else joins names."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Final

from trainconsole.engine import runfiles

PRIORITY_FOLDERS: Final = {"high": "high", "low": "low"}


@dataclass(frozen=True)
class Layout:
    queue: Path
    runs: Path
    adapters: Path
    cache: Path

    @property
    def incoming(self) -> Path:
        return self.queue / "incoming"

    def incoming_for(self, priority: str) -> Path:
        """``incoming/`` is normal priority; ``incoming/high`` and ``incoming/low`` set it by folder."""
        sub = PRIORITY_FOLDERS.get(priority)
        return self.incoming / sub if sub else self.incoming

    @property
    def jobs(self) -> Path:
        return self.queue / "jobs"

    @property
    def done(self) -> Path:
        return self.queue / "done"

    @property
    def failed(self) -> Path:
        return self.queue / "failed"

    @property
    def state_db(self) -> Path:
        return self.queue / "state.db"

    @property
    def pidfile(self) -> Path:
        return self.queue / "engine.pid"

    @property
    def lockfile(self) -> Path:
        return self.queue / "engine.lock"

    @property
    def engine_events(self) -> Path:
        return self.queue / "events.jsonl"

    @property
    def tmp(self) -> Path:
        """Staging for atomic moves: on the queue's filesystem, swept at daemon start."""
        return self.queue / ".tmp"

    def run_dir(self, job_id: str) -> Path:
        return self.runs / job_id

    def run_folder(self, job_id: str) -> runfiles.RunFolder:
        """The run folder's files (``trainconsole.engine.runfiles`` names them)."""
        return runfiles.RunFolder(self.run_dir(job_id))

    def job_events(self, job_id: str) -> Path:
        return self.run_folder(job_id).events

    @property
    def latest_adapter(self) -> Path:
        return self.adapters / "latest"

    def folders(self) -> list[Path]:
        """Every folder the engine writes, in creation order."""
        return [
            self.queue,
            self.incoming,
            self.incoming_for("high"),
            self.incoming_for("low"),
            self.jobs,
            self.done,
            self.failed,
            self.tmp,
            self.runs,
            self.adapters,
            self.cache,
        ]

    def ensure(self) -> None:
        for folder in self.folders():
            folder.mkdir(parents=True, exist_ok=True)
