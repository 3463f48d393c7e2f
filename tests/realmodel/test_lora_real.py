"""A LoRA job on SmolLM2-135M-Instruct through the real daemon, then everything a user does with
the adapter: held-out accuracy rises, greedy answers on prompts no file held switch to the trained
format (the base model never answers that way, so these tests fail if training does nothing), the
adapter loads in plain PEFT and merges to the same logits, and a kill -9 mid-run resumes to the
same adapter an uninterrupted run publishes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.daemon.harness import FAST, configure, start_daemon, store_jobs, wait_for
from tests.daemon.realrun import step_trail, worst_step_loss
from tests.realmodel.tasks import (
    JOB,
    PROMPT,
    TRAIN_WORDS,
    UNSEEN_WORDS,
    answer,
    real_workspace,
    wrap_rows,
    write_jsonl,
)
from trainconsole.engine.config import load_config
from trainconsole.engine.events import read_all
from trainconsole.engine.layout import Layout

# The daemon's own pace, and a watchdog that allows a 135M model's steps on a busy 2-core box.
DAEMON: dict[str, Any] = {**FAST, "guards.hang_floor_s": 600.0, "guards.hang_multiple": 20.0,
                          "guards.first_step_grace_s": 900.0}
# A 12-step job is a minute on an idle 2-core machine; the limit allows a heavily shared one.
JOB_TIMEOUT = 3600
# A module fixture trains the first job inside the first test's limit.
pytestmark = pytest.mark.timeout(2 * JOB_TIMEOUT)


def _run_job(ws: Path, *, kill_after_checkpoint: bool = False) -> tuple[Layout, str]:
    """Drop the data into the inbox of a real daemon and wait for the job to finish; with
    ``kill_after_checkpoint``, SIGKILL the worker once it has trained past its first checkpoint."""
    config = configure(ws, DAEMON)
    layout = load_config(config).layout()
    layout.ensure()
    data = write_jsonl(ws / "wrap.jsonl", wrap_rows(TRAIN_WORDS))
    daemon = start_daemon(config)
    try:
        os.replace(data, layout.incoming / "wrap.jsonl")
        wait_for(lambda: bool(store_jobs(config)), 120, "the job queued")
        job_id = store_jobs(config)[0].id
        if kill_after_checkpoint:
            first = JOB["training.save_steps"]
            heartbeat = layout.runs / job_id / "heartbeat.json"

            def past_checkpoint() -> bool:
                try:
                    beat = json.loads(heartbeat.read_text())
                except (OSError, ValueError):
                    return False
                return beat["step"] > first and (layout.runs / job_id / "checkpoints" / f"checkpoint-{first}").is_dir()

            wait_for(past_checkpoint, JOB_TIMEOUT, "training past the first checkpoint")
            os.kill(json.loads(heartbeat.read_text())["pid"], signal.SIGKILL)
        wait_for(lambda: store_jobs(config)[0].status in ("done", "failed"), JOB_TIMEOUT, "the job finished")
        job = store_jobs(config)[0]
        assert job.status == "done", (job.error, (ws / "daemon.log").read_text()[-3000:])
        return layout, job_id
    finally:
        daemon.send_signal(signal.SIGTERM)
        try:
            daemon.wait(120)
        except subprocess.TimeoutExpired:
            daemon.kill()


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, smollm2: Path, shared_cache: Path) -> tuple[Path, Layout, str]:
    ws = real_workspace(tmp_path_factory.mktemp("lora") / "ws", shared_cache, smollm2)
    layout, job_id = _run_job(ws)
    return ws, layout, job_id


def _load(model_dir: Path, adapter: Path | None = None) -> Any:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
    if adapter is not None:
        model = PeftModel.from_pretrained(model, str(adapter))
    return model.eval()


def _greedy(model: Any, tokenizer: Any, words: list[str]) -> list[str]:
    import torch

    prompts = [tokenizer.apply_chat_template([{"role": "user", "content": PROMPT.format(w)}],
                                             tokenize=False, add_generation_prompt=True) for w in words]
    tokenizer.padding_side = "left"
    batch = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
    with torch.no_grad():
        out = model.generate(**batch, max_new_tokens=12, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    return [tokenizer.decode(row[batch["input_ids"].shape[1]:], skip_special_tokens=True).strip() for row in out]


@pytest.fixture(scope="module")
def adapted(trained: tuple[Path, Layout, str], smollm2: Path) -> Iterator[Any]:
    _, layout, _ = trained
    yield _load(smollm2, layout.adapters / "latest")


def test_heldout_accuracy_rises(trained: tuple[Path, Layout, str], smollm2: Path, smollm2_tokenizer: Any) -> None:
    from trainconsole.engine.train.dataset import eval_samples, load_cache, split_indices
    from trainconsole.engine.train.guards import generate_metrics

    ws, layout, job_id = trained
    cfg = load_config(ws / "config.toml")
    evals = [e for e in read_all(layout.job_events(job_id)) if e["type"] == "eval"]
    assert evals and evals[-1]["step"] == JOB["training.max_steps"]
    # The base model on the same held-out prompts the job evaluated (same cache, split and seed).
    data = write_jsonl(ws / "same.jsonl", wrap_rows(TRAIN_WORDS))  # the job's bytes: its token cache
    cache = load_cache(cfg, data, smollm2_tokenizer, cfg.layout().cache)
    _, held = split_indices(len(cache), cfg.training.eval_fraction, cfg.training.seed)
    samples = eval_samples(cache, held, smollm2_tokenizer, cfg.guards.eval_samples)
    assert len(samples) == len(held) == 7  # 63 examples, 12.5% held out
    before = generate_metrics(_load(smollm2), smollm2_tokenizer, samples)["accuracy"]
    after = evals[-1]["accuracy"]
    assert before <= 0.25 and after >= 0.75, (before, after)
    losses = [e["loss"] for e in read_all(layout.job_events(job_id)) if e["type"] == "step"]
    assert losses[-1] < 0.5 * losses[0], losses


def test_greedy_answers_on_unseen_prompts_switch_to_the_trained_format(adapted: Any, smollm2_tokenizer: Any) -> None:
    assert not set(UNSEEN_WORDS) & set(TRAIN_WORDS)
    with adapted.disable_adapter():
        base = _greedy(adapted, smollm2_tokenizer, UNSEEN_WORDS)
    tuned = _greedy(adapted, smollm2_tokenizer, UNSEEN_WORDS)
    wanted = [answer(w) for w in UNSEEN_WORDS]
    assert sum(b == w for b, w in zip(base, wanted, strict=True)) == 0, base
    assert sum(t == w for t, w in zip(tuned, wanted, strict=True)) >= len(wanted) - 1, tuned


def test_adapter_loads_in_plain_peft_and_merges_to_the_same_logits(trained: tuple[Path, Layout, str],
                                                                   smollm2: Path, smollm2_tokenizer: Any) -> None:
    import torch

    _, layout, _ = trained
    adapter = (layout.adapters / "latest").resolve()
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["r"] == JOB["lora.r"]
    text = smollm2_tokenizer.apply_chat_template([{"role": "user", "content": PROMPT.format("turnip")}],
                                                 tokenize=False, add_generation_prompt=True)
    ids = smollm2_tokenizer(text, return_tensors="pt", add_special_tokens=False)["input_ids"]
    model = _load(smollm2, adapter)
    with torch.no_grad():
        with model.disable_adapter():
            base_logits = model(input_ids=ids).logits
        peft_logits = model(input_ids=ids).logits
        merged = model.merge_and_unload()
        merged_logits = merged(input_ids=ids).logits
    assert (peft_logits - base_logits).abs().max() > 1e-2  # the adapter does something
    torch.testing.assert_close(merged_logits, peft_logits, rtol=1e-4, atol=1e-4)
    # Merging a q/v adapter leaves the tied output matrix the embedding itself.
    assert merged.get_output_embeddings().weight.data_ptr() == merged.get_input_embeddings().weight.data_ptr()


def test_kill_9_mid_run_resumes_to_the_same_adapter(trained: tuple[Path, Layout, str], tmp_path: Path,
                                                     smollm2: Path, shared_cache: Path) -> None:
    import torch
    from safetensors.torch import load_file

    ws = real_workspace(tmp_path / "ws", shared_cache, smollm2)
    layout, job_id = _run_job(ws, kill_after_checkpoint=True)
    trail = step_trail(layout, job_id)
    assert trail.count(JOB["training.save_steps"] + 1) == 2, trail  # the step after the checkpoint, twice
    assert worst_step_loss(trail) <= JOB["training.save_steps"]
    assert len(store_jobs(ws / "config.toml")[0].history) == 1  # the killed attempt, on record
    # The checkpoint holds the adapter alone: the tied embedding/output matrix is the base model's,
    # neither saved twice nor untied by a resume.
    ckpt = load_file(str(layout.runs / job_id / "checkpoints" / f"checkpoint-{JOB['training.max_steps']}"
                         / "adapter_model.safetensors"))
    assert ckpt and all("lora_" in name for name in ckpt)
    # Same data, seed and settings as the uninterrupted job: the resumed run publishes the same adapter.
    _, ref_layout, _ = trained
    resumed = load_file(str(layout.adapters / "latest" / "adapter_model.safetensors"))
    reference = load_file(str(ref_layout.adapters / "latest" / "adapter_model.safetensors"))
    assert resumed.keys() == reference.keys()
    for name in reference:
        torch.testing.assert_close(resumed[name], reference[name], rtol=1e-4, atol=1e-5, msg=name)

