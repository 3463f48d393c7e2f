# PYTHON_ARGCOMPLETE_OK
"""``trainconsole``: one entry point, each command in its own module, imported only when used, so
``trainconsole status`` never pays for Textual, let alone torch."""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence
from typing import Any

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
    "logs": ("job_cmds", "print a job's log; -f follows it until the job ends"),
    "show": ("job_cmds", "one job: settings, attempts, rungs, adapter, last losses and paths"),
    "ack": ("alert_cmds", "acknowledge alerts in every console; without arguments, list the unread ones"),
    "adapters": ("adapter_cmds", "list the lineages and their adapters"),
    "export": ("adapter_cmds", "write an adapter, or the base model with it merged, to a new folder"),
    "pause": ("engine_cmds", "pause the queue: the running job finishes, no new one starts"),
    "resume": ("engine_cmds", "resume a paused queue"),
    "stop": ("engine_cmds", "stop the engine (the running job checkpoints first)"),
    "doctor": ("engine_cmds", "check GPU/driver, disk, permissions, stale PID and model files"),
    "validate": ("validate", "check data files without training"),
    "train": ("train", "run one guarded training job in the foreground, outside the queue"),
    "check-config": ("config_cmds", "check config.toml"),
    "init": ("config_cmds", "write a commented default config and the queue folders"),
    "completion": ("completion", "print the shell completion script (bash, zsh or fish)"),
}

# What a JOB argument of each command completes to: jobs in these states (None: every job).
JOB_STATES: dict[str, tuple[str, ...] | None] = {
    "retry": ("failed", "cancelled"), "priority": ("queued", "held", "running"), "hold": ("queued",),
    "release": ("held",), "cancel": ("queued", "held", "running"),
}
JOB_DESTS = ("job", "jobs", "after")


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


class _JobCompleter:
    """Job ids from the store (read-only), each with its name and state as the description."""

    def __init__(self, states: tuple[str, ...] | None) -> None:
        self.states = states

    def __call__(self, prefix: str, parsed_args: argparse.Namespace, **kwargs: object) -> dict[str, str]:
        from trainconsole.console.common import load_layout
        from trainconsole.engine.store.lookup import job_ids

        try:
            layout = load_layout(parsed_args)[1]
        except Exception:  # noqa: BLE001 - no usable config: nothing to offer, never an error
            return {}
        return {job_id: f"{status}  {name}" for job_id, name, status in job_ids(layout, self.states)
                if job_id.startswith(prefix)}


class _Recording(argparse.ArgumentParser):
    """Keeps the actions its commands add, so completers can be attached to them afterwards."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.added: list[argparse.Action] = []  # before argparse's own __init__ adds --help
        super().__init__(*args, **kwargs)

    def add_argument(self, *args: Any, **kwargs: Any) -> argparse.Action:
        action = super().add_argument(*args, **kwargs)
        self.added.append(action)
        return action


def _completion_parser() -> argparse.ArgumentParser:
    """Every command's parser under one, for argcomplete (built only when a shell asks)."""
    parser = argparse.ArgumentParser(prog="trainconsole")
    parser.add_argument("--config", metavar="PATH", default=None)
    subs = parser.add_subparsers(dest="command", parser_class=_Recording)
    for name, (module_name, text) in COMMANDS.items():
        module = importlib.import_module(f"trainconsole.console.commands.{module_name}")
        sub = subs.add_parser(name, help=text, description=text)
        sub.add_argument("--config", metavar="PATH", default=None)
        module.build(sub, name)
        for action in sub.added:
            if action.dest in JOB_DESTS:
                action.completer = _JobCompleter(JOB_STATES.get(name))  # type: ignore[attr-defined]
    return parser


def _main(argv: Sequence[str] | None) -> int:
    if "_ARGCOMPLETE" in os.environ and argv is None:
        import argcomplete

        argcomplete.autocomplete(_completion_parser())  # answers the shell and exits
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
