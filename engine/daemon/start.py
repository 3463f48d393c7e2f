"""Starting the engine in the background: ``trainconsole`` (the console) and ``trainconsole demo``
start it this way when none runs.

The daemon runs in its own session, so closing the terminal or losing SSH never stops training.
A short-lived intermediate process launches it and exits, so the daemon is re-parented and never
becomes a zombie of a long-lived console (case 49). Its output goes to ``queue/engine.log``; it
inherits no file descriptors. It is started through its own entry point
(``python -m trainconsole.engine.daemon CONFIG``), never through the command line's module.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from trainconsole.engine.errors import TrainconsoleError
from trainconsole.engine.layout import Layout
from trainconsole.engine.lock import engine_running
from trainconsole.engine.procid import identity

ENTRY = "trainconsole.engine.daemon"
_SPAWNER = "trainconsole.engine.daemon.start"


def detached_log(layout: Layout) -> Path:
    return layout.queue / "engine.log"


def start_detached(config_path: Path, *, wait_s: float = 30.0) -> int:
    """Start the engine for ``config_path`` in its own session unless one runs. Returns the
    daemon's pid once its PID file appears."""
    from trainconsole.engine.config import load_config

    cfg = load_config(config_path)
    layout = cfg.layout()
    layout.queue.mkdir(parents=True, exist_ok=True)
    running = engine_running(layout)
    if running is not None:
        return running.pid
    out = subprocess.run(
        [sys.executable, "-m", _SPAWNER, "--spawn", str(Path(config_path).resolve()), str(detached_log(layout))],
        capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL, close_fds=True,
    )
    if out.returncode != 0:
        raise TrainconsoleError(f"could not start the engine: {out.stderr.strip() or out.stdout.strip()}")
    pid = int(out.stdout.strip().splitlines()[-1])
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        info = engine_running(layout)
        if info is not None:
            return info.pid
        if identity(pid) is None:
            break
        time.sleep(0.05)
    info = engine_running(layout)
    if info is not None:
        return info.pid
    tail = ""
    try:
        tail = detached_log(layout).read_text(errors="replace")[-2000:].strip()
    except OSError:
        pass
    raise TrainconsoleError(f"the engine did not start; see {detached_log(layout)}: {tail[-400:]}")


def _spawn(config_path: str, log_path: str) -> int:
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", ENTRY, config_path],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True, close_fds=True, cwd=str(Path(config_path).parent),
        )
    print(proc.pid)
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--spawn":
        sys.exit(_spawn(sys.argv[2], sys.argv[3]))
    print(f"usage: python -m {_SPAWNER} --spawn CONFIG LOG", file=sys.stderr)
    sys.exit(2)
