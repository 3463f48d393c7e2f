"""The console's process never imports torch (nor transformers, peft, accelerate): it must start in
well under a second and stay small, and run on a machine where the training stack is broken."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.helpers import ROOT

SCRIPT = r"""
import asyncio, sys
from pathlib import Path
from trainconsole.engine.config import load_config
from trainconsole.console.app import TrainConsole
from trainconsole.console.client import WorkspaceClient
import trainconsole.console.commands.console_cmd, trainconsole.console.commands.demo

cfg = load_config(Path(sys.argv[1]))
client = WorkspaceClient(cfg)

async def main():
    app = TrainConsole(client, watch_terminal=False)
    async with app.run_test(size=(80, 24)) as pilot:
        await app.first_frame.wait()
        await pilot.press("question_mark")
        await pilot.pause()

asyncio.run(main())
heavy = sorted(m for m in ("torch", "transformers", "peft", "accelerate") if m in sys.modules)
print("HEAVY:" + ",".join(heavy))
"""


def test_console_process_never_imports_torch(workspace: Path) -> None:
    out = subprocess.run([sys.executable, "-c", SCRIPT, str(workspace / "config.toml")], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "HEAVY:\n" in out.stdout or out.stdout.strip().endswith("HEAVY:"), out.stdout


START = r"""
import sys
from pathlib import Path
from trainconsole.engine.config import load_config
from trainconsole.engine.lock import engine_running
from trainconsole.console.client import WorkspaceClient
import trainconsole.console.app, trainconsole.console.commands.console_cmd

cfg = load_config(Path(sys.argv[1]))
engine_running(cfg.layout())
WorkspaceClient(cfg).snapshot(None, 60)
print("LOADED:" + ",".join(m for m in ("tomlkit", "filelock") if m in sys.modules))
"""


def test_opening_the_console_reads_the_config_without_its_editor_and_takes_no_lock(workspace: Path) -> None:
    # tomlkit (kept for editing config.toml) and filelock (the daemon's lock) cost a console
    # start a tenth of a second or more of imports before its first frame.
    out = subprocess.run([sys.executable, "-c", START, str(workspace / "config.toml")], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "LOADED:", out.stdout
