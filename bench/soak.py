"""A month in an hour: one daemon driven through many small jobs, failures, retries and restarts,
to see what grows. The workers are bench/workers/soak_worker.py (the worker protocol in the standard
library: spawned, watched, reaped and judged like the real one, at a fraction of its cost), so
the figures are the daemon's.

  soak_daemon_rss_growth_mb   the daemon's resident memory at the end of its longest run minus
                              after that run's first jobs (its warm-up); target <= 10
  soak_disk_mb_per_job        the workspace (queue, runs, adapters) after retention, per job
  soak_status_json_s_start    `trainconsole status --json` (median of 3) on the first queue
  soak_status_json_s_end      ... and at the end, with every job in the store; and their ratio
  soak_engine_log_mb          queue/events.jsonl plus its rotated part, bounded by rotation
                              (retention.events_max_mb = 0.05 here, so a quick run rotates it)
  soak_jobs_lost              files dropped that never became a job, or became two

The mix: 85% jobs that train, 7% killed by SIGKILL every attempt (retried, then failed), 4% a
bug (failed at once), 4% out of memory every attempt (down the OOM ladder, then failed). Device
faults are left out: three within an hour pause the queue for a person, by design. The daemon is SIGKILLed once
(after a quarter of the jobs: recovery), stopped and restarted once (after half), and retention
sweeps every second with the default log_days (a done job's checkpoints go, its log stays).

    python bench/soak.py [--quick]     (quick: 200 jobs, under two minutes; full: 2,000)
Writes bench/results/soak.json and prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import psutil  # noqa: E402

from trainconsole.engine.config import default_config_text, load_config, set_value  # noqa: E402
from trainconsole.engine.events import rotated  # noqa: E402
from trainconsole.engine.store import Store  # noqa: E402

WORKER = Path(__file__).parent / "workers" / "soak_worker.py"  # not bench/*.py: `make bench` runs those
MIX = (("ok", 85), ("crash", 7), ("bug", 4), ("oom", 4))
FAULTS = "crash-*=crash@2;bug-*=bug@1;oom-*=oom@1"
WANT = {"ok": "done", "crash": "failed", "bug": "failed", "oom": "failed"}
BATCH = 20


def _serve(config: str) -> int:
    """The daemon, as `trainconsole daemon` runs it, with the soak's worker in place of the real one."""
    from trainconsole.engine.daemon import launcher
    from trainconsole.engine.daemon.main import run_daemon

    def command(self: Any, spec: Path) -> list[str]:
        return [sys.executable, str(WORKER), str(spec)]

    launcher.LocalLauncher.command = command  # type: ignore[method-assign]
    return run_daemon(load_config(Path(config)))


def _workspace(base: Path) -> Path:
    config = base / "config.toml"
    config.write_text(default_config_text().replace('cache = ".cache"', f'cache = "{base / "cache"}"'))
    for key, value in {"queue.poll_s": 0.1, "queue.stable_s": 0.0, "queue.backoff_s": 0.0,
                       "queue.max_attempts": 2, "hardware.min_free_ram_mb": 0,
                       "hardware.min_free_disk_mb": 0, "guards.hang_floor_s": 30.0,
                       "retention.every_s": 1.0, "retention.events_max_mb": 0.05}.items():
        set_value(config, key, value)
    return config


def _names(n: int) -> list[str]:
    kinds = [k for k, share in MIX for _ in range(share)]
    return [f"{kinds[(i * 37) % len(kinds)]}-{i:05d}.jsonl" for i in range(n)]


def _drop(base: Path, name: str) -> None:
    inbox = base / "queue" / "incoming"
    inbox.mkdir(parents=True, exist_ok=True)
    tmp = base / f".{name}"
    tmp.write_text(json.dumps({"messages": [{"role": "user", "content": name},
                                            {"role": "assistant", "content": "ok"}]}) + "\n")
    os.replace(tmp, inbox / name)


