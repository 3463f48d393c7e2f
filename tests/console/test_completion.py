"""Shell completion as a shell runs it: the script `trainconsole completion bash` prints is sourced
by a real bash, its completion function called the way bash calls it on TAB, and the job ids it
offers come from the real store of the queue named by the line's --config."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.chatdata import line
from tests.helpers import run_cli

BIN = Path(sys.executable).parent


def _queue(workspace: Path) -> Path:
    config = workspace / "config.toml"
    for i in (1, 2, 3):
        (workspace / f"f{i}.jsonl").write_text(line(f"q{i}", "a"))
    assert run_cli("--config", str(config), "add", *(str(workspace / f"f{i}.jsonl") for i in (1, 2, 3))).returncode == 0
    assert run_cli("--config", str(config), "cancel", "j0002").returncode == 0
    assert run_cli("--config", str(config), "hold", "j0003").returncode == 0
    return config


def _bash_complete(line: str, cwd: Path) -> list[str]:
    if not (BIN / "trainconsole").exists() or shutil.which("bash") is None:
        pytest.skip("needs bash and the installed trainconsole script")
    script = run_cli("completion", "bash")
    assert script.returncode == 0, script.stderr
    (cwd / "comp.bash").write_text(script.stdout)
    words = line.split(" ")
    driver = "\n".join([
        "source ./comp.bash",
        f"COMP_LINE={line!r}",
        "COMP_POINT=${#COMP_LINE}",
        "COMP_WORDS=(" + " ".join(repr(w) for w in words) + ")",
        f"COMP_CWORD={len(words) - 1}",
        "fn=$(complete -p trainconsole | sed -E 's/.*-F ([^ ]+) .*/\\1/')",
        f"$fn trainconsole {words[-1]!r} {words[-2]!r}",
        "printf '%s\\n' \"${COMPREPLY[@]}\"",
    ])
    env = {"PATH": f"{BIN}:/usr/bin:/bin", "HOME": str(cwd)}
    proc = subprocess.run(["bash", "-c", driver], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    return [w for w in proc.stdout.split() if w]


def test_bash_completes_the_job_ids_each_command_can_act_on(workspace: Path) -> None:
    config = _queue(workspace)
    assert "j0002" in _bash_complete(f"trainconsole --config {config} retry ", workspace)
    offered = _bash_complete(f"trainconsole --config {config} retry j", workspace)
    assert offered == ["j0002"]  # only the cancelled job can be retried
    assert _bash_complete(f"trainconsole --config {config} release j", workspace) == ["j0003"]
    assert sorted(_bash_complete(f"trainconsole --config {config} cancel j", workspace)) == ["j0001", "j0003"]
    # A config found the ordinary way (./config.toml in the current folder) works the same.
    assert _bash_complete("trainconsole hold j", workspace) == ["j0001"]
    # Commands and options come from the same parsers the commands use.
    assert {"retry", "release", "resume"} <= set(_bash_complete("trainconsole re", workspace))
    assert "--priority" in _bash_complete("trainconsole add --pri", workspace)


def test_completion_never_creates_or_repairs_a_queue(tmp_path: Path, workspace: Path) -> None:
    assert _bash_complete("trainconsole retry j", workspace) == []
    assert not (workspace / "queue" / "state.db").exists()
    assert _bash_complete("trainconsole retry j", tmp_path) == []  # no config at all: nothing offered


@pytest.mark.parametrize("shell", ["bash", "zsh", "fish"])
def test_each_shell_gets_a_script_its_own_parser_accepts(shell: str, tmp_path: Path) -> None:
    proc = run_cli("completion", shell)
    assert proc.returncode == 0, proc.stderr
    assert "trainconsole" in proc.stdout and proc.stdout.endswith("\n")
    if shutil.which(shell) is not None:  # bash is everywhere; zsh and fish where installed
        (tmp_path / "script").write_text(proc.stdout)
        check = subprocess.run([shell, "-n", str(tmp_path / "script")], capture_output=True, text=True)
        assert check.returncode == 0, check.stderr


def test_an_unknown_shell_is_a_usage_error() -> None:
    proc = run_cli("completion", "powershell")
    assert proc.returncode == 2 and "invalid choice" in proc.stderr
