"""``trainconsole``: one entry point, each command in its own module, imported only when used, so
``trainconsole status`` never pays for Textual, let alone torch."""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence

# name -> (module under trainconsole.console.commands, one-line help). The module defines
# ``build(parser)`` to add its arguments and ``run(args) -> int``.
COMMANDS: dict[str, tuple[str, str]] = {
    "console": ("console_cmd", "open the console; start the engine if none runs, else attach"),
    "demo": ("demo", "queue the bundled sample data on the built-in tiny model, open the console"),
    "daemon": ("engine_cmds", "run the engine in the foreground (for systemd)"),
    "status": ("queue_cmds", "queue and engine state, without the console"),
    "add": ("queue_cmds", "add training files to the queue"),
    "retry": ("queue_cmds", "retry a failed job, or every failed job"),
    "priority": ("queue_cmds", "change a job's priority"),
    "hold": ("queue_cmds", "hold a queued job so it is not started"),
    "release": ("queue_cmds", "release a held job"),
    "cancel": ("queue_cmds", "cancel a job (a running one is stopped)"),
    "pause": ("engine_cmds", "pause the queue: the running job finishes, no new one starts"),
    "resume": ("engine_cmds", "resume a paused queue"),
    "stop": ("engine_cmds", "stop the engine (the running job checkpoints first)"),
    "doctor": ("engine_cmds", "check GPU/driver, disk, permissions, stale PID and model files"),
    "validate": ("validate", "check data files without training"),
    "train": ("train", "run one guarded training job in the foreground, outside the queue"),
    "check-config": ("config_cmds", "check config.toml"),
    "init": ("config_cmds", "write a commented default config and the queue folders"),
}


def _top_help() -> str:
    width = max(len(n) for n in COMMANDS)
    lines = [
        "usage: trainconsole [--config PATH] [COMMAND] [ARGS...]",
        "",
        "A guarded LoRA fine-tuning engine and its console. With no command, opens the console.",
        "",
        "commands:",
    ]
    lines += [f"  {name:<{width}}  {text}" for name, (_, text) in COMMANDS.items()]
    lines += [
        "",
        "options:",
        "  --config PATH  config file (else $TRAINCONSOLE_CONFIG, else ./config.toml)",
        "  -h, --help     this help; `trainconsole COMMAND --help` for a command's own",
    ]
    return "\n".join(lines)


def _split_global(argv: list[str]) -> tuple[list[str], str | None, list[str]]:
    """Pull a leading --config out so it works before or after the command name."""
    pre: list[str] = []
    rest = list(argv)
    while rest and rest[0].startswith("-"):
        opt = rest.pop(0)
        if opt == "--config" and rest:
            pre += [opt, rest.pop(0)]
        elif opt.startswith("--config="):
            pre.append(opt)
        else:
            return pre, opt, rest
    return pre, None, rest


def main(argv: Sequence[str] | None = None) -> int:
    try:
        return _main(argv)
    except BrokenPipeError:
        # `trainconsole --help | head -1`: help and usage are printed outside run_guarded.
        try:
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115
        except OSError:
            pass
        return 0


def _main(argv: Sequence[str] | None) -> int:
    args_in = list(sys.argv[1:] if argv is None else argv)
    pre, stray, rest = _split_global(args_in)
    if stray in ("-h", "--help"):
        print(_top_help())
        return 0
    if stray == "--version":
        print("trainconsole 0.1.0")
        return 0
    if stray is not None:
        # Options the console itself takes (e.g. --readonly) go to the default command.
        rest = [stray, *rest]
        name = "console"
    elif rest and rest[0] in COMMANDS:
        name = rest.pop(0)
    elif rest:
        print(f"trainconsole: unknown command {rest[0]!r} (see `trainconsole --help`)", file=sys.stderr)
        return 2
    else:
        name = "console"
    module_name, text = COMMANDS[name]
    module = importlib.import_module(f"trainconsole.console.commands.{module_name}")
    parser = argparse.ArgumentParser(prog=f"trainconsole {name}" if name != "console" else "trainconsole",
                                     description=text)
    parser.add_argument("--config", metavar="PATH", default=None,
                        help="config file (else $TRAINCONSOLE_CONFIG, else ./config.toml)")
    module.build(parser, name)
    args = parser.parse_args(pre + rest)
    args.command = name
    from trainconsole.console.common import run_guarded

    return run_guarded(module.run, args)


if __name__ == "__main__":
    sys.exit(main())
