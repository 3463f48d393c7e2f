"""Console benchmark: what the console costs while an engine trains, run as an operator runs it.

The console (the real app, the real WorkspaceClient) runs in a child process under a pseudo
terminal of 120x40; this process reads the terminal and counts bytes. A second child plays the
engine: its PID file says it runs, and it appends 20 step events a second to the running job's
event log (with a 2,000-step history already there, so the plot has a real curve to draw), over a
store of 30 jobs.

  cpu_pct_median     median CPU of the console process, % of one core, over 3 s windows while
                     the engine writes 20 steps/s (default 1 s refresh); target < 3
  first_frame_s      from starting the console process to its first screen with data (median of
                     five starts); target < 1
  idle_bytes_per_s   bytes written to the terminal per second when nothing changes (the engine
                     alive, no events)
  naive_*            the baseline, in the same run on the same data: the same console with the
                     table rebuilt and the plot redrawn on every refresh (how a first draft does
                     it); cpu_ratio_vs_naive is ours over it

    python bench/console.py [--quick]
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import json
import os
import pty
import signal
import statistics
import struct
import subprocess
import sys
import tempfile
import termios
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
# bench/console.py would shadow the console package: the project root comes first instead.
sys.path[0] = str(ROOT)

import psutil  # noqa: E402

COLS, ROWS = 120, 40

ENGINE = r"""
import os, sys, time, math
from pathlib import Path
from trainconsole.engine.config import load_config
from trainconsole.engine.events import EventLog
from trainconsole.engine.store import Store
cfg = load_config(Path(sys.argv[1]))
layout = cfg.layout()
job_id, quiet = sys.argv[2], Path(sys.argv[3])
log = EventLog(layout.job_events(job_id))
step = 2000
next_t = time.monotonic()
last_progress = 0.0
while True:
    if not quiet.exists():
        step += 1
        loss = 2.0 * math.exp(-step / 3000) + 0.3 + 0.05 * math.sin(step / 7)
        log.emit("step", job_id=job_id, step=step, max_steps=100000, loss=loss, lr=1e-4,
                 grad_norm=1.0, tokens_per_s=2000.0)
        if step % 200 == 0:
            log.emit("eval", job_id=job_id, step=step, eval_loss=loss + 0.1)
        if time.monotonic() - last_progress > 1.0:
            with Store.open(layout, repair=False) as store:
                store.progress(job_id, step, 100000)
            last_progress = time.monotonic()
    next_t += 0.05
    time.sleep(max(0.0, next_t - time.monotonic()))
"""

CONSOLE = r"""
import sys
from pathlib import Path
from trainconsole.engine.config import load_config
from trainconsole.console.app import TrainConsole
from trainconsole.console.client import WorkspaceClient
TrainConsole(WorkspaceClient(load_config(Path(sys.argv[1]))), poll_interval=1.0).run()
"""

NAIVE = r"""
# The same console as a first draft would write it: the table rebuilt and the plot redrawn on
# every refresh, with a layout pass each time. The same data, the same terminal.
import sys
from pathlib import Path
from trainconsole.engine.config import load_config
from trainconsole.console.app import TrainConsole
from trainconsole.console.client import WorkspaceClient
from trainconsole.console.widgets.loss_plot import LossPlot
from trainconsole.console.widgets.queue_table import QueueTable, cells

def rebuild(self, jobs):
    self.clear()
    for job in jobs:
        self.add_row(*cells(job), key=job.id)
    self._shown = {job.id: cells(job) for job in jobs}
    self.refresh(layout=True)
    return True

draw = LossPlot._draw
def redraw(self):
    self._drawn = None
    draw(self)

