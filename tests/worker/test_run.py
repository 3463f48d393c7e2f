"""End-to-end runs of the real worker on the built-in model with the real Trainer: a run from
scratch, a SIGKILL and a resume, SIGTERM, a damaged newest checkpoint, a job already trained."""

from __future__ import annotations

import json
import shutil
import signal
import time
from pathlib import Path

import pytest

from tests.chatdata import arithmetic, write_jsonl
from tests.worker.wutil import alerts, events_of, losses, make_spec, new_workspace, run_inprocess, spawn
from trainconsole.engine import checkpoints as ckpt
from trainconsole.engine import fsio
from trainconsole.engine.errors import EXIT_CODES, ErrorClass


def copy_ws(src: Path, dest: Path) -> Path:
    shutil.copytree(src, dest, symlinks=True)
    cfg = dest / "config.toml"
    cfg.write_text(cfg.read_text())  # paths in it are relative or absolute to the shared cache
    return dest


@pytest.mark.edge(14)
def test_run_from_scratch_publishes_an_adapter_peft_loads(finished_run: Path, tiny_model: Path) -> None:
    import torch
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    run_dir = finished_run / "runs" / "j0001"
    report = json.loads((run_dir / "report.json").read_text())
    assert report["status"] == "done" and report["global_step"] == report["max_steps"] == 8
    latest = finished_run / "adapters" / "latest"
    assert latest.is_symlink() and Path(report["adapter"]).name == latest.resolve().name == "0001-j0001"
    lineage = json.loads((latest / "lineage.json").read_text())
    assert lineage["job_id"] == "j0001" and lineage["base"]["layers"] == 2 and lineage["parent"] is None
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model), str(latest))
    lora = {k: v for k, v in load_file(str(latest / ckpt.ADAPTER_WEIGHTS)).items() if "lora_B" in k}
    assert lora and all(bool(torch.isfinite(v).all()) for v in lora.values())
    assert any(bool(v.abs().sum() > 0) for v in lora.values())  # B starts at zero: it was trained
    assert model is not None


def test_loss_falls_and_every_step_is_reported(finished_run: Path) -> None:
    run_dir = finished_run / "runs" / "j0001"
    steps = events_of(run_dir, "step")
    assert [e["step"] for e in steps] == list(range(1, 9))
    assert all(e["max_steps"] == 8 and e["lr"] > 0 and e["tokens_per_s"] > 0 for e in steps)
    first, last = [e["loss"] for e in steps[:2]], [e["loss"] for e in steps[-2:]]
    assert sum(last) < sum(first)
    evals = events_of(run_dir, "eval")
    assert [e["step"] for e in evals] == [4, 8] and evals[1]["eval_loss"] < evals[0]["eval_loss"]


@pytest.mark.edge(70)
def test_heartbeat_is_written_at_every_step(finished_run: Path) -> None:
    beat = json.loads((finished_run / "runs" / "j0001" / "heartbeat.json").read_text())
    assert beat["step"] == 8 and beat["pid"] > 0 and beat["mono"] > 0


@pytest.mark.edge(41, 42)
def test_sigkill_mid_run_then_resume_gives_the_same_losses(finished_run: Path, tmp_path: Path,
                                                           shared_cache: Path) -> None:
    ws = new_workspace(tmp_path / "ws", shared_cache)
    data = write_jsonl(ws / "data.jsonl", arithmetic(60))
    spec = make_spec(ws, "j0001", data)
    proc = spawn(spec, "crash@6")  # the worker SIGKILLs itself in step 6, after checkpoint-4
    proc.communicate(timeout=300)
    assert proc.returncode == -signal.SIGKILL
    assert not (spec.parent / "report.json").exists()
    code, report = run_inprocess(spec)
    assert code == 0 and report["status"] == "done"
    assert any("resuming from checkpoint-4" in e["message"] for e in events_of(spec.parent, "log"))
    want = losses(finished_run / "runs" / "j0001")
    got = losses(spec.parent)
    assert got.keys() == want.keys()
    for step in want:
        assert got[step] == pytest.approx(want[step], abs=1e-5), step


