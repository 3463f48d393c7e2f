"""The two console commands as an operator meets them: `trainconsole demo` sets up once, and the
console opened in a real pseudo terminal ends cleanly when that terminal goes away (SIGHUP), rather
than spinning on a dead tty; without a terminal it says what to use instead."""

from __future__ import annotations

import fcntl
import os
import pty
import select
import signal
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

import pytest

from tests.helpers import ROOT, run_cli
from trainconsole.console.commands.demo import MARKER, demo_files, prepare
from trainconsole.engine.config import load_config
from trainconsole.engine.data.gate import validate_file


def test_demo_data_is_two_good_files_and_one_broken() -> None:
    import tempfile

    verdicts = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, data in demo_files():
            path = Path(tmp) / name
            path.write_bytes(data)
            verdicts[name] = validate_file(path).verdict
    assert verdicts == {"01-arithmetic.jsonl": "accepted", "02-number-words.jsonl": "accepted",
                        "00-broken.jsonl": "rejected"}


def test_demo_prepare_queues_once_with_a_small_training_config(tmp_path: Path) -> None:
    root = tmp_path / "demo-workspace"
    config, queued = prepare(root)
    assert queued and (root / MARKER).exists()
    cfg = load_config(config)
    assert cfg.model.base_model == "builtin:tiny-chat" and cfg.training.max_steps == 80
    incoming = sorted(p.name for p in cfg.layout().incoming.iterdir() if p.is_file())
    assert incoming == ["00-broken.jsonl", "01-arithmetic.jsonl", "02-number-words.jsonl"]
    assert "learning_rate" in config.read_text() and "#" in config.read_text()  # comments kept
    _, again = prepare(root)
    assert not again  # a second `trainconsole demo` attaches instead of queueing twice


def test_demo_dir_that_is_a_file_is_a_usage_error(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("x")
    out = run_cli("demo", "--dir", str(tmp_path / "f"), "--no-console", cwd=tmp_path)
    assert out.returncode == 2 and "not a folder" in out.stderr and "Traceback" not in out.stderr


def test_console_without_a_terminal_says_what_to_use(workspace: Path) -> None:
    out = run_cli("--config", str(workspace / "config.toml"), "--readonly")
    assert out.returncode == 2
    assert "needs a terminal" in out.stderr and "trainconsole status" in out.stderr
    assert "Traceback" not in out.stderr


def test_refresh_faster_than_a_quarter_second_is_refused(workspace: Path) -> None:
    out = run_cli("--config", str(workspace / "config.toml"), "--readonly", "--refresh", "0.1")
    assert out.returncode == 2 and "--refresh" in out.stderr


def _spawn_in_pty(workspace: Path, controlling: bool = True) -> tuple[subprocess.Popen[bytes], int]:
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))
    env = dict(os.environ, TERM="xterm-256color", PYTHONPATH=str(ROOT))
    env.pop("TRAINCONSOLE_CONFIG", None)

    def own_terminal() -> None:
        # A session leader with the pty as its controlling terminal, as under sshd: closing the
        # master hangs the terminal up and the kernel sends SIGHUP.
        os.setsid()
        fcntl.ioctl(0, termios.TIOCSCTTY, 0)

    proc = subprocess.Popen([sys.executable, "-m", "trainconsole.console.cli", "--config", str(workspace / "config.toml"),
                             "--readonly"], stdin=slave, stdout=slave, stderr=slave, cwd=workspace, env=env,
                            preexec_fn=own_terminal if controlling else os.setsid)
    os.close(slave)
    return proc, master


def _read_until(master: int, marker: bytes, timeout: float = 60.0) -> bytes:
    seen = b""
    deadline = time.monotonic() + timeout
    while marker not in seen and time.monotonic() < deadline:
        ready, _, _ = select.select([master], [], [], 0.5)
        if ready:
            try:
                seen += os.read(master, 65536)
            except OSError:
                break
    assert marker in seen, seen[-2000:]
    return seen


def test_console_exits_when_its_terminal_hangs_up(workspace: Path) -> None:
    proc, master = _spawn_in_pty(workspace)
    try:
        _read_until(master, b"engine not running")
        os.close(master)  # the SSH link drops
        assert proc.wait(timeout=60) is not None
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_console_exits_on_sighup(workspace: Path) -> None:
    proc, master = _spawn_in_pty(workspace)
    try:
        _read_until(master, b"engine not running")
        proc.send_signal(signal.SIGHUP)
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)


def test_console_exits_when_its_terminal_dies_without_a_sighup(workspace: Path) -> None:
    # Not the terminal's controlling process, so no SIGHUP comes: the periodic check must notice.
    proc, master = _spawn_in_pty(workspace, controlling=False)
    try:
        _read_until(master, b"engine not running")
        os.close(master)
        assert proc.wait(timeout=60) is not None
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_demo_dir_under_a_file_is_a_clear_message_not_a_traceback(tmp_path: Path) -> None:
    (tmp_path / "afile").write_text("")
    out = run_cli("demo", "--dir", "afile/ws", "--no-console", cwd=tmp_path, timeout=60)
    assert out.returncode == 2, out.stderr
    assert "Traceback" not in out.stderr
    assert f"cannot set up the demo workspace at {tmp_path / 'afile' / 'ws'}" in out.stderr


def test_an_engine_that_cannot_make_its_queue_folder_is_a_notice(tmp_path: Path) -> None:
    """`trainconsole` where the queue folder cannot be created: the console opens with the reason
    on screen instead of a traceback. /proc refuses new folders even to root, as a read-only
    mount would; the config check lets it through (its parent exists)."""
    from trainconsole.console.commands.console_cmd import start_engine
    from trainconsole.engine.config import default_config_text, set_value

    config = tmp_path / "config.toml"
    config.write_text(default_config_text())
    queue = f"/proc/trainconsole-test-{os.getpid()}"
    set_value(config, "paths.queue", queue)
    notice = start_engine(config)
    assert notice.startswith("could not start the engine") and queue in notice


def test_the_closing_hint_names_a_command_the_shell_will_find(tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """After `make run`, trainconsole is .venv/bin/trainconsole and not on PATH: the hint printed
    when the console closes must say that path, or a new user's next command is not found."""
    from trainconsole.console.commands.console_cmd import shown_command

    script = tmp_path / ".venv" / "bin" / "trainconsole"
    script.parent.mkdir(parents=True)
    script.write_text("#!/bin/sh\n")
    script.chmod(0o755)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", [str(script)])
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    assert shown_command() == ".venv/bin/trainconsole"
    monkeypatch.setenv("PATH", f"{script.parent}:/usr/bin:/bin")
    assert shown_command() == "trainconsole"
