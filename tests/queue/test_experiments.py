"""Jobs as experiments, without training: what `add` refuses (naming the key, the lineage, the
job), inbox sidecars (taken with their file, alone they wait, a bad one fails its job alone),
`--after` holding a job whose parent failed, and an adapters folder from before lineages."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from tests.helpers import run_cli
from trainconsole.engine import checkpoints as ckpt
from trainconsole.engine import fsio
from trainconsole.engine.adapters import lineages, resolve_latest
from trainconsole.engine.config import load_config, set_value
from trainconsole.engine.daemon.inbox import Inbox
from trainconsole.engine.errors import ErrorClass
from trainconsole.engine.events import EventLog
from trainconsole.engine.store import Experiment, Store
from trainconsole.engine.store.add import NewFile
from trainconsole.engine.store.files import hash_file

from .conftest import write_job_file


def cli(ws: Path, *args: str):  # type: ignore[no-untyped-def]
    return run_cli("--config", str(ws / "config.toml"), *args, cwd=ws, timeout=60)


def test_add_refuses_bad_settings_naming_the_key_and_queues_nothing(workspace: Path) -> None:
    data = str(write_job_file(workspace / "a.jsonl"))
    cases = [
        (["--set", "queue.poll_s=1"], "queue.poll_s: [queue] is an engine setting, not a per-job one"),
        (["--set", "training.learning_rate=5"], "training.learning_rate = 5 is out of range"),
        (["--set", "training.learnig_rate=1e-4"], "did you mean training.learning_rate?"),
        (["--set", "training.learning_rate"], "write KEY=VALUE"),
        (["--set", "training.epochs=0", "--set", "training.max_steps=0"], "training.epochs and training.max_steps"),
        (["--sweep", "lora.r=4,x"], "lora.r = x"),
        (["--after", "j0099"], "--after 'j0099': no such job"),
        (["--lineage", "no spaces"], "a lineage name is 1-100 characters"),
        (["--from-adapter", "nothing-here"], "--from-adapter 'nothing-here': no such adapter"),
    ]
    for flags, said in cases:
        proc = cli(workspace, "add", data, *flags)
        assert proc.returncode in (1, 2) and said in proc.stderr, (flags, proc.stderr)
        assert "Traceback" not in proc.stderr
    overlay = workspace / "lr.toml"
    overlay.write_text("[training]\nlearning_rate = 1e-4\n[hardware]\ndevice = \"cpu\"\n")
    proc = cli(workspace, "add", data, "--settings", str(overlay))
    assert proc.returncode == 1 and f"{overlay}: hardware.device: [hardware] is an engine setting" in proc.stderr
    status = json.loads(cli(workspace, "status", "--json").stdout)
    assert status["jobs"] == []


def test_settings_layer_config_then_file_then_set_and_a_new_lineage_name_is_never_reused(workspace: Path) -> None:
    data = str(write_job_file(workspace / "a.jsonl"))
    overlay = workspace / "o.toml"
    overlay.write_text("[training]\nlearning_rate = 1e-4\nseed = 7\n")
    assert cli(workspace, "add", data, "--settings", str(overlay), "--set", "training.seed=9",
               "--new-lineage").returncode == 0
    with Store.open(load_config(workspace / "config.toml").layout(), repair=False) as store:
        (job,) = store.jobs()
    t = job.experiment.settings["training"]
    assert (t["learning_rate"], t["seed"], t["batch_size"]) == (1e-4, 9, 4)  # --set wins; the rest config's
    assert job.lineage == "a" and job.experiment.start_from == "base"
    proc = cli(workspace, "add", data, "--force", "--lineage", "a", "--new-lineage")
    assert proc.returncode == 1 and "'a' already exists" in proc.stderr
    assert cli(workspace, "add", data, "--force", "--new-lineage").returncode == 0  # named a-2
    assert re.search(r"^lineage +a-2 +\(starts from base\)$", cli(workspace, "show", "j0002").stdout, re.M)


def _scan(ws: Path) -> tuple[Store, Inbox]:
    cfg = load_config(ws / "config.toml")
    layout = cfg.layout()
    layout.ensure()
    store = Store.open(layout, EventLog(layout.engine_events), policy=cfg.queue)
    inbox = Inbox(layout)
    inbox.scan(store, stable_s=0.0, events=store.events, cfg=cfg)
    return store, inbox


def test_an_inbox_sidecar_is_taken_with_its_file_and_a_bad_one_fails_that_job_alone(workspace: Path) -> None:
    inbox = workspace / "queue" / "incoming"
    inbox.mkdir(parents=True)
    write_job_file(inbox / "good.jsonl")
    (inbox / "good.toml").write_text("[training]\nlearning_rate = 3e-4\n[lora]\nr = 4\n")
    write_job_file(inbox / "bad.jsonl", '{"messages": [{"role": "user", "content": "x"}, '
                                        '{"role": "assistant", "content": "y"}]}\n')
    (inbox / "bad.toml").write_text("[training]\nlearning_rate = 7\n")
    write_job_file(inbox / "plain.jsonl", '{"messages": [{"role": "user", "content": "p"}, '
                                          '{"role": "assistant", "content": "q"}]}\n')
    (inbox / "waiting.toml").write_text("[training]\nseed = 3\n")
    set_value(workspace / "config.toml", "training.seed", 11)
    store, _ = _scan(workspace)
    try:
        by_name = {j.name: j for j in store.jobs()}
        assert set(by_name) == {"good.jsonl", "bad.jsonl", "plain.jsonl"}
        good = by_name["good.jsonl"].experiment.settings
        assert good["training"]["learning_rate"] == 3e-4 and good["lora"]["r"] == 4
        assert good["training"]["seed"] == 11  # config.toml's, fixed now
        assert by_name["plain.jsonl"].experiment.settings["training"]["learning_rate"] == 2e-4
        bad = by_name["bad.jsonl"]
        assert bad.status == "failed" and bad.error_class == ErrorClass.CONFIG
        assert "training.learning_rate = 7 is out of range" in (bad.error or "")
        kept = store.layout.failed / f"{bad.path.name}.settings.toml"
        assert kept.read_text() == "[training]\nlearning_rate = 7\n"
        assert not (inbox / "good.toml").exists() and not (inbox / "bad.toml").exists()
        assert (inbox / "waiting.toml").exists()  # alone: it waits for waiting.jsonl, silently
        assert not [e for e in store.events.path.read_text().splitlines() if "waiting.toml" in e]
    finally:
        store.close()


def test_a_job_after_a_failed_one_is_held_with_the_reason(workspace: Path) -> None:
    cfg = load_config(workspace / "config.toml")
    layout = cfg.layout()
    with Store.open(layout, policy=cfg.queue) as store:
        files = [write_job_file(workspace / f"{n}.jsonl", f'{{"n": "{n}"}}\n') for n in ("a", "b", "c")]
        a = store.add_job("a.jsonl", files[0], *hash_file(files[0]))
        assert a is not None
        b, c = (r.job for r in store.add_files([
            NewFile(f.name, f, *hash_file(f), experiment=Experiment(after=a.id)) for f in files[1:]]))
        assert b is not None and c is not None
        assert store.next_runnable().id == a.id  # type: ignore[union-attr]
        assert store.reason(b).startswith(f"waiting for {a.id} (queued)")
        store.start(a.id)
        store.fail_attempt(a.id, ErrorClass.DATA, "rejected")
        assert store.next_runnable() is None
        b = store.require(b.id)
        assert b.status == "held" and f"{a.id} failed" in store.reason(b)
        store.retry(a.id)
        store.start(a.id)
        store.succeed(a.id)
        store.release(b.id)
        assert store.next_runnable().id == b.id  # type: ignore[union-attr]


def test_an_adapters_folder_from_before_lineages_is_main(tmp_path: Path) -> None:
    """Upgrade: the old adapters/latest is main's pointer and its adapters (no lineage in their
    lineage.json) are main's; nothing on disk is changed."""
    adapters = tmp_path / "adapters"
    staging = fsio.new_staging(adapters, "0001-j0001")
    (staging / "adapter_model.safetensors").write_bytes(b"x" * 16)
    (staging / "adapter_config.json").write_text('{"r": 8}')
    (staging / "lineage.json").write_text(json.dumps({"schema": 1, "job_id": "j0001", "parent": None,
                                                      "global_step": 3, "base": {"name": "builtin:tiny-chat"}}))
    ckpt.publish(staging, adapters / "0001-j0001", kind="adapter", step=3, fingerprint={}, extra={})
    os.symlink("0001-j0001", adapters / "latest")
    before = sorted(p.name for p in adapters.iterdir())
    (main,) = lineages(adapters)
    assert main.name == "main" and main.latest is not None and main.latest.name == "0001-j0001"
    assert resolve_latest(adapters, "main") == adapters / "0001-j0001"
    assert main.base_model == "builtin:tiny-chat"
    assert sorted(p.name for p in adapters.iterdir()) == before
