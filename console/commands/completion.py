"""``trainconsole completion SHELL``: the shell completion script (bash, zsh or fish), from the
same argument parsers the commands use (argcomplete), with job ids completed from the store.

Install it once, e.g. for bash ``trainconsole completion bash > ~/.local/share/bash-completion/completions/trainconsole``,
for zsh ``trainconsole completion zsh > "${fpath[1]}/_trainconsole"``, for fish
``trainconsole completion fish > ~/.config/fish/completions/trainconsole.fish``. Each TAB then runs
``trainconsole`` with argcomplete's environment set: ``trainconsole.console.cli`` answers before
doing anything else (no torch, no Textual; the store read-only)."""

from __future__ import annotations

import argparse
import sys

SHELLS = ("bash", "zsh", "fish")


def build(parser: argparse.ArgumentParser, name: str) -> None:
    parser.description = ("Print the completion script for SHELL on stdout. bash: save it as "
                          "~/.local/share/bash-completion/completions/trainconsole; zsh: as _trainconsole "
                          "in a folder of $fpath; fish: as ~/.config/fish/completions/trainconsole.fish.")
    parser.add_argument("shell", metavar="SHELL", choices=SHELLS, help="bash, zsh or fish")


def run(args: argparse.Namespace) -> int:
    from argcomplete.shell_integration import shellcode

    sys.stdout.write(shellcode(["trainconsole"], shell=args.shell))
    return 0
