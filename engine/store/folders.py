"""The queue folders as the store sees them: which folder holds a job of each status, the row a job
file and its sidecar give, and the rebuild of the database from ``jobs/`` (queued), ``done/`` and
``failed/`` when it is corrupt (case 58), reading each job's sidecar for what the folder alone
cannot say."""

from __future__ import annotations

import os
import re
import sqlite3
import time
from pathlib import Path
from typing import Any

from trainconsole.engine import fsio
from trainconsole.engine.layout import Layout
from trainconsole.engine.store import files as sf

_RUN_ID = re.compile(r"^j(\d{4,})$")

COLUMNS = ("seq", "id", "name", "filename", "sha256", "size", "priority", "status", "attempts",
           "next_attempt_at", "error_class", "error", "overrides", "history", "created_at",
           "queued_at", "started_at", "finished_at", "pid", "pid_start", "step", "max_steps",
           "slurm_id", "node", "slurm_reason", "experiment", "last_loss", "eval_loss", "adapter")

FOLDER_STATUS = (("jobs", "queued"), ("done", "done"), ("failed", "failed"))


def folder_for(layout: Layout, status: str) -> Path:
    if status == "done":
        return layout.done
    if status in ("failed", "cancelled"):
        return layout.failed
    return layout.jobs


def _highest_seq_in_runs(layout: Layout) -> int:
    best = 0
    try:
        for entry in os.scandir(layout.runs):
            match = _RUN_ID.match(entry.name)
            if match:
                best = max(best, int(match.group(1)))
    except OSError:
        pass
    return best


def _find_sidecar(layout: Layout, job_id: str, first: Path) -> dict[str, Any] | None:
    for folder in (first, layout.jobs, layout.done, layout.failed):
        meta = sf.read_sidecar(folder / sf.sidecar_name(job_id))
        if meta is not None and meta.get("id") == job_id:
            return meta
    return None


def _dumps(value: Any, default: str) -> str:
    import orjson

    try:
        return orjson.dumps(value).decode()
    except (orjson.JSONEncodeError, TypeError):
        return default


def _num(value: Any, kind: type[int] | type[float], default: Any) -> Any:
    try:
        return kind(value) if value is not None else default
    except (TypeError, ValueError):
        return default


def row_for_file(layout: Layout, folder: Path, default_status: str, job_id: str, path: Path,
                 now: float) -> tuple[Any, ...] | None:
    """A job row for one data file, from its folder and sidecar. A sidecar edited by hand or
    garbled costs only its own fields, never the rebuild."""
    meta = _find_sidecar(layout, job_id, folder) or {}
    status = default_status
    side_status = meta.get("status")
    if folder == layout.jobs and side_status == "held":
        status = "held"
    if folder == layout.failed and side_status == "cancelled":
        status = "cancelled"
    try:
        name = sf.name_from_hex(str(meta["name_hex"]))
    except (KeyError, ValueError):
        name = path.name.split("--", 1)[-1]
    sha, size = meta.get("sha256"), meta.get("size")
    if not isinstance(sha, str) or len(sha) != 64 or not isinstance(size, int):
        try:
            sha, size = sf.hash_file(path)
        except OSError:
            return None
    priority = meta.get("priority") if meta.get("priority") in ("high", "normal", "low") else "normal"
    created = _num(meta.get("created_at"), float, now)
    overrides = meta.get("overrides") if isinstance(meta.get("overrides"), dict) else {}
    history = meta.get("history") if isinstance(meta.get("history"), list) else []
    error_class, error = meta.get("error_class"), meta.get("error")
    experiment = meta.get("experiment") if isinstance(meta.get("experiment"), dict) else {}
    return (
        int(job_id[1:]), job_id, os.fsencode(name), path.name, sha, size, priority, status,
        max(0, _num(meta.get("attempts"), int, 0)), None,
        error_class if isinstance(error_class, str) else None, error if isinstance(error, str) else None,
        _dumps(overrides, "{}"), _dumps(history, "[]"),
        created, _num(meta.get("queued_at"), float, created),
        None, now if status in ("done", "failed", "cancelled") else None, None, None, None, None,
        None, None, None, _dumps(experiment, "{}"), None, None, None,
    )


def rebuild_from_folders(conn: sqlite3.Connection, layout: Layout) -> int:
    """Insert one job per data file found in jobs/, done/ and failed/; returns how many. Ids come
    from the file names, so they survive; the next id is past every id seen (runs/ included), so
    none is reused."""
    now = time.time()
    rows: list[tuple[Any, ...]] = []
    strays: list[tuple[Path, str]] = []
    highest = _highest_seq_in_runs(layout)
    for folder_name, default_status in FOLDER_STATUS:
        folder = getattr(layout, folder_name)
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError:
            continue
        for entry in entries:
            fname = entry.name
            if fname.startswith(".") or fname.endswith((".json", ".report.txt")):
                continue
            if not entry.is_file(follow_symlinks=False):
                continue
            job_id = sf.job_id_of(fname)
            if job_id is None:
                if folder_name == "jobs":
                    strays.append((Path(entry.path), fname))
                continue
            highest = max(highest, int(job_id[1:]))
            row = row_for_file(layout, folder, default_status, job_id, Path(entry.path), now)
            if row is not None:
                rows.append(row)
    conn.execute("BEGIN IMMEDIATE")
    try:
        marks = ",".join("?" * len(COLUMNS))
        conn.executemany(f"INSERT OR IGNORE INTO jobs({','.join(COLUMNS)}) VALUES ({marks})", rows)
        next_seq = highest + 1
        for path, fname in strays:  # a file put straight into jobs/ by hand: adopt it
            job_id = f"j{next_seq:04d}"
            new_name = sf.data_filename(job_id, fname)
            try:
                sha, size = sf.hash_file(path)
                fsio.move(path, layout.jobs / new_name)
            except OSError:
                continue
            conn.execute(
                f"INSERT INTO jobs({','.join(COLUMNS)}) VALUES ({marks})",
                (next_seq, job_id, os.fsencode(fname), new_name, sha, size, "normal", "queued", 0, None,
                 None, None, "{}", "[]", now, now, None, None, None, None, None, None, None, None, None,
                 "{}", None, None, None),
            )
            next_seq += 1
        conn.execute("UPDATE meta SET value=? WHERE key='next_seq'", (str(next_seq),))
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    return len(rows) + len(strays)
