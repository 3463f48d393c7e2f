"""A LoRA job on SmolLM2-135M-Instruct through the real daemon, killed with SIGKILL after its first
checkpoint and resumed by the daemon, then everything a user does with the adapter: held-out
accuracy rises, greedy answers on prompts no file held switch to the trained format (the base
model never answers that way, so these tests fail if training does nothing), the adapter loads in
plain PEFT and merges to the same logits, and the resumed attempt redid the killed steps exactly.

One job serves every test: a 135M model's step is many CPU-seconds, and the tier has to fit in a
few minutes on two cores."""

from __future__ import annotations

import copy
import json
import os
import re
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
    TRAIN_WORDS,
    UNSEEN_WORDS,
    answer,
    prompt,
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
# The job is about two minutes on an idle 2-core machine; the limit allows a heavily shared one.
JOB_TIMEOUT = 3600
# A module fixture trains the job inside the first test's limit.
pytestmark = pytest.mark.timeout(2 * JOB_TIMEOUT)
# The worker is killed once it has logged this step: two steps past the first checkpoint, so the
# resumed attempt redoes a step that needs the restored weights and one that needs the restored
# optimiser state as well.
KILL_AT = JOB["training.save_steps"] + 2


def _run_job(ws: Path) -> tuple[Layout, str]:
    """Drop the data into the inbox of a real daemon, SIGKILL the worker once it has trained past
    its first checkpoint, and wait for the daemon's next attempt to finish the job."""
    config = configure(ws, DAEMON)
    layout = load_config(config).layout()
    layout.ensure()
    data = write_jsonl(ws / "wrap.jsonl", wrap_rows(TRAIN_WORDS))
    daemon = start_daemon(config)
    try:
        os.replace(data, layout.incoming / "wrap.jsonl")
        wait_for(lambda: bool(store_jobs(config)), 120, "the job queued")
        job_id = store_jobs(config)[0].id
        heartbeat = layout.runs / job_id / "heartbeat.json"
        checkpoint = layout.runs / job_id / "checkpoints" / f"checkpoint-{JOB['training.save_steps']}"

        def past_checkpoint() -> bool:
            try:
                beat = json.loads(heartbeat.read_text())
            except (OSError, ValueError):
                return False
            return beat["step"] >= KILL_AT and checkpoint.is_dir()

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


def _greedy(model: Any, tokenizer: Any, words: list[str]) -> list[str]:
    import torch

    prompts = [tokenizer.apply_chat_template(prompt(w), tokenize=False, add_generation_prompt=True) for w in words]
    tokenizer.padding_side = "left"
    batch = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
    with torch.no_grad():
        out = model.generate(**batch, max_new_tokens=12, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    return [tokenizer.decode(row[batch["input_ids"].shape[1]:], skip_special_tokens=True).strip() for row in out]


@pytest.fixture(scope="module")
def adapted(trained: tuple[Path, Layout, str], smollm2: Path) -> Iterator[Any]:
    """The base model with the published adapter, loaded in plain PEFT (the base model is the same
    object with the adapter disabled)."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    _, layout, _ = trained
    model = AutoModelForCausalLM.from_pretrained(str(smollm2), dtype=torch.float32)
    yield PeftModel.from_pretrained(model, str(layout.adapters / "latest")).eval()


def test_heldout_accuracy_rises(trained: tuple[Path, Layout, str], adapted: Any, smollm2_tokenizer: Any) -> None:
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
    assert len(samples) == len(held) == 7  # 60 examples, 12.5% held out
    with adapted.disable_adapter():  # 12 new tokens hold any answer of the trained form
        before = generate_metrics(adapted, smollm2_tokenizer, samples, max_new_tokens=12)["accuracy"]
    after = evals[-1]["accuracy"]
    assert before <= 0.25 and after >= 0.75, (before, after)
    losses = [e["loss"] for e in read_all(layout.job_events(job_id)) if e["type"] == "step"]
    assert losses[-1] < 0.5 * losses[0], losses


def test_greedy_answers_on_unseen_prompts_switch_to_the_trained_format(adapted: Any, smollm2_tokenizer: Any) -> None:
    assert not set(UNSEEN_WORDS) & set(TRAIN_WORDS)
    with adapted.disable_adapter():
        base = _greedy(adapted, smollm2_tokenizer, UNSEEN_WORDS)
    tuned = _greedy(adapted, smollm2_tokenizer, UNSEEN_WORDS)
    trained_format = re.compile(r"<<[^<>\s]+>>")
    assert not any(trained_format.search(b) for b in base), base
    # Every answer takes the trained form; the word inside is the model's own reading of the
    # prompt, which for some words it swaps for a neighbour ("compass" -> "carpenter").
    assert all(trained_format.fullmatch(t) for t in tuned), tuned
    wanted = [answer(w) for w in UNSEEN_WORDS]
    assert sum(t == w for t, w in zip(tuned, wanted, strict=True)) >= len(wanted) // 2, tuned


def test_adapter_loads_in_plain_peft_and_merges_to_the_same_logits(trained: tuple[Path, Layout, str],
                                                                   adapted: Any, smollm2_tokenizer: Any) -> None:
    import torch

    _, layout, _ = trained
    config = json.loads(((layout.adapters / "latest").resolve() / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["r"] == JOB["lora.r"]
    text = smollm2_tokenizer.apply_chat_template(prompt("turnip"), tokenize=False, add_generation_prompt=True)
    ids = smollm2_tokenizer(text, return_tensors="pt", add_special_tokens=False)["input_ids"]
    model = copy.deepcopy(adapted)  # merging rewrites the base weights; the module's model stays as loaded
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


def test_kill_9_mid_run_resumes_exactly(trained: tuple[Path, Layout, str]) -> None:
    from safetensors.torch import load_file

    ws, layout, job_id = trained
    first = JOB["training.save_steps"]
    trail = step_trail(layout, job_id)
    assert trail.count(first + 1) == 2 and trail.count(first + 2) == 2, trail  # redone after the kill
    assert worst_step_loss(trail) <= first + 1 and trail[-1] == JOB["training.max_steps"]
    assert len(store_jobs(ws / "config.toml")[0].history) == 1  # the killed attempt, on record
    # The redone steps log the losses the killed attempt logged: the same weights (the adapter from
    # checkpoint-6 over the untouched tied base matrix), batches and dropout (data order and RNG),
    # and, for the second of them, the same AdamW moments.
    logged: dict[int, list[tuple[float, float]]] = {}
    for e in read_all(layout.job_events(job_id)):
        if e["type"] == "step":
            logged.setdefault(e["step"], []).append((e["loss"], e["grad_norm"]))
    for step in (first + 1, first + 2):
        killed, resumed = logged[step]
        assert resumed == pytest.approx(killed, rel=1e-4), (step, killed, resumed)
    # The checkpoint holds the adapter alone: the tied embedding/output matrix is the base model's,
    # neither saved twice nor untied by a resume.
    ckpt = load_file(str(layout.runs / job_id / "checkpoints" / f"checkpoint-{JOB['training.max_steps']}"
                         / "adapter_model.safetensors"))
    assert ckpt and all("lora_" in name for name in ckpt)