QueueTable.apply = rebuild
LossPlot._draw = redraw
TrainConsole(WorkspaceClient(load_config(Path(sys.argv[1]))), poll_interval=1.0).run()
"""


def make_workspace(root: Path) -> tuple[Path, str]:
    from trainconsole.engine.config import default_config_text, load_config
    from trainconsole.engine.events import EventLog
    from trainconsole.engine.store import Store

    config = root / "config.toml"
    config.write_text(default_config_text())
    layout = load_config(config).layout()
    layout.ensure()
    ids = []
    with Store.open(layout) as store:
        for i in range(30):
            body = f'{{"messages": [{{"role": "user", "content": "q{i}"}}, {{"role": "assistant", "content": "a"}}]}}\n'.encode()
            src = layout.tmp / f"file-{i:02d}.jsonl"
            src.write_bytes(body)
            job = store.add_job(src.name, src, hashlib.sha256(body).hexdigest(), len(body),
                                ("high", "normal", "low")[i % 3])
            assert job is not None
            ids.append(job.id)
        store.start(ids[0], None, None)
    log = EventLog(layout.job_events(ids[0]))
    import math

    for step in range(1, 2001):
        log.emit("step", job_id=ids[0], step=step, max_steps=100000,
                 loss=2.0 * math.exp(-step / 3000) + 0.3 + 0.05 * math.sin(step / 7), lr=1e-4,
                 grad_norm=1.0, tokens_per_s=2000.0)
    log.close()
    EventLog(layout.engine_events).alert(4, "file-29.jsonl line 1: not valid JSON", severity="critical",
                                         job_id=ids[-1])
    return config, ids[0]


class PtyApp:
    """A child process on a pseudo terminal; a thread drains and counts what it writes."""

    def __init__(self, argv: list[str]) -> None:
        master, slave = pty.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", ROWS, COLS, 0, 0))
        env = dict(os.environ, TERM="xterm-256color", COLORTERM="truecolor", PYTHONPATH=str(ROOT))
        env.pop("TEXTUAL", None)
        self.started = time.monotonic()
        self.proc = subprocess.Popen(argv, stdin=slave, stdout=slave, stderr=slave, cwd=ROOT, env=env,
                                     start_new_session=True)
        os.close(slave)
        self.master = master
        self.lock = threading.Lock()
        self.total = 0
        self.buffer = bytearray()
        self.first_data_at: float | None = None
        self.marker = b""
        self.thread = threading.Thread(target=self._drain, daemon=True)
        self.thread.start()

    def _drain(self) -> None:
        while True:
            try:
                chunk = os.read(self.master, 65536)
            except OSError:
                return
            if not chunk:
                return
            with self.lock:
                self.total += len(chunk)
                if self.first_data_at is None:
                    self.buffer += chunk
                    if self.marker and self.marker in self.buffer:
                        self.first_data_at = time.monotonic()
                        self.buffer.clear()

    def bytes_written(self) -> int:
        with self.lock:
            return self.total

    def wait_first(self, marker: bytes, timeout: float = 30.0) -> float:
        with self.lock:
            self.marker = marker
            if marker in self.buffer and self.first_data_at is None:
                self.first_data_at = time.monotonic()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.first_data_at is not None:
                return self.first_data_at - self.started
            time.sleep(0.01)
        raise RuntimeError(f"no first frame with {marker!r} within {timeout}s")

    def cpu_samples(self, seconds: float) -> list[float]:
        proc = psutil.Process(self.proc.pid)
        samples = []
        before = proc.cpu_times()
        t0 = time.monotonic()
        end = t0 + seconds
        while time.monotonic() < end:
            # Windows of 3 s: the kernel counts CPU in 10 ms ticks, 1 s windows would read 0/1/2/3 %.
            time.sleep(3.0)
            after = proc.cpu_times()
            t1 = time.monotonic()
            samples.append(100.0 * ((after.user - before.user) + (after.system - before.system)) / (t1 - t0))
            before, t0 = after, t1
        return samples

    def stop(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        os.close(self.master)


def measure(script: str, config: Path, layout: Any, quiet: Path, load_s: float,
            idle_s: float) -> tuple[float, list[float], float]:
    """(first frame s, CPU % per second under 20 steps/s, idle bytes/s) for one console script."""
    quiet.unlink(missing_ok=True)
    app = PtyApp([sys.executable, "-c", script, str(config)])
    try:
        first = app.wait_first(b"engine running")
        time.sleep(3.0)  # past start-up work
        cpu = app.cpu_samples(load_s)
        quiet.touch()
        time.sleep(3.0)  # the last events drain and the screen settles
        b0, t0 = app.bytes_written(), time.monotonic()
        time.sleep(idle_s)
        idle = (app.bytes_written() - b0) / (time.monotonic() - t0)
    finally:
        app.stop()
    return first, cpu, idle


def run(quick: bool) -> dict[str, Any]:
    load_s, idle_s = (21.0, 8.0) if quick else (90.0, 30.0)
    with tempfile.TemporaryDirectory(prefix="tc-bench-console-") as tmp:
        root = Path(tmp)
        config, job_id = make_workspace(root)
        from trainconsole.engine.config import load_config

        layout = load_config(config).layout()
        quiet = root / "quiet"
        engine = subprocess.Popen([sys.executable, "-c", ENGINE, str(config), job_id, str(quiet)], cwd=ROOT,
                                  env=dict(os.environ, PYTHONPATH=str(ROOT)))
        try:
            me = psutil.Process(engine.pid)
            layout.pidfile.write_text(json.dumps({"pid": engine.pid, "start_time": me.create_time(),
                                                  "started_at": "bench"}))
            time.sleep(1.0)
            first, cpu, idle = measure(CONSOLE, config, layout, quiet, load_s, idle_s)
            firsts = [first]
            for _ in range(4):  # start-up time is noisy on a shared machine: the median of five
                app = PtyApp([sys.executable, "-c", CONSOLE, str(config)])
                try:
                    firsts.append(app.wait_first(b"engine running"))
                finally:
                    app.stop()
            first = statistics.median(firsts)
            _, naive_cpu, naive_idle = measure(NAIVE, config, layout, quiet, load_s, idle_s)
        finally:
            engine.terminate()
            engine.wait(timeout=10)
    med = statistics.median(cpu)
    naive_med = statistics.median(naive_cpu)
    return {
        "cpu_pct_median": round(med, 2),
        "cpu_pct_p90": round(sorted(cpu)[int(0.9 * (len(cpu) - 1))], 2),
        "first_frame_s": round(first, 3),
        "idle_bytes_per_s": round(idle, 1),
        "naive_cpu_pct_median": round(naive_med, 2),
        "naive_idle_bytes_per_s": round(naive_idle, 1),
        "cpu_ratio_vs_naive": round(med / naive_med, 3) if naive_med > 0 else 0.0,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="shorter phases (under a minute)")
    args = parser.parse_args()
    metrics = run(args.quick)
    targets = {"cpu_pct_median": "< 3", "first_frame_s": "< 1", "idle_bytes_per_s": "small"}
    print(f"{'metric':<26} {'value':>10}  target")
    for key, value in metrics.items():
        print(f"{key:<26} {value:>10}  {targets.get(key, '')}")
    out = ROOT / "bench" / "results" / "console.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"benchmark": "console", "quick": args.quick, "metrics": metrics}, indent=2) + "\n")
    print(f"wrote {out.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
