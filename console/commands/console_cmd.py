"""``trainconsole`` (no command): open the console. Starts the engine detached when none runs for
this queue folder (so closing the console or losing SSH never stops training), else attaches.
``--readonly`` never starts anything and hides every key that changes the queue."""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from trainconsole.console.common import config_path, load_config
from trainconsole.engine.errors import TrainconsoleError, UsageError

if TYPE_CHECKING:
    from trainconsole.engine.config import Config

MIN_REFRESH_S = 0.25


def build(parser: argparse.ArgumentParser, name: str) -> None:
    parser.add_argument("--readonly", action="store_true",
                        help="watch only: no key changes the queue or the engine (for shared SSH sessions)")
    parser.add_argument("--no-start", action="store_true",
                        help="do not start the engine when none runs; just watch the folder")
    parser.add_argument("--refresh", type=float, default=1.0, metavar="SECONDS",
                        help=f"seconds between refreshes (default 1, at least {MIN_REFRESH_S})")


def _web_driver() -> bool:
    # `textual serve` runs the app behind a web driver: no terminal, and that is fine.
    return "web_driver" in os.environ.get("TEXTUAL_DRIVER", "")


def shown_command() -> str:
    """How to run trainconsole again: the bare name only when the shell finds this very one
    (after `make run` it is .venv/bin/trainconsole, which is not on PATH)."""
    me = Path(sys.argv[0])
    if me.name != "trainconsole":  # `python -m trainconsole.console.cli`, a test harness
        return "trainconsole"
    found = shutil.which("trainconsole")
    if found is not None and Path(found).resolve() == me.resolve():
        return "trainconsole"
    try:
        return str(me.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(me.resolve())


def _shown_config(path: Path) -> str:
    """The --config an operator must repeat to reach this engine again ("" for ./config.toml)."""
    try:
        rel = path.resolve().relative_to(Path.cwd().resolve())
    except ValueError:
        return f" --config {path}"
    return "" if str(rel) == "config.toml" else f" --config {rel}"


def start_engine(path: Path) -> str:
    """Start the engine detached; "" or why it did not start. The console opens either way and
    shows the engine as not running, and why (a queue folder it cannot create, for one)."""
    from trainconsole.engine.daemon.start import start_detached

    try:
        start_detached(path)
    except TrainconsoleError as exc:
        notice = exc.message
    except OSError as exc:
        where = f" {exc.filename}" if exc.filename else ""
        notice = f"could not start the engine: cannot create or open{where}: {exc.strerror or exc}"
    else:
        return ""
    print(f"trainconsole: {notice}", file=sys.stderr, flush=True)
    return notice


def open_console(cfg: Config, path: Path, *, readonly: bool, start: bool, refresh: float) -> int:
    if refresh < MIN_REFRESH_S:
        raise UsageError(f"--refresh {refresh}: must be at least {MIN_REFRESH_S} seconds")
    interactive = sys.stdin.isatty() and sys.stdout.isatty()
    if not interactive and not _web_driver():
        raise UsageError("the console needs a terminal (use `ssh -t`); "
                         "`trainconsole status` prints the queue without one")
    layout = cfg.layout()
    from trainconsole.engine.lock import engine_running

    notice = ""
    if start and not readonly and engine_running(layout) is None:
        print(f"starting the engine for {layout.queue} …", flush=True)
        notice = start_engine(path)
    from trainconsole.console.client import WorkspaceClient

    client = WorkspaceClient(cfg, readonly=readonly)
    client.warm()  # the first poll's reading goes on while the UI's modules load
    from trainconsole.console.app import TrainConsole

    app = TrainConsole(client, poll_interval=refresh, readonly=readonly, watch_terminal=interactive,
                       notice=notice)
    try:
        app.run()
    finally:
        client.close()
    if engine_running(layout) is not None:
        shown = f"{shown_command()}{_shown_config(path)}"
        print(f"console closed; the engine keeps training (`{shown} stop` stops it, "
              f"`{shown}` reopens this view)")
    return 0


def run(args: argparse.Namespace) -> int:
    cfg = load_config(args)
    return open_console(cfg, config_path(args), readonly=args.readonly, start=not args.no_start,
                        refresh=args.refresh)
