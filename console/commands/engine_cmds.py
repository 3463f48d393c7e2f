"""Engine commands: ``daemon``, ``stop``, ``pause``, ``resume`` and ``doctor``.

``pause`` and ``resume`` write the store's flag, so they work whether or not an engine runs (and
say which). ``stop`` asks the running engine to stop (a store command and SIGTERM to the verified
pid) and waits for it: its worker checkpoints first. ``doctor`` checks what the engine needs, one
verdict per line, exit 1 when anything fails. Nothing here imports torch.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the commands import what they use when run: `trainconsole status` stays fast
    from trainconsole.engine.config import Config
    from trainconsole.engine.layout import Layout
    from trainconsole.engine.store import Store

OK, WARN, FAIL = "ok", "warn", "FAIL"


def build(parser: argparse.ArgumentParser, name: str) -> None:
    if name == "stop":
        parser.add_argument("--timeout", type=float, default=300.0, metavar="S",
                            help="seconds to wait for the engine to stop (default 300)")
        parser.add_argument("--no-wait", action="store_true", help="ask the engine to stop and return")
    elif name == "doctor":
        parser.add_argument("--json", action="store_true", help="machine-readable output")


def run(args: argparse.Namespace) -> int:
    return {"daemon": _daemon, "stop": _stop, "pause": _pause, "resume": _resume,
            "doctor": _doctor}[args.command](args)


def _daemon(args: argparse.Namespace) -> int:
    from trainconsole.console.common import load_config
    from trainconsole.engine.daemon.main import run_daemon

    return run_daemon(load_config(args))


def _store(args: argparse.Namespace) -> tuple[Layout, Store]:
    from trainconsole.console.common import load_layout
    from trainconsole.engine.events import EventLog
    from trainconsole.engine.store import Store

    cfg, layout = load_layout(args)
    return layout, Store.open(layout, EventLog(layout.engine_events), policy=cfg.queue, repair=False)


def _set_paused(args: argparse.Namespace, paused: bool) -> int:
    from trainconsole.engine.lock import engine_running

    layout, store = _store(args)
    with store:
        store.set_paused(paused)
    running = engine_running(layout)
    if paused:
        print("queue paused: a running job finishes, no new job starts")
    else:
        print("queue resumed")
    if running is None:
        print(f"(no engine is running for {layout.queue}; this takes effect when one starts)")
    return 0


def _pause(args: argparse.Namespace) -> int:
    return _set_paused(args, True)


def _resume(args: argparse.Namespace) -> int:
    return _set_paused(args, False)


def _stop(args: argparse.Namespace) -> int:
    from trainconsole.engine.lock import engine_running

    layout, store = _store(args)
    info = engine_running(layout)
    if info is None:
        store.close()
        print(f"no engine is running for {layout.queue}")
        return 0
    with store:
        store.post_command("stop")
    try:
        os.kill(info.pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    if args.no_wait:
        print(f"asked the engine (pid {info.pid}) to stop; a running job checkpoints first")
        return 0
    print(f"stopping the engine (pid {info.pid}); a running job checkpoints first...", flush=True)
    deadline = time.monotonic() + args.timeout
    while time.monotonic() < deadline:
        if engine_running(layout) is None:
            print("engine stopped")
            return 0
        time.sleep(0.2)
    print(f"trainconsole: the engine (pid {info.pid}) is still running after {args.timeout:.0f}s; "
          "it may be finishing a checkpoint (see `trainconsole status`)", file=sys.stderr)
    return 1


# -- doctor ---------------------------------------------------------------------------------------

def _check_config(args: argparse.Namespace) -> tuple[list[tuple[str, str, str]], Config | None]:
    from trainconsole.console.common import config_path, load_config
    from trainconsole.engine.errors import TrainconsoleError

    try:
        cfg = load_config(args)
    except TrainconsoleError as exc:
        return [("config", FAIL, exc.message)], None
    return [("config", OK, f"{config_path(args)} is valid")], cfg


def _check_gpu(cfg: Config) -> tuple[str, str, str]:
    from trainconsole.engine.sysmon import Sysmon

    mon = Sysmon()
    sample = mon.sample()
    device = cfg.hardware.device
    if sample.gpu_state == "ok" and sample.gpus:
        names = ", ".join(f"{g.index}: {g.name or '?'}" for g in sample.gpus)
        wanted = cfg.hardware.gpus
        if isinstance(wanted, list):
            missing = [i for i in wanted if i not in [g.index for g in sample.gpus]]
            if missing:
                return ("gpu", FAIL, f"hardware.gpus names GPU {missing}, not present ({names})")
        return ("gpu", OK, f"{len(sample.gpus)} GPU(s): {names}")
    detail = mon.gpu_detail or sample.gpu_state
    if device == "cuda":
        return ("gpu", FAIL, f'hardware.device is "cuda" but no GPU is usable ({detail}); the queue '
                             'would be held')
    if device == "cpu":
        return ("gpu", OK, f'hardware.device is "cpu" ({detail})')
    return ("gpu", WARN, f"no GPU ({detail}): jobs train on the CPU, slowly")


def _check_disk_ram(cfg: Config, layout: Layout) -> list[tuple[str, str, str]]:
    from trainconsole.engine.sysmon import Sysmon

    sample = Sysmon().sample([layout.queue, layout.runs, layout.adapters])
    out = []
    floor = cfg.hardware.min_free_disk_mb
    for path, free in sample.disk_free_mb.items():
        verdict = OK if free >= floor else FAIL
        out.append(("disk", verdict, f"{free:,.0f} MB free for {path} (hardware.min_free_disk_mb = {floor})"))
    ram_floor = cfg.hardware.min_free_ram_mb
    ram_verdict = OK if sample.ram_available_mb >= ram_floor else WARN
    out.append(("memory", ram_verdict, f"{sample.ram_available_mb:,.0f} MB of {sample.ram_total_mb:,.0f} MB "
                                       f"available (hardware.min_free_ram_mb = {ram_floor})"))
    return out


def _check_writable(layout: Layout) -> tuple[str, str, str]:
    from trainconsole.engine.daemon.resources import check_writable

    present = []
    for folder in layout.folders():
        probe = folder
        while not probe.exists() and probe != probe.parent:
            probe = probe.parent
        present.append(probe)
    problems = check_writable(list(dict.fromkeys(present)))
    if problems:
        return ("permissions", FAIL, "; ".join(problems))
    return ("permissions", OK, "every engine folder is writable")


def _check_pid(layout: Layout) -> tuple[str, str, str]:
    from trainconsole.engine.lock import engine_running, pidfile_problem, read_pidfile

    if layout.pidfile.is_dir() and not layout.pidfile.is_symlink():
        return ("engine", FAIL, pidfile_problem(layout))
    info = read_pidfile(layout)
    running = engine_running(layout)
    if running is not None:
        return ("engine", OK, f"running ({running.describe()})")
    if info is not None:
        return ("engine", WARN, f"stale PID file {layout.pidfile} (pid {info.pid} is not the engine); "
                                "harmless, it is replaced at the next start")
    return ("engine", OK, "not running (start it with `trainconsole daemon` or `trainconsole`)")


def _check_model(cfg: Config, layout: Layout) -> tuple[str, str, str]:
    base = cfg.model.base_model
    if base.startswith("builtin:"):
        built = layout.cache / "models" / base.split(":", 1)[1]
        state = "built" if (built / "config.json").exists() else "built on first use (seconds)"
        return ("model", OK, f"{base}: {state}")
    folder = cfg.resolve(base) if base.startswith((".", "/", "~")) else Path(base)
    if not folder.exists():
        return ("model", WARN if not base.startswith((".", "/", "~")) else FAIL,
                f"{base}: no such folder" + ("" if base.startswith((".", "/", "~")) else
                                             " (a model id must already be in the local cache)"))
    problems = []
    try:
        json.loads((folder / "config.json").read_text())
    except (OSError, ValueError) as exc:
        problems.append(f"config.json unreadable ({exc})")
    weights = list(folder.glob("*.safetensors")) + list(folder.glob("*.bin"))
    if not weights:
        problems.append("no weight files (*.safetensors)")
    elif any(w.stat().st_size == 0 for w in weights):
        problems.append("an empty weight file (incomplete download?)")
    if not any((folder / n).exists() for n in ("tokenizer.json", "tokenizer.model", "tokenizer_config.json")):
        problems.append("no tokenizer files")
    if problems:
        return ("model", FAIL, f"{folder}: " + "; ".join(problems))
    return ("model", OK, f"{folder}: config, {len(weights)} weight file(s), tokenizer")


def _check_torch() -> tuple[str, str, str]:
    # find_spec, not import: doctor answers in a second and never pays for torch.
    if importlib.util.find_spec("torch") is None:
        return ("torch", FAIL, "torch is not installed in this environment")
    return ("torch", OK, "installed")


def _check_launcher(cfg: Config, layout: Layout) -> list[tuple[str, str, str]]:
    if cfg.launcher.kind != "slurm":
        return []
    from trainconsole.engine.daemon.slurm import doctor

    return doctor.checks(cfg.launcher, {"paths.runs": layout.runs, "paths.adapters": layout.adapters})


def _check_reporters(cfg: Config) -> tuple[str, str, str]:
    from trainconsole.engine.reporters import missing_reporters

    if not cfg.report.to:
        return ("metrics", OK, "report.to = []: metrics stay in the engine's event logs")
    missing = missing_reporters(cfg.report.to)
    if missing:
        return ("metrics", WARN, "; ".join(missing))
    return ("metrics", OK, "report.to: " + ", ".join(cfg.report.to) + " (installed)")


def _doctor(args: argparse.Namespace) -> int:
    checks, cfg = _check_config(args)
    if cfg is not None:
        layout = cfg.layout()
        probes: list[Callable[[], list[tuple[str, str, str]]]] = [
            # With Slurm the GPUs are the nodes', checked by _check_launcher, not this machine's.
            lambda: [] if cfg.launcher.kind == "slurm" else [_check_gpu(cfg)],
            lambda: _check_disk_ram(cfg, layout),
            lambda: [_check_writable(layout)], lambda: [_check_pid(layout)],
            lambda: [_check_model(cfg, layout)], lambda: [_check_torch()],
            lambda: _check_launcher(cfg, layout), lambda: [_check_reporters(cfg)]]
        for func in probes:
            try:
                checks += func()
            except Exception as exc:  # one broken probe is one failed line, never a traceback
                checks.append(("check", FAIL, f"{type(exc).__name__}: {exc}"))
    failed = any(v == FAIL for _, v, _ in checks)
    if args.json:
        print(json.dumps({"schema": 1, "ok": not failed,
                          "checks": [{"check": c, "verdict": v, "detail": d} for c, v, d in checks]}))
    else:
        for check, verdict, detail in checks:
            print(f"  {verdict:<4}  {check:<11} {detail}")
        print("doctor: " + ("problems found" if failed else "all checks passed"))
    return 1 if failed else 0
