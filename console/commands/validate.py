"""``trainconsole validate FILE... [--json]``: the data gate, without training.

Exit 0 when every file is accepted, 1 when any is rejected, 2 for a usage mistake (a missing path,
a folder, a FIFO or another non-regular file: each named, none ever opened, so a FIFO cannot hang
us). Token statistics use the configured model's tokenizer; torch is never imported here.

``--json`` prints one object (schema 1; keys are only ever added)::

    {"schema": 1, "tokens_skipped": why there are no token statistics ("" when there are),
     "files": [{
        "path", "verdict": "accepted" | "rejected",
        "reason": why rejected ("" when accepted), "code": the rejection in one word
            (empty_file, json_array, pretty_printed, utf16_file, compressed_file, cr_line_endings,
            no_valid_example, all_dropped, too_many_invalid),
        "case": the memo case of the rejection or null,
        "examples": non-blank lines, "valid", "invalid", "truncated", "dropped",
        "tokens": {"examples", "min", "mean", "max", "max_length", "over_max_length"} or {},
        "problems": [{"line", "case", "reason", "message"}, ...]  (the first data.max_problems),
        "reasons": {reason code: count}, "warnings": [{"case", "message"}], "bytes", "lines"}]}

Reason codes and their cases are ``trainconsole.engine.data.gate.REASONS``."""

from __future__ import annotations

import argparse
import json
import os
import stat
import sys
import time
from pathlib import Path
from typing import Any, TextIO

from trainconsole.console.common import config_path
from trainconsole.engine.errors import UsageError
from trainconsole.engine.names import display

PROGRESS_MIN_BYTES = 64 << 20  # smaller files finish before a bar would be worth drawing


def build(parser: argparse.ArgumentParser, name: str) -> None:
    parser.add_argument("files", nargs="+", metavar="FILE", help="chat-format .jsonl files")
    parser.add_argument("--json", action="store_true",
                        help='print {"schema": 1, "files": [...]} on stdout (stable, documented)')
    parser.add_argument("--no-tokens", action="store_true",
                        help="skip token statistics (structure only; faster)")


def check_data_path(given: str) -> str | None:
    """Why ``given`` cannot be validated, or None. Uses stat only: a FIFO is never opened."""
    why = _path_problem(given)
    return why.replace(given, display(given), 1) if why else None


def _path_problem(given: str) -> str | None:
    try:
        st = os.stat(given)
    except FileNotFoundError:
        return f"{given}: no such file"
    except NotADirectoryError:
        return f"{given}: no such file (a parent is not a folder)"
    except OSError as exc:
        return f"{given}: cannot be read ({exc.strerror or exc})"
    mode = st.st_mode
    if stat.S_ISDIR(mode):
        return f"{given}: is a folder; give the .jsonl files in it (e.g. {given.rstrip('/')}/*.jsonl)"
    if stat.S_ISFIFO(mode):
        return f"{given}: is a FIFO (named pipe), not a regular file; save the data to a file first"
    if not stat.S_ISREG(mode):
        return f"{given}: is not a regular file (a device or socket)"
    if not os.access(given, os.R_OK):
        return f"{given}: permission denied"
    return None


def _config(args: argparse.Namespace) -> tuple[Any, bool]:
    """The config, and whether it came from a file (defaults are fine for checking data)."""
    from trainconsole.engine.config import Config, load_config

    path = config_path(args)
    explicit = bool(getattr(args, "config", None) or os.environ.get("TRAINCONSOLE_CONFIG"))
    if not explicit and not path.exists():
        print(f"trainconsole: no {path} here; validating with the default settings", file=sys.stderr)
        return Config(source=Path.cwd() / "config.toml"), False
    return load_config(path), True


class Bar:
    """bytes read of total, rate, time left: redrawn on stderr at most five times a second."""

    def __init__(self, name: str, total: int, out: TextIO) -> None:
        self.name, self.total, self.out = name, max(total, 1), out
        self.done = 0
        self.start = self.last = time.monotonic()
        self._draw(self.start)  # at once: a large file should show it is being read


    def __call__(self, n: int) -> None:
        self.done += n
        now = time.monotonic()
        if now - self.last < 0.2 and self.done < self.total:
            return
        self._draw(now)

    def _draw(self, now: float) -> None:
        self.last = now
        rate = self.done / max(now - self.start, 1e-6)
        left = f"{(self.total - self.done) / rate:,.0f}s left" if rate > 0 else "starting"
        share = min(self.done / self.total, 1.0)
        filled = int(share * 30)
        self.out.write(f"\r{self.name[-30:]} [{'#' * filled}{'.' * (30 - filled)}] "
                       f"{self.done / 2**20:,.0f}/{self.total / 2**20:,.0f} MB "
                       f"{rate / 2**20:,.0f} MB/s, {left} ")
        self.out.flush()

    def close(self) -> None:
        self.out.write("\r" + " " * 100 + "\r")
        self.out.flush()


def run(args: argparse.Namespace) -> int:
    problems = [why for why in map(check_data_path, args.files) if why]
    if problems:
        for why in problems[:-1]:
            print(f"trainconsole: {why}", file=sys.stderr)
        raise UsageError(problems[-1])
    from trainconsole.engine.data.gate import validate_file

    cfg, from_file = _config(args)
    counter = None
    skipped = "--no-tokens"
    if not args.no_tokens:
        from trainconsole.engine.data.tokenizer import token_counter_for

        # Without a config there is no workspace to build the built-in model in: use it only if
        # it is already there, rather than leave a cache folder wherever the command was run.
        counter, skipped = token_counter_for(cfg, build=from_file)
        if counter is None:
            print(f"trainconsole: token statistics skipped: {skipped}", file=sys.stderr)
    reports = []
    tty = sys.stderr.isatty()
    for given in args.files:
        size = os.stat(given).st_size
        bar = Bar(given, size, sys.stderr) if tty and size >= PROGRESS_MIN_BYTES else None
        try:
            report = validate_file(Path(given), cfg, tokenizer=counter, progress=bar)
        finally:
            if bar is not None:
                bar.close()
        reports.append(report)
        if not args.json:
            print(report.render(), flush=True)
    if args.json:
        json.dump({"schema": 1, "files": [r.to_json() for r in reports],
                   "tokens_skipped": skipped}, sys.stdout, indent=2)
        sys.stdout.write("\n")
    return 0 if all(r.accepted for r in reports) else 1
