"""Recovery benchmark: how fast and how cheaply the engine gets a killed job training again.

A real daemon trains the built-in tiny model; this process plays the operator and the kernel.

  resume_s_after_kill_minus_load  from a worker's SIGKILL to its first resumed step, minus that
                                  worker's load (process start to its "plan:" line: imports,
                                  model, token cache); target < 3 s. load_s_baseline is a fresh
                                  worker's load in the same run, for comparison
  steps_lost_over_interval        steps redone after the kill over the checkpoint interval
                                  (save_steps); at most 1
  daemon_rss_mb                   the daemon's resident memory while a job trains; target < 60
  land_to_worker_s                a file renamed into the inbox to its worker process existing,
                                  with queue.stable_s = 0.2; target < 1 s

The same run again with launcher.kind = "slurm" on a private one-node Slurm cluster (as the tests
start it; skipped, saying why, where Slurm is not installed or we are not root):

  slurm_land_to_running_s         a file renamed into the inbox to its worker running on the node
                                  (sbatch and Slurm's scheduling included); beside land_to_worker_s
  slurm_resume_after_kill_s       a SIGKILL of the worker on the node to its first resumed step,
                                  minus that worker's load, with launcher.poll_s = 1 (the squeue
                                  interval is part of it); beside resume_s_after_kill_minus_load

    python bench/recovery.py [--quick] [--no-slurm]
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
from trainconsole.engine.events import read_all  # noqa: E402
from trainconsole.engine.store import Store  # noqa: E402

SAVE_STEPS = 2


def _chat(n: int, tag: str) -> str:
    rows = [json.dumps({"messages": [{"role": "user", "content": f"{tag} {i} plus {i}?"},
                                     {"role": "assistant", "content": f"{2 * i}."}]}) for i in range(n)]
    return "\n".join(rows) + "\n"


def _workspace(base: Path, cache: Path, max_steps: int) -> Path:
    config = base / "config.toml"
    config.write_text(default_config_text().replace('cache = ".cache"', f'cache = "{cache}"'))
    for key, value in {"queue.poll_s": 0.1, "queue.stable_s": 0.2, "queue.backoff_s": 0.0,
                       "queue.max_attempts": 20, "hardware.min_free_ram_mb": 0, "hardware.min_free_disk_mb": 0,
                       "training.max_steps": max_steps, "training.epochs": 0, "training.batch_size": 2,
                       "training.max_length": 128, "training.save_steps": SAVE_STEPS,
                       "training.eval_steps": 10000, "training.eval_fraction": 0.0,
                       "guards.eval_samples": 0, "guards.hang_floor_s": 60.0}.items():
        set_value(config, key, value)
    return config


def _drop(base: Path, name: str, tag: str) -> float:
    inbox = base / "queue" / "incoming"
    inbox.mkdir(parents=True, exist_ok=True)
    tmp = base / f".{name}"
    tmp.write_text(_chat(24, tag))
    landed = time.monotonic()
    os.replace(tmp, inbox / name)
    return landed


def _worker_for(runs: Path) -> psutil.Process | None:
    for proc in psutil.process_iter(["cmdline"]):
        cmd = proc.info["cmdline"] or []
        if "trainconsole.engine.train.worker" in cmd and cmd[-1].startswith(str(runs)):
            return proc
    return None


def _steps(layout: Any, job_id: str) -> list[tuple[float, int]]:
    return [(float(e["t"]), int(e["step"])) for e in read_all(layout.job_events(job_id))
            if e["type"] == "step" and isinstance(e.get("step"), int)]


def _plan_times(layout: Any, job_id: str) -> list[float]:
    """When each worker finished loading (imports, model, token cache): its "plan:" line."""
    return [float(e["t"]) for e in read_all(layout.job_events(job_id))
            if e["type"] == "log" and str(e.get("message", "")).startswith("plan:")]


def _new_steps(layout: Any, job_id: str, seen: int) -> Any:
    return lambda: _steps(layout, job_id)[seen:] or None


def _wait(cond: Any, timeout: float, what: str, poll: float = 0.01) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = cond()
        if value:
            return value
        time.sleep(poll)
    raise SystemExit(f"bench/recovery: timed out waiting for {what}")


SLURM_KEYS = {"launcher.kind": "slurm", "launcher.gpus_per_job": 0, "launcher.cpus_per_job": 1,
              "launcher.mem": "2G", "launcher.poll_s": 1.0, "launcher.warn_before_limit_s": 0}


def run_slurm(quick: bool) -> dict[str, float]:
    """The same measurements through Slurm; {} (with the reason printed) where it cannot run."""
    from tests.slurm.cluster import SlurmUnavailable, start_cluster

    base = Path(tempfile.mkdtemp(prefix="tc-bench-slurm-"))
    try:
        cluster = start_cluster(base / "cluster")
    except SlurmUnavailable as exc:
        print(f"bench/recovery: Slurm figures skipped: {exc}")
        shutil.rmtree(base, ignore_errors=True)
        return {}
    before = os.environ.get("SLURM_CONF")
    os.environ["SLURM_CONF"] = str(cluster.conf)
    try:
        metrics = run(quick, extra=SLURM_KEYS, base=base / "ws")
    finally:
        cluster.shutdown()
        if before is None:
            os.environ.pop("SLURM_CONF", None)
        else:
            os.environ["SLURM_CONF"] = before
        shutil.rmtree(base, ignore_errors=True)
    return {"slurm_land_to_running_s": metrics["land_to_worker_s"],
            "slurm_resume_after_kill_s": metrics["resume_s_after_kill_minus_load"]}


def run(quick: bool, *, extra: dict[str, Any] | None = None, base: Path | None = None) -> dict[str, float]:
    kills = 1 if quick else 3
    base = base or Path(tempfile.mkdtemp(prefix="tc-bench-recovery-"))
    base.mkdir(parents=True, exist_ok=True)
    cache = Path(os.environ.get("TRAINCONSOLE_TEST_CACHE", base / "cache"))
    config = _workspace(base, cache, max_steps=8 + 8 * kills)
    for key, value in (extra or {}).items():
        set_value(config, key, value)
    cfg = load_config(config)
    layout = cfg.layout()
    log = open(base / "daemon.log", "ab")  # noqa: SIM115
    daemon = subprocess.Popen([sys.executable, "-m", "trainconsole.console.cli", "--config", str(config), "daemon"],
                              cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        _wait(lambda: (layout.queue / "engine.pid").exists(), 60, "the daemon", 0.05)
        time.sleep(0.5)  # first inbox scans done: the landing is timed against a warm loop
        landed = _drop(base, "bench.jsonl", "bench")
        worker = _wait(lambda: _worker_for(layout.runs), 30, "the worker")
        land_to_worker = time.monotonic() - landed
        with Store.open(layout, repair=False) as store:
            job_id = store.jobs()[0].id
        started_wall = worker.create_time()
        _wait(lambda: _steps(layout, job_id), 300, "the first step", 0.05)
        plans0 = _plan_times(layout, job_id)
        load_s = (plans0[0] - started_wall) if plans0 else 0.0  # a fresh worker's load, no kill
        rss = []
        resume, lost = [], []
        for k in range(kills):
            target = 4 + 8 * k + 3
            _wait(lambda t=target: any(s >= t for _, s in _steps(layout, job_id)), 300, f"step {target}", 0.05)
            rss.append(psutil.Process(daemon.pid).memory_info().rss / 2**20)
            before = _steps(layout, job_id)
            reached = max(s for _, s in before)
            victim = _worker_for(layout.runs)
            assert victim is not None
            killed_wall = time.time()
            victim.send_signal(signal.SIGKILL)
            old_pid = victim.pid
            fresh = _wait(lambda old=old_pid: (w := _worker_for(layout.runs)) is not None and w.pid != old and w,
                          60, "the relaunched worker")
            relaunched_wall = fresh.create_time()
            after = _wait(_new_steps(layout, job_id, len(before)), 300, "a resumed step", 0.05)
            t_first, s_first = after[0]
            plans = [t for t in _plan_times(layout, job_id) if t >= relaunched_wall]
            load = (plans[0] - relaunched_wall) if plans else load_s  # imports, model, tokens
            resume.append((t_first - killed_wall) - load)
            lost.append((reached - (s_first - 1)) / SAVE_STEPS)
        _wait(lambda: (layout.done / "").exists() and any(layout.done.glob("*.jsonl")), 300, "the job done", 0.1)
    finally:
        daemon.send_signal(signal.SIGTERM)
        try:
            daemon.wait(120)
        except subprocess.TimeoutExpired:
            daemon.kill()
        log.close()
        shutil.rmtree(base, ignore_errors=True)
    return {
        "resume_s_after_kill_minus_load": round(statistics.median(resume), 3),
        "steps_lost_over_interval": round(max(lost), 3),
        "daemon_rss_mb": round(max(rss), 1),
        "land_to_worker_s": round(land_to_worker, 3),
        "load_s_baseline": round(load_s, 3),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one kill instead of three (under 2 minutes)")
    parser.add_argument("--no-slurm", action="store_true", help="skip the run through a local Slurm cluster")
    args = parser.parse_args()
    shared = None
    if "TRAINCONSOLE_TEST_CACHE" not in os.environ:  # one built-in model for both runs
        shared = tempfile.mkdtemp(prefix="tc-bench-cache-")
        os.environ["TRAINCONSOLE_TEST_CACHE"] = shared
    try:
        metrics = run(args.quick)
        if not args.no_slurm:
            metrics.update(run_slurm(args.quick))
    finally:
        if shared is not None:
            shutil.rmtree(shared, ignore_errors=True)
    targets = {"resume_s_after_kill_minus_load": "< 3", "steps_lost_over_interval": "<= 1",
               "daemon_rss_mb": "< 60", "land_to_worker_s": "< 1", "load_s_baseline": "(baseline)",
               "slurm_land_to_running_s": "(beside land_to_worker_s)",
               "slurm_resume_after_kill_s": "(beside resume_s_after_kill_minus_load)"}
    print(f"{'metric':<34} {'value':>10}  target")
    for key, value in metrics.items():
        print(f"{key:<34} {value:>10}  {targets[key]}")
    out = ROOT / "bench" / "results" / "recovery.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    # The machine's load beside the figures: on a shared box they stretch with it.
    load = [round(x, 2) for x in os.getloadavg()]
    out.write_text(json.dumps({"benchmark": "recovery", "quick": args.quick, "load_avg": load,
                               "cpus": os.cpu_count(), "metrics": metrics}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
