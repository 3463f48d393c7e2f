"""The store's file side: the engine's copy of each job, a small sidecar beside it holding what a
rebuild of the database needs (case 58), and the readable report of a failed job (case 60).

Names on disk are the job id plus a sanitised form of the original name (ASCII, no spaces), so no
shell, terminal or tool ever meets a hostile name from the inbox; the original name is kept
exactly, as bytes in hex, in the sidecar and as a blob in the database.
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
import stat
import time
from pathlib import Path
from typing import Any

import orjson

from trainconsole.engine import fsio
from trainconsole.engine.errors import DataError
from trainconsole.engine.names import display

SIDECAR_SCHEMA = 1
TMP_TAG = "store"  # the store's temporaries in queue/.tmp: store-<name>.<pid>.<random>.tmp
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
_ID_PREFIX = re.compile(r"^(j\d{4,})(?:--|\.json$|\.report\.txt$)")


def sanitise(name: str, limit: int = 80) -> str:
    stem = name[:-6] if name.lower().endswith(".jsonl") else name
    safe = _UNSAFE.sub("_", stem).strip("._-") or "data"
    return safe[:limit]


def data_filename(job_id: str, name: str) -> str:
    return f"{job_id}--{sanitise(name)}.jsonl"


def sidecar_name(job_id: str) -> str:
    return f"{job_id}.json"


def report_name(filename: str) -> str:
    stem = filename[:-6] if filename.endswith(".jsonl") else filename
    return f"{stem}.report.txt"


def job_id_of(filename: str) -> str | None:
    match = _ID_PREFIX.match(filename)
    return match.group(1) if match else None


def name_to_hex(name: str) -> str:
    return os.fsencode(name).hex()


def name_from_hex(text: str) -> str:
    return os.fsdecode(bytes.fromhex(text))


def tmp_beside(tmp_dir: Path, folder: Path) -> Path:
    """Where a temporary for ``folder`` goes: the store's ``tmp_dir``, unless ``folder`` is on
    another filesystem (a jobs folder on its own mount, case 45), where a rename from there fails
    with EXDEV; then in ``folder`` itself (hidden, and swept there by the repair at each open)."""
    try:
        tmp_dir.mkdir(parents=True, exist_ok=True)
        if os.stat(tmp_dir).st_dev == os.stat(folder).st_dev:
            return tmp_dir
    except OSError:
        return tmp_dir  # the write that follows reports what is wrong
    return folder


def write_file(path: Path, data: bytes, tmp_dir: Path, *, sync_dir: bool = True) -> None:
    """Replace ``path`` durably (``trainconsole.engine.fsio``), its temporary in the store's
    ``tmp_dir`` where that is on the same filesystem (never a stray file in ``jobs/``, ``done/``
    or ``failed/``). ``sync_dir=False``: the caller fsyncs the folder once for a whole batch."""
    fsio.write_bytes(path, data, tmp_dir=tmp_beside(tmp_dir, path.parent), tag=TMP_TAG, sync_dir=sync_dir)


def write_sidecar(folder: Path, tmp_dir: Path, meta: dict[str, Any], *, sync_dir: bool = True) -> None:
    body = {"schema": SIDECAR_SCHEMA, **meta}
    write_file(folder / sidecar_name(str(meta["id"])), orjson.dumps(body, option=orjson.OPT_INDENT_2),
               tmp_dir, sync_dir=sync_dir)


def read_sidecar(path: Path) -> dict[str, Any] | None:
    """A sidecar is a convenience: a missing or garbled one yields None, never an exception."""
    try:
        obj = orjson.loads(path.read_bytes())
    except (OSError, orjson.JSONDecodeError):
        return None
    return obj if isinstance(obj, dict) else None


def move(src: Path, dst: Path, tmp_dir: Path | None = None) -> bool:
    """Rename if present; False when the source is gone (already moved by an earlier, killed try).
    Between filesystems (a jobs folder on its own mount) a durable copy, then the unlink: a kill
    between the two leaves both, and the repair at the next open removes the source (repair.py)."""
    try:
        return fsio.move(src, dst, missing_ok=True)
    except OSError as exc:
        if exc.errno != errno.EXDEV:
            raise
        copy_into(src, dst, tmp_dir or dst.parent)
        os.unlink(src)
    return True


def copy_into(src: Path, dst: Path, tmp_dir: Path, *, sync_dir: bool = True) -> tuple[str, int]:
    """Copy to a temporary file, fsync, rename into place; returns the sha256 and size copied, so
    the hash is of exactly what the engine will train on even if the source changes meanwhile."""
    # No link followed, no blocking open (a FIFO swapped in would hang us), regular files only.
    fd = os.open(src, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise DataError(f"{display(str(src))} is not a regular file; not queued")
    with os.fdopen(fd, "rb") as fin:
        return fsio.copy_into(fin, dst, tmp_dir=tmp_beside(tmp_dir, dst.parent), tag=TMP_TAG,
                              sync_dir=sync_dir)


def hash_file(path: Path) -> tuple[str, int]:
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


def report_text(job_id: str, name: str, attempts: int, max_attempts: int,
                history: list[dict[str, Any]], final: str, traceback: str | None) -> str:
    lines = [
        f"job:       {job_id}",
        f"file:      {display(name)}",
        f"outcome:   {final}",
        f"attempts:  {attempts} of {max_attempts}",
        f"written:   {time.strftime('%Y-%m-%d %H:%M:%S %z')}",
        "",
        "attempts, oldest first:",
    ]
    if not history:
        lines.append("  (none recorded)")
    for item in history:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(item.get("t", 0))))
        lines.append(f"  {item.get('attempt', '?')}. {when}  {item.get('class', '?')}: {item.get('message', '')}")
    if traceback:
        lines += ["", "last traceback:", traceback.rstrip()]
    lines += ["", f"To run it again: trainconsole retry {job_id}", ""]
    return "\n".join(lines)
