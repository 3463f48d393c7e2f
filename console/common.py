"""What every command shares: finding the config, and turning expected failures into one line on
stderr instead of a traceback."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from trainconsole.engine.errors import TrainconsoleError, UsageError

if TYPE_CHECKING:
    from trainconsole.engine.config import Config
    from trainconsole.engine.layout import Layout


def config_path(args: argparse.Namespace) -> Path:
    """``--config``, else ``$TRAINCONSOLE_CONFIG``, else ``./config.toml``."""
    given = getattr(args, "config", None) or os.environ.get("TRAINCONSOLE_CONFIG") or "config.toml"
    return Path(given).expanduser()


def load_config(args: argparse.Namespace) -> Config:
    from trainconsole.engine.config import load_config as _load

    return _load(config_path(args))


def load_layout(args: argparse.Namespace) -> tuple[Config, Layout]:
    cfg = load_config(args)
    return cfg, cfg.layout()


def fail(message: str) -> None:
    print(f"trainconsole: {message}", file=sys.stderr)


def run_guarded(func: Callable[[argparse.Namespace], int], args: argparse.Namespace) -> int:
    try:
        return func(args)
    except UsageError as exc:
        fail(exc.message)
        return 2
    except TrainconsoleError as exc:
        fail(exc.message)
        return 1
    except BrokenPipeError:
        # `trainconsole status --json | head` closing the pipe is not an error worth a traceback.
        try:
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115
        except OSError:
            pass
        return 0
    except OSError as exc:
        # A disk, a permission or a vanished mount: the operator's to fix, so a line, not a traceback.
        where = f"{exc.filename}: " if exc.filename else ""
        fail(f"{where}{exc.strerror or exc}")
        return 1
    except KeyboardInterrupt:
        fail("interrupted")
        return 130
