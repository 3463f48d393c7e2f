"""Exporting a job's adapter from the console (`e`): the same code path as the CLI, run as
``trainconsole export ADAPTER OUT [--merge]`` in a subprocess of its own, so a merge (torch, the
base model in memory, minutes) never runs in the console's process, and what the operator sees
is exactly what the command would have said. Never imports Textual or torch."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from trainconsole.engine.adapters import Adapter, published_for, read_adapter

EXPORTS = "exports"  # beside the config file: <workspace>/exports/<lineage>-<job>


@dataclass(frozen=True)
class ExportResult:
    ok: bool
    line: str  # "exported … to …" or the command's one-line error


def job_adapter(adapters: Path, job_id: str) -> Adapter | None:
    """The adapter ``job_id`` published, or None when it published none (yet)."""
    found = published_for(adapters, job_id)
    return read_adapter(found) if found is not None else None


def default_destination(workspace: Path, adapter: Adapter) -> Path:
    """``<workspace>/exports/<lineage>-<job>``, with ``-2``, ``-3``… when that folder exists
    (export never writes over one)."""
    base = workspace / EXPORTS / f"{adapter.lineage}-{adapter.job_id}"
    path, n = base, 1
    while path.exists() or path.is_symlink():
        n += 1
        path = base.with_name(f"{base.name}-{n}")
    return path


def run_export(config: Path, adapter: str, out: Path, merge: bool, *,
               timeout: float | None = None) -> ExportResult:
    """Run ``trainconsole --config CONFIG export ADAPTER OUT [--merge]`` and say how it went in
    one line: its own last line when it succeeded or explained its refusal, else its exit."""
    argv = [sys.executable, "-m", "trainconsole.console.cli", "--config", os.fspath(config),
            "export", adapter, os.fspath(out)] + (["--merge"] if merge else [])
    try:
        # Its own session: a console closed or hung up meanwhile does not stop it (OUT appears
        # whole or not at all either way).
        proc = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                              timeout=timeout, cwd=config.absolute().parent, start_new_session=True)
    except subprocess.TimeoutExpired:
        return ExportResult(False, f"export of {adapter} to {out} did not finish in {timeout:.0f} s")
    except OSError as exc:
        return ExportResult(False, f"could not run trainconsole export: {exc.strerror or exc}")
    what = "merged model" if merge else "adapter"
    if proc.returncode == 0:
        return ExportResult(True, f"exported {what} {adapter} to {out}")
    said = _last_line(proc.stderr) or _last_line(proc.stdout)
    if said.startswith("trainconsole: "):
        said = said[len("trainconsole: "):]
    return ExportResult(False, f"export of {adapter} failed: {said or f'exit status {proc.returncode}'}")


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else ""
