"""``trainconsole check-config [PATH]`` and ``trainconsole init [DIR]``."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from trainconsole.console.common import config_path
from trainconsole.engine import fsio
from trainconsole.engine.errors import ConfigError, UsageError


def build(parser: argparse.ArgumentParser, name: str) -> None:
    if name == "init":
        parser.description = (
            "Write the commented default config.toml and the queue folders into DIR (default: the "
            "current folder; created if missing). An existing config.toml is never overwritten.")
        parser.add_argument("dir", nargs="?", metavar="DIR", default=None,
                            help="folder for config.toml and the queue (default: the folder of --config, else .)")
        return
    parser.description = (
        "Check a config file: exit 0 when valid (risky but legal values are printed as warnings), "
        "1 when invalid (every problem on its own line, naming the line and the key), 2 when PATH "
        "cannot be read as a file.")
    parser.add_argument("path", nargs="?", metavar="PATH", default=None,
                        help="config file (default: --config, $TRAINCONSOLE_CONFIG, ./config.toml)")
    parser.add_argument("--json", action="store_true",
                        help='print {"file", "valid", "problems", "warnings"} as JSON on stdout')


def run(args: argparse.Namespace) -> int:
    if args.command == "init":
        return _init(args)
    return _check(args)


def _check(args: argparse.Namespace) -> int:
    from trainconsole.engine.config import ConfigProblems, ConfigUnreadable, check_warnings, load_config

    path = Path(args.path).expanduser() if args.path else config_path(args)
    try:
        cfg = load_config(path)
    except ConfigUnreadable as exc:
        if args.json:
            _print_json(path, False, [{"message": exc.message, "key": None, "line": None,
                                       "column": None, "case": exc.case}], [])
        raise UsageError(exc.message) from None
    except ConfigProblems as exc:
        if args.json:
            _print_json(path, False, [p.to_json() for p in exc.problems], [])
        else:
            for problem in exc.problems:
                print(problem.render(str(path)), file=sys.stderr)
            if len(exc.problems) > 1:
                print(f"{path}: invalid ({len(exc.problems)} problems)", file=sys.stderr)
        return 1
    warnings = check_warnings(cfg)
    if args.json:
        _print_json(path, True, [], warnings)
        return 0
    for line in warnings:
        print(f"warning: {line}")
    print(f"{path}: valid" + (f" ({len(warnings)} warning{'s' if len(warnings) != 1 else ''})"
                               if warnings else ""))
    return 0


def _print_json(path: Path, valid: bool, problems: list[dict[str, object]], warnings: list[str]) -> None:
    print(json.dumps({"file": str(path), "valid": valid, "problems": problems, "warnings": warnings},
                     indent=2))


def _init(args: argparse.Namespace) -> int:
    from trainconsole.engine.config import default_config_text, load_config

    if args.dir is None and getattr(args, "config", None):
        # `trainconsole --config PATH init`: create exactly the file every other command will read
        target = Path(args.config).expanduser()
        folder = target.parent
    else:
        folder = Path(args.dir or ".").expanduser()
        target = folder / "config.toml"
    if folder.exists() and not folder.is_dir():
        raise UsageError(f"{folder}: exists and is not a folder")
    if target.is_dir():
        raise UsageError(f"{target}: is a folder; give the config file's path")
    if target.exists() or target.is_symlink():
        raise ConfigError(f"{target}: a config already exists; not overwriting it (edit it, check it "
                          "with `trainconsole check-config`, or choose another folder)")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fsio.write_new(target, default_config_text().encode("utf-8"))
    except FileExistsError:
        raise ConfigError(f"{target}: a config already exists; not overwriting it") from None
    except OSError as exc:
        raise ConfigError(f"{target}: cannot write the config: {exc.strerror or exc}") from None
    layout = load_config(target).layout()
    try:
        layout.ensure()
    except OSError as exc:
        raise ConfigError(f"wrote {target}, but cannot create the queue folders: "
                          f"{exc.filename}: {exc.strerror or exc}") from None
    print(f"wrote {target}")
    print(f"created {layout.queue} (drop .jsonl files into {layout.incoming}), {layout.runs}, "
          f"{layout.adapters}")
    shown = "" if target == Path("config.toml") else f" --config {target}"
    print(f"next: `trainconsole{shown} check-config`, then `trainconsole{shown}` to open the console")
    return 0
