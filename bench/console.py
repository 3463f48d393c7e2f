"""Console benchmark: what the console costs on a long run, measured as an operator runs it.

The console (the real app, the real WorkspaceClient) runs in a child process under a pseudo
terminal of 120x40; this process reads the terminal and counts bytes. A second child replays an
engine at a real pace: its PID file says it runs, it appends a step event every 1/48 s to the
running job's log (the rate the issue measured a real engine at) with an evaluation every 500
steps, and updates the store's progress once a second, over a queue of 30 jobs. The running job
already has a 100k-step history (a 20 MB log, 300 alerts of an old plateau guard among it), so
the console starts cold on a long run: it opens with the engine alive but quiet, is measured
idle once its history is read, then while the engine trains.

  cpu_pct_median      median CPU of the console process, % of one core, over 3 s windows while
                      the engine trains (1 s refresh); target <= 1.5
  train_bytes_per_s   bytes the console writes to the terminal per second over the same windows;
                      target <= 5000
  idle_bytes_per_s    the same when nothing changes (the engine alive, no new events); target 0
  first_frame_s       from starting the console process to its first frame showing the loss plot
                      of the running job (median of several starts); target < 1
  cold_start_cpu_s    CPU seconds the console spent from its start until its screen settled (the
                      engine quiet): the imports, the first frame and the older 20 MB of history
                      read behind it; history_read_s is when it settled
  naive_*             the baseline, in the same run on the same data: the same console redrawing
                      naively (table rebuilt, plot and status line repainted whole, every
                      refresh); cpu_ratio_vs_naive and bytes_ratio_vs_naive are ours over it

    python bench/console.py [--quick]     (--quick: under two minutes)
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import json
import math
import os
import pty
import random
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

import orjson  # noqa: E402
import psutil  # noqa: E402

COLS, ROWS = 120, 40
HISTORY = 100_000
STEPS_PER_S = 48.0
MAX_STEPS = 400_000
MARKER = b"loss j0001 step"  # the plot's title, once the running job's curve is drawn


def python_path() -> str:
    """The project first, then whatever the caller's PYTHONPATH holds (packages installed aside)."""
    return os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)


def loss_at(step: int, rng: random.Random) -> float:
    return 0.6 + 2.0 * math.exp(-step / 8000) + rng.gauss(0.0, 0.05)


ENGINE = r"""
import math, random, sys, time
from pathlib import Path
from trainconsole.engine.config import load_config
from trainconsole.engine.events import EventLog
from trainconsole.engine.store import Store
cfg = load_config(Path(sys.argv[1]))
layout = cfg.layout()
job_id, quiet, step, rate, max_steps = sys.argv[2], Path(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5]), int(sys.argv[6])
rng = random.Random(1)
log = EventLog(layout.job_events(job_id))
next_t = time.monotonic()
last_progress = 0.0
while True:
    if not quiet.exists():
        step += 1
        loss = 0.6 + 2.0 * math.exp(-step / 8000) + rng.gauss(0.0, 0.05)
        log.emit("step", job_id=job_id, step=step, max_steps=max_steps, loss=round(loss, 6), lr=1e-4,
                 grad_norm=1.0, tokens_per_s=2000.0, epoch=None, memory_mb=None, step_time_s=0.02)
        if step % 500 == 0:
            log.emit("eval", job_id=job_id, step=step, eval_loss=loss + 0.1)
        if time.monotonic() - last_progress > 1.0:
            with Store.open(layout, repair=False) as store:
                store.progress(job_id, step, max_steps)
            last_progress = time.monotonic()
    next_t += 1.0 / rate
    time.sleep(max(0.0, next_t - time.monotonic()))
"""

# The console as an operator opens it: `trainconsole --config PATH` (the engine runs: it attaches).
CONSOLE = r"""
import sys
from trainconsole.console.cli import main
sys.exit(main(["--config", sys.argv[1]]))
"""

NAIVE = r"""
# The same console redrawing as a first draft would: the table rebuilt, and the plot and the
# status line repainted whole on every refresh. The same data, the same terminal.
import sys
from trainconsole.console.widgets.engine_state import EngineState, render_state
from trainconsole.console.widgets.loss_plot import LossPlot, plot_grid
from trainconsole.console.widgets.queue_table import QueueTable, cells

def rebuild(self, jobs):
    self._jobs = jobs
    self.clear()
    for job in jobs:
        self.add_row(*cells(job), key=job.id)
    self._shown = {job.id: cells(job) for job in jobs}
    self.refresh(layout=True)
    return True

def redraw(self):
    self._grid = plot_grid(self.view, self.content_size.width, self.content_size.height, self.log_y)
    self._strips.clear()
    self.refresh()

def restate(self, snap, readonly, filter_text):
    self._text = render_state(snap, readonly, filter_text)
    self.refresh()

QueueTable.apply = rebuild
LossPlot._draw = redraw
EngineState.apply = restate
from trainconsole.console.cli import main
sys.exit(main(["--config", sys.argv[1]]))
"""


