"""A worker SIGKILLed mid-write leaves its atomic-write temp file; the engine's sweep removes it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from trainconsole.engine.config import load_config
from trainconsole.engine.daemon.recovery import sweep


@pytest.mark.edge(41)
def test_a_dead_writers_heartbeat_temp_file_is_swept(workspace: Path) -> None:
    layout = load_config(workspace / "config.toml").layout()
    layout.ensure()
    run_dir = layout.run_dir("j0001")
    run_dir.mkdir(parents=True)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    leftover = run_dir / f".heartbeat.json.{dead.stdout.strip()}.95ad0e.tmp"
    leftover.write_text("{}")
    sweep(layout)
    assert not leftover.exists()