class Daemon:
    def __init__(self, config: Path, log: Path) -> None:
        env = dict(os.environ, TRAINCONSOLE_FAULT_JOBS=FAULTS, PYTHONUNBUFFERED="1")
        env.pop("TRAINCONSOLE_FAULT", None)
        with open(log, "ab") as out:
            self.proc = subprocess.Popen([sys.executable, __file__, "--serve", str(config)], cwd=ROOT, env=env,
                                         stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        self.ps = psutil.Process(self.proc.pid)

    def rss_mb(self) -> float:
        return self.ps.memory_info().rss / 2**20

    def stop(self, config: Path) -> None:
        subprocess.run([sys.executable, "-m", "trainconsole.console.cli", "--config", str(config), "stop",
                        "--timeout", "120"], cwd=ROOT, capture_output=True, timeout=180, check=False)
        self.proc.wait(60)

    def kill(self) -> None:
        os.killpg(self.proc.pid, signal.SIGKILL)  # the daemon and its worker, as a power cut would
        self.proc.wait(30)

    def end(self) -> None:
        """Whatever happened to the soak, no daemon of ours outlives it."""
        if self.proc.poll() is None:
            self.kill()


def _jobs(config: Path) -> list[Any]:
    with Store.open(load_config(config).layout(), repair=False) as store:
        return store.jobs()


def _status_s(config: Path) -> float:
    times = []
    for _ in range(3):
        start = time.perf_counter()
        done = subprocess.run([sys.executable, "-m", "trainconsole.console.cli", "--config", str(config), "status",
                               "--json"], cwd=ROOT, capture_output=True, timeout=120, check=False)
        times.append(time.perf_counter() - start)
        assert done.returncode == 0, done.stderr
    return statistics.median(times)


def _wait(cond: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.2)
    raise SystemExit(f"bench/soak: timed out waiting for {what}")


def _du(*paths: Path) -> int:
    total = 0
    for path in paths:
        for dirpath, _, files in os.walk(path):
            for name in files:
                try:
                    total += os.lstat(os.path.join(dirpath, name)).st_size
                except OSError:
                    pass
    return total


def soak(n: int, base: Path) -> dict[str, Any]:
    config = _workspace(base)
    layout = load_config(config).layout()
    log = base / "daemon.log"
    names = _names(n)
    daemons: list[Daemon] = []
    try:
        return _drive(config, layout, log, names, daemons, base)
    finally:
        for daemon in daemons:
            daemon.end()


def _drive(config: Path, layout: Any, log: Path, names: list[str], daemons: list[Daemon],
           base: Path) -> dict[str, Any]:
    n = len(names)
    daemon = Daemon(config, log)
    daemons.append(daemon)
    restarts = {n // 4: "kill", n // 2: "stop"}
    _wait(lambda: layout.state_db.exists(), 60, "the engine started")
    status_start = _status_s(config)
    segments: list[dict[str, float]] = []
    seg_rss: dict[str, float] = {}
    seg_from = 0
    dropped = 0
    started = time.monotonic()
    while True:
        jobs = _jobs(config)
        finished = sum(j.status in ("done", "failed") for j in jobs)
        waiting = sum(j.status in ("queued", "running") for j in jobs)
        if "warm" not in seg_rss and finished >= seg_from + BATCH:
            seg_rss["warm"] = daemon.rss_mb()  # after its first jobs: imports and caches settled
        if dropped < n and waiting + len(list((base / "queue" / "incoming").glob("*.jsonl"))) < BATCH:
            for name in names[dropped:dropped + BATCH]:
                _drop(base, name)
            dropped = min(n, dropped + BATCH)
        due = [at for at in restarts if finished >= at]
        if due:
            how = restarts.pop(due[0])
            segments.append({"jobs": finished - seg_from, "rss_warm": seg_rss.get("warm", 0.0),
                             "rss_end": daemon.rss_mb()})
            if how == "kill":
                daemon.kill()
            else:
                daemon.stop(config)
            daemon = Daemon(config, log)
            daemons.append(daemon)
            seg_rss, seg_from = {}, finished
        if dropped == n and finished == n:
            break
        if time.monotonic() - started > 40 * n:
            raise SystemExit("bench/soak: jobs stopped finishing")
        time.sleep(0.25)
    time.sleep(2.5)  # one more retention sweep (every_s = 1) after the last job
    segments.append({"jobs": finished - seg_from, "rss_warm": seg_rss.get("warm", 0.0),
                     "rss_end": daemon.rss_mb()})
    status_end = _status_s(config)
    daemon.stop(config)
    elapsed = time.monotonic() - started

    jobs = _jobs(config)
    by_name: dict[str, list[Any]] = {}
    for job in jobs:
        by_name.setdefault(job.name, []).append(job)
    lost = sum(len(by_name.get(name, [])) != 1 for name in names) + (len(jobs) - n if len(jobs) > n else 0)
    wrong = sum(1 for name in names for job in by_name.get(name, [])
                if job.status != WANT[name.split("-", 1)[0]])
    checkpoints_left = sum(1 for j in jobs if (layout.run_dir(j.id) / "checkpoints").exists()
                           and j.status == "done")
    disk = _du(layout.queue, layout.runs, layout.adapters)
    longest = max(segments, key=lambda s: s["jobs"])  # the run with the most jobs
    growth = longest["rss_end"] - longest["rss_warm"]
    log_bytes = sum(p.stat().st_size for p in (layout.engine_events, rotated(layout.engine_events))
                    if p.exists())
    return {
        "soak_jobs": n,
        "soak_elapsed_s": round(elapsed, 1),
        "soak_daemon_rss_growth_mb": round(growth, 2),
        "soak_daemon_rss_end_mb": round(longest["rss_end"], 1),
        "soak_disk_mb_per_job": round(disk / n / 2**20, 4),
        "soak_status_json_s_start": round(status_start, 3),
        "soak_status_json_s_end": round(status_end, 3),
        "soak_status_json_end_over_start": round(status_end / status_start, 2),
        "soak_engine_log_mb": round(log_bytes / 2**20, 3),
        "soak_jobs_lost": lost,
        "soak_jobs_wrong_outcome": wrong,
        "soak_done_jobs_with_checkpoints": checkpoints_left,
        "soak_restarts": 2,
    }


def main() -> int:
    if len(sys.argv) == 3 and sys.argv[1] == "--serve":
        return _serve(sys.argv[2])
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="200 jobs instead of 2,000")
    parser.add_argument("--keep", action="store_true", help="keep the workspace (its path is printed)")
    args = parser.parse_args()
    n = 200 if args.quick else 2000
    base = Path(tempfile.mkdtemp(prefix="trainconsole-soak-"))
    try:
        metrics = soak(n, base)
    finally:
        if args.keep:
            print(f"workspace: {base}")
        else:
            shutil.rmtree(base, ignore_errors=True)
    doc = {"benchmark": "soak", "quick": args.quick, "cpus": os.cpu_count(),
           "load_avg": [round(x, 2) for x in os.getloadavg()], "metrics": metrics}
    out = ROOT / "bench" / "results" / "soak.json"
    out.write_text(json.dumps(doc, indent=2) + "\n")
    width = max(map(len, metrics))
    for key, value in metrics.items():
        print(f"{key:<{width}}  {value}")
    print(f"written to {out}")
    ok = (metrics["soak_daemon_rss_growth_mb"] <= 10 and not metrics["soak_jobs_lost"]
          and not metrics["soak_jobs_wrong_outcome"])
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