@pytest.mark.edge(41)
def test_sigterm_checkpoints_at_the_next_step_and_exits_interrupted(tmp_path: Path,
                                                                    shared_cache: Path) -> None:
    ws = new_workspace(tmp_path / "ws", shared_cache, training__max_steps=200, training__save_steps=100,
                       training__eval_fraction=0.0)
    spec = make_spec(ws, "j0001", write_jsonl(ws / "data.jsonl", arithmetic(40)))
    proc = spawn(spec)
    beat = spec.parent / "heartbeat.json"
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        try:
            if json.loads(beat.read_text())["step"] >= 2:
                break
        except (OSError, ValueError):
            pass
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=120)
    assert proc.returncode == EXIT_CODES[ErrorClass.INTERRUPTED]
    report = json.loads((spec.parent / "report.json").read_text())
    assert report["status"] == "interrupted" and 2 <= report["global_step"] < 200
    assert report["stop_signal"] == "SIGTERM"
    saved = ckpt.verify(spec.parent / "checkpoints" / f"checkpoint-{report['global_step']}",
                        fingerprint=None)
    assert isinstance(saved, ckpt.Checkpoint)
    assert not (ws / "adapters" / "latest").exists()


def _wait_for_step(beat: Path, step: int, timeout: float = 240.0) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            seen = int(json.loads(beat.read_text())["step"])
            if seen >= step:
                return seen
        except (OSError, ValueError, KeyError):
            pass
        time.sleep(0.1)
    raise AssertionError(f"the worker did not reach step {step} within {timeout:.0f}s")


def test_sigusr2_dumps_stacks_and_sigusr1_stops_like_sigterm(tmp_path: Path, shared_cache: Path) -> None:
    """SIGUSR2 is the stack dump (training goes on); SIGUSR1, Slurm's time-limit warning, is a stop:
    checkpoint at the step boundary, an interrupted report naming the signal, the retry code."""
    ws = new_workspace(tmp_path / "ws", shared_cache, training__max_steps=400, training__save_steps=200,
                       training__eval_fraction=0.0)
    spec = make_spec(ws, "j0001", write_jsonl(ws / "data.jsonl", arithmetic(40)))
    proc = spawn(spec)
    beat = spec.parent / "heartbeat.json"
    _wait_for_step(beat, 2)
    proc.send_signal(signal.SIGUSR2)
    stacks = spec.parent / "stacks.txt"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and "File " not in stacks.read_text(errors="replace"):
        time.sleep(0.1)
    assert "File " in stacks.read_text(errors="replace")
    after_dump = _wait_for_step(beat, 2)
    _wait_for_step(beat, after_dump + 1)  # still training after the dump
    assert proc.poll() is None
    proc.send_signal(signal.SIGUSR1)
    proc.communicate(timeout=120)
    assert proc.returncode == EXIT_CODES[ErrorClass.INTERRUPTED]
    report = json.loads((spec.parent / "report.json").read_text())
    assert report["status"] == "interrupted" and report["stop_signal"] == "SIGUSR1"
    assert report["global_step"] < 400
    saved = ckpt.verify(spec.parent / "checkpoints" / f"checkpoint-{report['global_step']}",
                        fingerprint=None)
    assert isinstance(saved, ckpt.Checkpoint)


@pytest.mark.edge(20)
def test_damaged_newest_checkpoint_resumes_from_the_older_one(finished_run: Path, tmp_path: Path) -> None:
    ws = copy_ws(finished_run, tmp_path / "ws")
    shutil.rmtree(ws / "adapters")
    run_dir = ws / "runs" / "j0001"
    (run_dir / "events.jsonl").unlink()
    (run_dir / "checkpoints" / "checkpoint-8" / "scheduler.pt").write_bytes(b"")
    spec = make_spec(ws, "j0001", ws / "data.jsonl")
    code, report = run_inprocess(spec)
    assert code == 0 and report["status"] == "done"
    assert [(a["case"]) for a in alerts(run_dir)] == [20]
    assert [e["step"] for e in events_of(run_dir, "step")] == [5, 6, 7, 8]
    assert losses(run_dir) == {k: v for k, v in losses(finished_run / "runs" / "j0001").items() if k > 4}
    assert len(list((run_dir / "checkpoints" / "quarantine").glob("checkpoint-8.*.why.json"))) == 1


@pytest.mark.edge(63)
def test_job_already_at_max_steps_completes_without_training(finished_run: Path, tmp_path: Path) -> None:
    ws = copy_ws(finished_run, tmp_path / "ws")
    shutil.rmtree(ws / "adapters")  # killed after its last checkpoint, before publishing
    run_dir = ws / "runs" / "j0001"
    (run_dir / "events.jsonl").unlink()
    code, report = run_inprocess(make_spec(ws, "j0001", ws / "data.jsonl"))
    assert code == 0 and report["status"] == "done" and report["global_step"] == 8
    assert [a["case"] for a in alerts(run_dir)] == [63]
    assert events_of(run_dir, "step") == []
    assert (ws / "adapters" / "latest" / ckpt.ADAPTER_WEIGHTS).is_file()