def make_workspace(root: Path) -> tuple[Path, str, int]:
    """A queue of 30 jobs, the first running with a ``HISTORY``-step log; (config, job, bytes)."""
    from trainconsole.engine.config import default_config_text, load_config
    from trainconsole.engine.events import EventLog, make_event
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
        store.progress(ids[0], HISTORY, MAX_STEPS)
    # The history as the worker writes it, one line per step, with times an hour apart end to end.
    rng = random.Random(0)
    path = layout.job_events(ids[0])
    path.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.time() - HISTORY / STEPS_PER_S
    with open(path, "wb") as out:
        lines = []
        for step in range(1, HISTORY + 1):
            event = make_event("step", job_id=ids[0], step=step, max_steps=MAX_STEPS,
                               loss=round(loss_at(step, rng), 6), lr=1e-4, grad_norm=1.0,
                               tokens_per_s=2000.0, epoch=None, memory_mb=None, step_time_s=0.02)
            event["t"] = round(t0 + step / STEPS_PER_S, 3)
            lines.append(orjson.dumps(event))
            if step % 500 == 0:
                lines.append(orjson.dumps(dict(make_event("eval", job_id=ids[0], step=step,
                                                          eval_loss=loss_at(step, rng) + 0.1),
                                               t=event["t"])))
            if step % 300 == 0 and step > 10_000:
                # An old plateau guard: a new key each time (the header must count them all).
                lines.append(orjson.dumps(dict(make_event(
                    "alert", case=66, severity="warning", job_id=ids[0], key=f"plateau-{step}",
                    message=f"loss plateau at step {step}"), t=event["t"])))
            if len(lines) >= 10_000:
                out.write(b"\n".join(lines) + b"\n")
                lines = []
        out.write(b"\n".join(lines) + b"\n" if lines else b"")
    EventLog(layout.engine_events).alert(4, "file-29.jsonl line 1: not valid JSON", severity="critical",
                                         job_id=ids[-1])
    return config, ids[0], path.stat().st_size


class PtyApp:
    """A child process on a pseudo terminal; a thread drains and counts what it writes."""

    def __init__(self, argv: list[str]) -> None:
        master, slave = pty.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", ROWS, COLS, 0, 0))
        env = dict(os.environ, TERM="xterm-256color", COLORTERM="truecolor", PYTHONPATH=python_path())
        env.pop("TEXTUAL", None)
        env.pop("PYTHONDONTWRITEBYTECODE", None)  # an installed console has its bytecode (see compile_project)
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

    def wait_first(self, marker: bytes, timeout: float = 60.0) -> float:
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

    def wait_quiet(self, quiet_s: float, limit: float) -> float:
        """When nothing was written for ``quiet_s`` (or ``limit`` passed): the time it began."""
        deadline = time.monotonic() + limit
        last, since = self.bytes_written(), time.monotonic()
        while time.monotonic() < deadline:
            time.sleep(0.1)
            now = self.bytes_written()
            if now != last:
                last, since = now, time.monotonic()
            elif time.monotonic() - since >= quiet_s:
                break
        return since

    def windows(self, seconds: float, window: float = 3.0) -> tuple[list[float], list[float]]:
        """(CPU % of one core, terminal bytes/s) per window. Windows of 3 s: the kernel counts CPU
        in 10 ms ticks, so 1 s windows would read 0/1/2/3 %."""
        proc = psutil.Process(self.proc.pid)
        cpu, rates = [], []
        before, b0, t0 = proc.cpu_times(), self.bytes_written(), time.monotonic()
        end = t0 + seconds
        while time.monotonic() < end:
            time.sleep(window)
            after, b1, t1 = proc.cpu_times(), self.bytes_written(), time.monotonic()
            cpu.append(100.0 * ((after.user - before.user) + (after.system - before.system)) / (t1 - t0))
            rates.append((b1 - b0) / (t1 - t0))
            before, b0, t0 = after, b1, t1
        return cpu, rates

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


