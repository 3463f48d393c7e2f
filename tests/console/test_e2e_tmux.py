"""`trainconsole demo` in a real terminal (tmux): the engine starts detached, the first job trains to
the end, and the screen shows the queue, the resource gauges, the loss plot and the broken file's
alert. Then `q` closes the console while the engine keeps running. Skips, saying so, without tmux
(CI installs it)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import ROOT, run_cli
from trainconsole.console.commands.demo import DEMO_SETTINGS

TMUX = shutil.which("tmux")
pytestmark = pytest.mark.skipif(TMUX is None, reason="tmux is not installed: the terminal end-to-end "
                                                      "test needs it (apt-get install tmux)")


class Tmux:
    def __init__(self, socket: str) -> None:
        self.socket = socket

    def __call__(self, *args: str) -> str:
        out = subprocess.run([str(TMUX), "-L", self.socket, "-f", "/dev/null", *args],
                             capture_output=True, text=True, timeout=30)
        return out.stdout

    def screen(self) -> str:
        return self("capture-pane", "-p", "-t", "demo")

    def wait_for(self, check: str, timeout: float) -> str:
        """Poll the screen until ``check`` appears (generous: training runs on 2 shared cores)."""
        deadline = time.monotonic() + timeout
        text = ""
        while time.monotonic() < deadline:
            text = self.screen()
            if check in text:
                return text
            time.sleep(1.0)
        raise AssertionError(f"{check!r} never appeared on the screen; last screen:\n{text}")


@pytest.fixture
def demo_dir(tmp_path: Path, shared_cache: Path) -> Iterator[Path]:
    """A demo workspace whose config shares the session's model cache (so the built-in model is
    built once); `trainconsole demo` fills in the rest itself."""
    from trainconsole.engine.config import default_config_text, set_value

    ws = tmp_path / "demo-workspace"
    ws.mkdir()
    config = ws / "config.toml"
    config.write_text(default_config_text().replace('cache = ".cache"', f'cache = "{shared_cache}"'))
    for key, value in DEMO_SETTINGS.items():
        set_value(config, key, value)
    yield ws
    run_cli("--config", str(config), "stop", timeout=120)


@pytest.mark.slow
@pytest.mark.edge(4, 26)
def test_demo_in_a_real_terminal(demo_dir: Path) -> None:
    tmux = Tmux(f"tc-e2e-{os.getpid()}")
    env = {k: v for k, v in os.environ.items() if not k.startswith("TMUX")}
    env.pop("TRAINCONSOLE_CONFIG", None)
    env["PYTHONPATH"] = str(ROOT)
    command = (f"cd {demo_dir.parent} && {sys.executable} -m trainconsole.console.cli demo --dir {demo_dir.name}; "
               "echo CONSOLE-EXITED $?; sleep 60")
    subprocess.run([str(TMUX), "-L", tmux.socket, "-f", "/dev/null", "new-session", "-d", "-s", "demo",
                    "-x", "80", "-y", "24", command], env=env, check=True, timeout=30)
    try:
        tmux.wait_for("engine running", timeout=120)
        screen = tmux.wait_for(" done ", timeout=420)
        tmux.wait_for("#4 ", timeout=240)  # the broken file's alert (malformed JSON)
        # The critical alert's toast covers the resources panel for a few seconds at 80x24.
        screen = tmux.wait_for("disk queue", timeout=60)
        # 80 columns, as an operator's default terminal: a long name is clipped, never wrapped.
        assert "01-arithmetic.jsonl" in screen and "02-number-words.js" in screen, screen
        assert "00-broken.jsonl" in screen and "failed" in screen
        assert "queue" in screen and "resources" in screen
        assert "RAM" in screen and "disk queue+runs" in screen, screen  # one disk for both
        assert "no GPU: training on CPU" in screen or "GPU0" in screen
        assert "critical" in screen
        # The plot with its legend (a toast for the critical alert may cover it for a few seconds).
        screen = tmux.wait_for("smoothed", timeout=60)
        assert "loss j0" in screen, screen
        assert "Traceback" not in screen
        deadline = time.monotonic() + 420
        while screen.count(" done ") < 2 and time.monotonic() < deadline:  # both bundled tasks trained
            time.sleep(1.0)
            screen = tmux.screen()
        assert screen.count(" done ") == 2, screen
        assert "#69 " not in screen, screen  # no low held-out accuracy alert on the bundled data
        tmux("send-keys", "-t", "demo", "q")
        after = tmux.wait_for("CONSOLE-EXITED 0", timeout=30)
        assert "the engine keeps training" in after and "--config" in after
        status = run_cli("--config", str(demo_dir / "config.toml"), "status", timeout=60)
        assert "not running" not in status.stdout.split("\n", 1)[0]  # q left the engine running
    finally:
        tmux("kill-server")