@pytest.mark.edge(63)
def test_max_steps_lowered_below_the_checkpoint_completes_without_training(finished_run: Path,
                                                                           tmp_path: Path) -> None:
    from trainconsole.engine.config import set_value

    ws = copy_ws(finished_run, tmp_path / "ws")
    shutil.rmtree(ws / "adapters")
    set_value(ws / "config.toml", "training.max_steps", 5)
    run_dir = ws / "runs" / "j0001"
    (run_dir / "events.jsonl").unlink()
    code, report = run_inprocess(make_spec(ws, "j0001", ws / "data.jsonl"))
    assert code == 0 and report["global_step"] == 8 and report["max_steps"] == 5
    assert [a["case"] for a in alerts(run_dir)] == [63] and events_of(run_dir, "step") == []


def test_a_finished_job_run_again_does_not_publish_twice(finished_run: Path, tmp_path: Path) -> None:
    ws = copy_ws(finished_run, tmp_path / "ws")
    code, report = run_inprocess(make_spec(ws, "j0001", ws / "data.jsonl"))
    assert code == 0 and Path(report["adapter"]).name == "0001-j0001"
    assert sorted(p.name for p in (ws / "adapters").iterdir()) == ["0001-j0001", "latest"]


@pytest.mark.edge(27)
def test_distributed_run_on_two_cpu_ranks_writes_once(tmp_path: Path, shared_cache: Path) -> None:
    """torchrun with two gloo ranks: both train, only rank 0 writes checkpoints, heartbeat,
    report and the adapter, and the checkpoint's per-rank RNG file verifies."""
    import socket
    import subprocess
    import sys

    ws = new_workspace(tmp_path / "ws", shared_cache, training__max_steps=4, training__eval_fraction=0.0)
    spec = make_spec(ws, "j0001", write_jsonl(ws / "data.jsonl", arithmetic(40)))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                           "--master_port", str(port), "-m", "trainconsole.engine.train.worker", str(spec)],
                          capture_output=True, text=True, timeout=280)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    report = json.loads((spec.parent / "report.json").read_text())
    assert report["status"] == "done" and report["global_step"] == 4
    assert [e["step"] for e in events_of(spec.parent, "step")] == [1, 2, 3, 4]  # one rank reports
    final = ckpt.verify(spec.parent / "checkpoints" / "checkpoint-4", fingerprint=None)
    assert isinstance(final, ckpt.Checkpoint) and "rng_state_0.pth" in final.manifest["files"]
    assert sorted(p.name for p in (ws / "adapters").iterdir()) == ["0001-j0001", "latest"]


@pytest.mark.edge(18)
def test_checkpoint_of_another_adapter_shape_is_not_resumed(finished_run: Path, tmp_path: Path) -> None:
    """lora.r changed while a job waited to resume: its checkpoints would load into the Trainer
    only to fail on the tensor shapes, so they are skipped and the job starts over."""
    from trainconsole.engine.config import set_value

    ws = copy_ws(finished_run, tmp_path / "ws")
    shutil.rmtree(ws / "adapters")
    set_value(ws / "config.toml", "lora.r", 4)
    set_value(ws / "config.toml", "training.max_steps", 2)
    run_dir = ws / "runs" / "j0001"
    (run_dir / "events.jsonl").unlink()
    code, report = run_inprocess(make_spec(ws, "j0001", ws / "data.jsonl"))
    assert code == 0 and report["status"] == "done", report
    skipped = alerts(run_dir)
    assert [a["case"] for a in skipped] == [18, 18] and "lora: expected 'r=4" in skipped[0]["message"]
    assert [e["step"] for e in events_of(run_dir, "step")] == [1, 2]


@pytest.mark.edge(20, 41)
def test_sigkill_in_the_middle_of_a_save_leaves_nothing_that_is_resumed(finished_run: Path, tmp_path: Path,
                                                                       shared_cache: Path) -> None:
    """A real SIGKILL while checkpoint-4 is being written (weights and optimizer on disk, no
    manifest): the half-written folder is quarantined, never resumed, and the rerun matches."""
    ws = new_workspace(tmp_path / "ws", shared_cache)
    spec = make_spec(ws, "j0001", write_jsonl(ws / "data.jsonl", arithmetic(60)))
    proc = spawn(spec, "crash_in_save@4")
    proc.communicate(timeout=300)
    assert proc.returncode == -signal.SIGKILL
    ckdir = spec.parent / "checkpoints"
    (staging,) = [p for p in ckdir.iterdir()]
    assert staging.name.startswith(fsio.STAGING_PREFIX) and (staging / "optimizer.pt").is_file()
    code, report = run_inprocess(spec)
    assert code == 0 and report["status"] == "done"
    assert [a["case"] for a in alerts(spec.parent)] == [20]
    assert losses(spec.parent) == losses(finished_run / "runs" / "j0001")
