"""Every place the engine writes a file durably, killed (a real SIGKILL) right after it created its
temporary file or staging folder: the next start of whoever owns that folder (the daemon, the
store, the worker's model and token caches) leaves no temporary behind.

The writer is a child process running the real write site, stopped at the exact point by
``trainconsole.engine.fsio``'s test hook (``TRAINCONSOLE_FSIO_HALT``: it names the temporary in a
file and SIGSTOPs itself); the test then SIGKILLs it.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from trainconsole.engine import fsio
from trainconsole.engine.config import load_config
from trainconsole.engine.layout import Layout

FP = {"name": "m", "revision": None, "config_sha256": "0", "layers": 1, "hidden": 2, "vocab": 3,
      "lora": "r=1"}


@dataclass(frozen=True)
class Site:
    name: str
    glob: str  # the target's name the writer is stopped at
    code: str  # the child's program (``{ws}``, ``{config}``, ``{run}``, ... filled in)
    owner: str  # daemon | store | model | tokens: whose next start must sweep it


SITES = [
    Site("engine PID file", "engine.pid", """
        from trainconsole.engine.lock import EngineLock
        EngineLock(layout).acquire()
    """, "daemon"),
    Site("job spec (engine)", "spec.json", """
        from trainconsole.engine.runfiles import write_spec
        write_spec(run, job_id="j0001", data_file=ws / "a.jsonl", config=config,
                   adapters_dir=layout.adapters)
    """, "daemon"),
    Site("worker heartbeat", "heartbeat.json", """
        from trainconsole.engine.train.guards import HeartbeatWriter
        HeartbeatWriter(run / "heartbeat.json").beat(3, 0.1)
    """, "daemon"),
    Site("worker report", "report.json", """
        from trainconsole.engine.runfiles import write_spec
        from trainconsole.engine.train.worker import run as run_worker
        spec = write_spec(run, job_id="j0001", data_file=ws / "nowhere.jsonl",
                          config=ws / "missing.toml", adapters_dir=layout.adapters)
        run_worker(spec)
    """, "daemon"),
    Site("checkpoint manifest", "manifest.json", """
        from trainconsole.engine import checkpoints as ckpt, fsio
        staging = fsio.new_staging(run / "checkpoints", "checkpoint-4")
        (staging / "adapter_model.safetensors").write_bytes(b"w" * 64)
        ckpt.publish(staging, run / "checkpoints" / "checkpoint-4", kind="checkpoint", step=4,
                     fingerprint=FP)
    """, "daemon"),
    Site("checkpoint staging", "checkpoint-8", """
        from trainconsole.engine import fsio
        fsio.new_staging(run / "checkpoints", "checkpoint-8")
    """, "daemon"),
    Site("checkpoint pruning", "checkpoint-2", """
        from trainconsole.engine import checkpoints as ckpt, fsio
        for step in (2, 4, 6):
            staging = fsio.new_staging(run / "checkpoints", f"c{step}")
            (staging / "f").write_text(str(step))
            ckpt.publish(staging, run / "checkpoints" / f"checkpoint-{step}", kind="checkpoint",
                         step=step, fingerprint=FP)
        import os
        os.environ[fsio.HALT_ENV] = HALT
        ckpt.prune(run / "checkpoints", keep_last=2)
    """, "daemon"),
    Site("quarantine note", "*.why.json", """
        from trainconsole.engine import checkpoints as ckpt
        (run / "checkpoints" / "checkpoint-9").mkdir(parents=True)
        ckpt.quarantine(run / "checkpoints" / "checkpoint-9", run / "checkpoints", case=15,
                        reason="empty")
    """, "daemon"),
    Site("adapter publication", "0001-j0001", """
        from trainconsole.engine import checkpoints as ckpt
        from trainconsole.engine.train import lineage
        src = ws / "src"
        src.mkdir()
        from safetensors.numpy import save_file
        import numpy as np
        save_file({"w": np.zeros(2, dtype=np.float32)}, str(src / ckpt.ADAPTER_WEIGHTS))
        (src / lineage.ADAPTER_CONFIG).write_text("{}")
        lineage.publish_adapter(src, layout.adapters, job_id="j0001", fingerprint=FP, step=1,
                                parent=None)
    """, "daemon"),
    Site("latest adapter pointer", "latest", """
        from trainconsole.engine.train import lineage
        layout.adapters.mkdir(parents=True, exist_ok=True)
        lineage._point_latest(layout.adapters, "0001-j0001")
    """, "daemon"),
    Site("config edit", "config.toml", """
        from trainconsole.engine.config import set_value
        set_value(config, "training.max_steps", 7)
    """, "daemon"),
    Site("trainconsole init", "config.toml", """
        import os, sys
        os.remove(config)
        from trainconsole.console.cli import main
        sys.exit(main(["init", str(config.parent)]))
    """, "daemon"),
    Site("demo data into the inbox", "*.jsonl", """
        from trainconsole.console.commands.demo import prepare
        prepare(ws / "demo")
    """, "store-demo"),
    Site("store: copy into jobs/", "j0001--*.jsonl", """
        from trainconsole.engine.store import Store
        from trainconsole.engine.store import files as sf
        data = ws / "a.jsonl"
        data.write_text('{"messages": [{"role": "user", "content": "hi"}]}\\n')
        with Store.open(layout) as store:
            store.add_job("a.jsonl", data, *sf.hash_file(data))
    """, "store"),
    Site("store: sidecar", "j0001.json", """
        from trainconsole.engine.store import Store
        from trainconsole.engine.store import files as sf
        data = ws / "a.jsonl"
        data.write_text('{"messages": [{"role": "user", "content": "hi"}]}\\n')
        with Store.open(layout) as store:
            store.add_job("a.jsonl", data, *sf.hash_file(data))
    """, "store"),
    Site("built-in model cache", "tiny-chat", """
        from trainconsole.engine.train.model import ensure_builtin
        ensure_builtin("builtin:tiny-chat", ws / "cache")
    """, "model"),
    Site("token cache", "tok", """
        from trainconsole.engine.train.tokens import build_cache
        build_cache([], None, 16, "truncate", ws / "tokens" / "tok", key="k")
    """, "tokens"),
]


def _leftovers(ws: Path) -> list[Path]:
    """Every temporary or staging name of ours (or an older scheme's) anywhere in the workspace."""
    return sorted(p for p in ws.rglob("*") if fsio.writer_pid(p.name) is not None
                  or fsio.is_discarded(p.name))


def _stopped(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_bytes().rsplit(b")", 1)[-1].split()[0]
    except (OSError, IndexError):
        return False
    return state in (b"T", b"t")


def _kill_at(site: Site, ws: Path, config: Path, layout: Layout) -> Path:
    marker = ws / "halted-at"
    halt = f"{site.glob}={marker}"
    program = "\n".join([
        "from pathlib import Path",
        "from trainconsole.engine.config import load_config",
        f"ws = Path({str(ws)!r}); config = Path({str(config)!r})",
        "layout = load_config(config).layout(); layout.ensure()",
        "run = layout.run_dir('j0001'); run.mkdir(parents=True, exist_ok=True)",
        f"FP = {FP!r}; HALT = {halt!r}",
        textwrap.dedent(site.code),
    ])
    env = dict(os.environ)
    if "os.environ[fsio.HALT_ENV]" not in site.code:  # pruning arms the hook after its set-up
        env[fsio.HALT_ENV] = halt
    child = subprocess.Popen([sys.executable, "-c", program], env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 120
    while not (marker.exists() and _stopped(child.pid)):
        if child.poll() is not None or time.monotonic() > deadline:
            child.kill()
            out = child.communicate()[0].decode(errors="replace")
            pytest.fail(f"{site.name}: the writer never reached its temporary ({child.returncode}):\n{out}")
        time.sleep(0.02)
    os.kill(child.pid, signal.SIGKILL)
    child.communicate(timeout=30)
    assert child.returncode == -signal.SIGKILL
    return Path(marker.read_text().splitlines()[0])


def _next_start(owner: str, ws: Path, config: Path, layout: Layout, tiny_model: Path) -> None:
    if owner == "daemon":
        from trainconsole.engine.daemon.recovery import sweep

        sweep(layout, config=config)
    elif owner.startswith("store"):
        from trainconsole.engine.store import Store

        if owner == "store-demo":  # the demo workspace has its own queue
            layout = load_config(ws / "demo" / "config.toml").layout()
        with Store.open(layout):
            pass
    elif owner == "model":
        shutil.copytree(tiny_model, ws / "cache" / "models" / "tiny-chat")  # the build, finished by another
        from trainconsole.engine.train.model import ensure_builtin

        assert ensure_builtin("builtin:tiny-chat", ws / "cache") == ws / "cache" / "models" / "tiny-chat"
    elif owner == "tokens":
        from trainconsole.engine.errors import DataError
        from trainconsole.engine.train.tokens import build_cache

        with pytest.raises(DataError):  # no examples: refused, after the sweep
            build_cache([], None, 16, "truncate", ws / "tokens" / "tok", key="k")
    else:
        raise AssertionError(owner)


@pytest.mark.edge(41, 42)
@pytest.mark.parametrize("site", SITES, ids=[s.name for s in SITES])
def test_a_writer_killed_at_its_temporary_leaves_nothing_after_the_next_start(
        site: Site, workspace: Path, tiny_model: Path) -> None:
    config = workspace / "config.toml"
    layout = load_config(config).layout()
    temp = _kill_at(site, workspace, config, layout)
    assert temp.exists() or temp.is_symlink(), f"{site.name}: the kill left no temporary to sweep"
    assert temp in _leftovers(workspace)
    _next_start(site.owner, workspace, config, layout, tiny_model)
    assert _leftovers(workspace) == []


def test_a_live_writers_temporary_is_never_swept(workspace: Path) -> None:
    """The same sweep leaves a writer that is only slow (here: stopped, alive) alone."""
    config = workspace / "config.toml"
    layout = load_config(config).layout()
    marker = workspace / "halted-at"
    env = {**os.environ, fsio.HALT_ENV: f"heartbeat.json={marker}"}
    run = layout.run_dir("j0001")
    run.mkdir(parents=True)
    child = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        from pathlib import Path
        from trainconsole.engine import fsio
        fsio.write_bytes(Path({str(run / 'heartbeat.json')!r}), b"{{}}", durable=False)
    """)], env=env)
    try:
        deadline = time.monotonic() + 60
        while not (marker.exists() and _stopped(child.pid)):
            assert child.poll() is None and time.monotonic() < deadline
            time.sleep(0.02)
        temp = Path(marker.read_text().strip())
        from trainconsole.engine.daemon.recovery import sweep_run

        assert sweep_run(run) == [] and temp.exists()
    finally:
        child.kill()
        child.wait()