def measure(script: str, config: Path, quiet: Path, warm_s: float, load_s: float,
            idle_s: float) -> dict[str, Any]:
    """Started cold on the long run with the engine alive but quiet: the first frame, the CPU the
    console spent until its history is read, the bytes it sends when nothing changes; then the
    engine trains and the CPU and bytes per window are measured."""
    quiet.touch()
    app = PtyApp([sys.executable, "-c", script, str(config)])
    proc = psutil.Process(app.proc.pid)
    try:
        first = app.wait_first(MARKER)
        # The older history is read in behind the first frame: done when the screen stops moving.
        settled = app.wait_quiet(2.5, limit=warm_s) - app.started
        cold = proc.cpu_times()
        b0, t0 = app.bytes_written(), time.monotonic()
        time.sleep(idle_s)
        idle = (app.bytes_written() - b0) / (time.monotonic() - t0)
        quiet.unlink()
        time.sleep(3.0)  # the step rate needs a second of events
        cpu, rates = app.windows(load_s)
    finally:
        app.stop()
    return {"first": first, "cpu": cpu, "rates": rates, "idle": idle,
            "cold_cpu_s": cold.user + cold.system, "settled": settled}


def first_frames(config: Path, count: int) -> list[float]:
    out = []
    for _ in range(count):
        app = PtyApp([sys.executable, "-c", CONSOLE, str(config)])
        try:
            out.append(app.wait_first(MARKER))
        finally:
            app.stop()
    return out


def compile_project() -> None:
    """Bytecode for the project's modules, as `pip install` writes it: with PYTHONDONTWRITEBYTECODE
    set (as in some shells and CI), every start would compile the console's sources again, about a
    quarter of the CPU to the first frame, which no installed console pays."""
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(ROOT / "console"), str(ROOT / "engine")],
                   check=True, env=dict(os.environ, PYTHONDONTWRITEBYTECODE=""))


def run(quick: bool) -> dict[str, Any]:
    warm_s, load_s, idle_s, starts = (40.0, 15.0, 6.0, 2) if quick else (60.0, 90.0, 30.0, 6)
    compile_project()
    with tempfile.TemporaryDirectory(prefix="tc-bench-console-") as tmp:
        root = Path(tmp)
        config, job_id, log_bytes = make_workspace(root)
        from trainconsole.engine.config import load_config

        layout = load_config(config).layout()
        quiet = root / "quiet"
        engine = subprocess.Popen([sys.executable, "-c", ENGINE, str(config), job_id, str(quiet), str(HISTORY),
                                   str(STEPS_PER_S), str(MAX_STEPS)], cwd=ROOT,
                                  env=dict(os.environ, PYTHONPATH=python_path()))
        try:
            me = psutil.Process(engine.pid)
            layout.pidfile.write_text(json.dumps({"pid": engine.pid, "start_time": me.create_time(),
                                                  "started_at": "bench"}))
            time.sleep(1.0)
            ours = measure(CONSOLE, config, quiet, warm_s, load_s, idle_s)
            quiet.touch()
            firsts = [ours["first"], *first_frames(config, starts)]
            naive = measure(NAIVE, config, quiet, warm_s, load_s, idle_s)
        finally:
            engine.terminate()
            engine.wait(timeout=10)
    med, naive_med = statistics.median(ours["cpu"]), statistics.median(naive["cpu"])
    train_bytes, naive_bytes = statistics.mean(ours["rates"]), statistics.mean(naive["rates"])
    return {
        "cpu_pct_median": round(med, 2),
        "cpu_pct_p90": round(sorted(ours["cpu"])[int(0.9 * (len(ours["cpu"]) - 1))], 2),
        "train_bytes_per_s": round(train_bytes, 1),
        "idle_bytes_per_s": round(ours["idle"], 1),
        "first_frame_s": round(statistics.median(firsts), 3),
        "naive_cpu_pct_median": round(naive_med, 2),
        "naive_train_bytes_per_s": round(naive_bytes, 1),
        "naive_idle_bytes_per_s": round(naive["idle"], 1),
        "naive_first_frame_s": round(naive["first"], 3),
        "cold_start_cpu_s": round(ours["cold_cpu_s"], 2),
        "history_read_s": round(ours["settled"], 2),
        "naive_cold_start_cpu_s": round(naive["cold_cpu_s"], 2),
        "cpu_ratio_vs_naive": round(med / naive_med, 3) if naive_med > 0 else 0.0,
        "bytes_ratio_vs_naive": round(train_bytes / naive_bytes, 3) if naive_bytes > 0 else 0.0,
        "history_steps": HISTORY,
        "history_log_mb": round(log_bytes / 1e6, 1),
        "engine_steps_per_s": STEPS_PER_S,
        "load_windows": len(ours["cpu"]),
        "machine_load_1m": round(os.getloadavg()[0], 2),
        "machine_cpus": os.cpu_count(),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="shorter phases (under two minutes)")
    args = parser.parse_args()
    started = time.monotonic()
    metrics = run(args.quick)
    metrics["bench_s"] = round(time.monotonic() - started, 1)
    targets = {"cpu_pct_median": "<= 1.5", "train_bytes_per_s": "<= 5000", "idle_bytes_per_s": "0",
               "first_frame_s": "< 1"}
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
