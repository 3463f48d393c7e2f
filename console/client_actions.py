"""What a workspace client changes for the operator: the store's short write transactions (priority,
hold, retry, cancel, pause, stop, acknowledgements) and the adapters' lineages and exports. Mixed
into ``client.WorkspaceClient``, whose store, layout and alert book these use."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from trainconsole.console.alert_book import AlertBook
from trainconsole.engine.store import Store

if TYPE_CHECKING:
    from trainconsole.console.exporting import ExportResult
    from trainconsole.engine.adapters import Adapter, Lineage
    from trainconsole.engine.config import Config
    from trainconsole.engine.layout import Layout

T = TypeVar("T")


class ClientActions:
    cfg: Config
    layout: Layout
    readonly: bool
    alerts: AlertBook
    _lock: threading.Lock

    def _open_store(self) -> Store:
        raise NotImplementedError

    # --- adapters: read from the adapters folder, torch-free (engine/adapters.py) ----------

    # Imported when first asked for: the console's start (its first frame) does without them.

    def lineages(self) -> list[Lineage]:
        from trainconsole.engine.adapters import lineages

        return lineages(self.layout.adapters)

    def job_adapter(self, job_id: str) -> Adapter | None:
        from trainconsole.console.exporting import job_adapter

        return job_adapter(self.layout.adapters, job_id)

    def export_destination(self, adapter: Adapter) -> Path:
        from trainconsole.console.exporting import default_destination

        return default_destination(self.cfg.root, adapter)

    def export(self, adapter: str, out: Path, merge: bool) -> ExportResult:
        """``trainconsole export`` as its own process; blocks until it ends (call off the UI)."""
        from trainconsole.console.exporting import run_export

        if self.readonly:
            raise PermissionError("this console is read-only")
        # A relative folder is the workspace's, as paths in the config file are.
        return run_export(self.cfg.source, adapter, self.cfg.root / out.expanduser(), merge)

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
        # Kept in the store, so every console (and `trainconsole ack`) sees it and a restart keeps
        # it; it counts here at once. Called from the UI thread while a poll may be reading the
        # same alerts: hence the lock.
        with self._lock:
            seen = self.alerts.acknowledge(keys)
        if seen and not self.readonly:
            self._write(lambda store: store.acks.acknowledge(seen))

    def acknowledge_all(self) -> None:
        """Every alert read, also those past the rows shown."""
        with self._lock:
            before = self.alerts.acknowledge_all()
        if not self.readonly:
            self._write(lambda store: store.acks.acknowledge_all(before))
