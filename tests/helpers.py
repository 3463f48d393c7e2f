"""Helpers for tests: run the real command line as an operator would."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def modes_bind_prefix() -> list[str] | None:
    """A command prefix under which file modes bind: none needed for a normal user; for root,
    setpriv dropping the DAC override (a real permission check, not a fake). None: not possible."""
    if os.geteuid() != 0:
        return []
    if shutil.which("setpriv") is None:
        return None
    caps = "-dac_override,-dac_read_search"
    return ["setpriv", "--bounding-set", caps, "--inh-caps", caps]


def run_cli(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None,
            timeout: float = 120, stdin: str | None = None,
            prefix: list[str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run `trainconsole ARGS` as a real process, the way an operator would."""
    full_env = dict(os.environ)
    full_env.pop("TRAINCONSOLE_CONFIG", None)
    if env:
        full_env.update(env)
    return subprocess.run(
        [*(prefix or []), sys.executable, "-m", "trainconsole.console.cli", *args],
        cwd=cwd or ROOT, env=full_env, capture_output=True, text=True, timeout=timeout,
        input=stdin,
    )
