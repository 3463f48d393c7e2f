"""The guards with real faults on the real Trainer: NaN and inf (injected into the loss, so they
flow into real gradients and weights), plateau, overfitting, think-tag share and accuracy
(provoked with data), and the step plan that never hands the Trainer a None."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from tests.chatdata import arithmetic, write_jsonl
from tests.worker.wutil import alerts, events_of, make_spec, new_workspace, run_inprocess
from trainconsole.engine.errors import EXIT_CODES, DataError, ErrorClass
from trainconsole.engine.train.dataset import Collator, split_indices
from trainconsole.engine.train.trainer_setup import plan_steps, training_arguments

ALL_LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def assert_all_finite(*folders: Path) -> int:
    """Every floating tensor in every safetensors file under the folders is finite."""
    import torch
    from safetensors.torch import load_file

    files = [f for folder in folders for f in folder.rglob("*.safetensors")]
    for path in files:
        for name, tensor in load_file(str(path)).items():
            assert bool(torch.isfinite(tensor).all()), (path, name)
    return len(files)


@pytest.mark.edge(64)
def test_nan_loss_rolls_back_to_the_last_checkpoint_with_a_lower_rate(tmp_path: Path,
                                                                      shared_cache: Path) -> None:
    ws = new_workspace(tmp_path / "ws", shared_cache)
    spec = make_spec(ws, "j0001", write_jsonl(ws / "data.jsonl", arithmetic(60)))
    code, report = run_inprocess(spec, "nan@6")  # the loss of step 6 becomes NaN, once
    assert code == 0 and report["status"] == "done" and report["global_step"] == 8
    run_dir = spec.parent
    assert [a["case"] for a in alerts(run_dir)] == [64]
    assert "rolling back" in alerts(run_dir)[0]["message"]
    fifth = [e for e in events_of(run_dir, "step") if e["step"] == 5]
    assert len(fifth) == 2 and fifth[1]["lr"] == pytest.approx(fifth[0]["lr"] * 0.5)
    assert fifth[1]["loss"] == fifth[0]["loss"]  # same state restored from checkpoint-4
    assert assert_all_finite(run_dir, ws / "adapters") >= 3


@pytest.mark.edge(64)
def test_nan_before_any_checkpoint_restarts_from_the_beginning(tmp_path: Path, shared_cache: Path) -> None:
    ws = new_workspace(tmp_path / "ws", shared_cache, training__max_steps=4, training__eval_fraction=0.0)
    spec = make_spec(ws, "j0001", write_jsonl(ws / "data.jsonl", arithmetic(30)))
    code, report = run_inprocess(spec, "nan@2")
    assert code == 0 and report["status"] == "done"
    first = [e for e in events_of(spec.parent, "step") if e["step"] == 1]
    assert len(first) == 2 and first[1]["lr"] == pytest.approx(first[0]["lr"] * 0.5)
    assert_all_finite(spec.parent, ws / "adapters")


@pytest.mark.edge(65)
def test_persistent_inf_ends_as_diverged_after_bounded_rollbacks(tmp_path: Path, shared_cache: Path) -> None:
    ws = new_workspace(tmp_path / "ws", shared_cache, guards__nan_retries=1)
    spec = make_spec(ws, "j0001", write_jsonl(ws / "data.jsonl", arithmetic(60)))
    code, report = run_inprocess(spec, "inf*@6")  # every pass through step 6 overflows
    assert code == EXIT_CODES[ErrorClass.DIVERGED]
    assert report["error_class"] == "diverged" and report["case"] == 65
    assert "rollback" in report["message"] and report["traceback"] is None
    assert [a["case"] for a in alerts(spec.parent)][:2] == [65, 65]
    ckpts = sorted(p.name for p in (spec.parent / "checkpoints").iterdir())
    assert ckpts == ["checkpoint-4"]  # nothing after the overflow was ever saved
    assert not (ws / "adapters" / "latest").exists()
    assert_all_finite(spec.parent)


@pytest.mark.edge(66)
def test_flat_loss_raises_a_plateau_alert(tmp_path: Path, shared_cache: Path) -> None:
    ws = new_workspace(tmp_path / "ws", shared_cache, training__learning_rate=1e-6, training__eval_fraction=0.0,
                       guards__plateau_window=3, guards__plateau_min_delta=0.01, guards__plateau_patience=1)
    rows = [{"messages": [{"role": "user", "content": "Say yes."}, {"role": "assistant", "content": "yes"}]}] * 40
    spec = make_spec(ws, "j0001", write_jsonl(ws / "data.jsonl", rows))
    code, report = run_inprocess(spec)
    assert code == 0
    plateau = [a for a in alerts(spec.parent) if a["case"] == 66]
    assert plateau and "plateau" in plateau[0]["message"]


@pytest.mark.edge(67)
def test_rising_validation_loss_stops_early_and_publishes_the_best(tmp_path: Path, shared_cache: Path) -> None:
    import json

    ws = new_workspace(tmp_path / "ws", shared_cache, training__max_steps=30, training__learning_rate=0.01,
                       training__eval_steps=2, training__save_steps=100, training__eval_fraction=0.2,
                       guards__eval_samples=2, guards__early_stop_patience=2, lora__target_modules=ALL_LINEAR,
                       lora__r=16, lora__alpha=32)
    # The held-out examples ask the same question but want the opposite answer: the better the
    # model learns the training set, the worse it does on them.
    _, held = split_indices(40, 0.2, 42)
    rng = random.Random(0)
    rows = [{"messages": [{"role": "user", "content": f"Is {rng.randint(0, 99)} a number?"},
                          {"role": "assistant", "content": "no" if i in held else "yes"}]} for i in range(40)]
    spec = make_spec(ws, "j0001", write_jsonl(ws / "data.jsonl", rows))
    code, report = run_inprocess(spec)
    assert code == 0 and report["status"] == "done" and report["global_step"] < 30
    evals = events_of(spec.parent, "eval")
    best = min(evals, key=lambda e: e["eval_loss"])
    assert [a["case"] for a in alerts(spec.parent)] == [67]
    lineage = json.loads((ws / "adapters" / "latest" / "lineage.json").read_text())
    assert lineage["global_step"] == best["step"] < report["global_step"]

    # Killed after stopping early, before publishing: the rerun publishes the best, trains nothing.
    import shutil

    shutil.rmtree(ws / "adapters")
    (spec.parent / "events.jsonl").unlink()
    code, report = run_inprocess(spec)
    assert code == 0 and events_of(spec.parent, "step") == []
    lineage = json.loads((ws / "adapters" / "latest" / "lineage.json").read_text())
    assert lineage["global_step"] == best["step"]


@pytest.mark.edge(68)
def test_think_tag_share_alert(tmp_path: Path, shared_cache: Path) -> None:
    ws = new_workspace(tmp_path / "ws", shared_cache, training__max_steps=10, training__learning_rate=0.01,
                       training__eval_steps=10, lora__target_modules=ALL_LINEAR, lora__r=16, lora__alpha=32)
    rows = [{"messages": [{"role": "user", "content": q["messages"][0]["content"]},
                          {"role": "assistant", "content": "<think>"}]} for q in arithmetic(40)]
    spec = make_spec(ws, "j0001", write_jsonl(ws / "data.jsonl", rows))
    code, _ = run_inprocess(spec)
    assert code == 0
    (evaluation,) = events_of(spec.parent, "eval")
    assert evaluation["think_share"] == 1.0
    assert [a["case"] for a in alerts(spec.parent)] == [68]


@pytest.mark.edge(69)
def test_low_accuracy_alert(tmp_path: Path, shared_cache: Path) -> None:
    ws = new_workspace(tmp_path / "ws", shared_cache, training__max_steps=4, training__eval_steps=2,
                       guards__min_accuracy=0.5)
    spec = make_spec(ws, "j0001", write_jsonl(ws / "data.jsonl", arithmetic(40)))
    code, _ = run_inprocess(spec)
    assert code == 0
    evaluations = events_of(spec.parent, "eval")
    assert len(evaluations) == 2
    assert all(e["accuracy"] == 0.0 for e in evaluations)  # four steps teach a random model no arithmetic
    # One alert when accuracy is first below the limit, not one per evaluation.
    assert [a["case"] for a in alerts(spec.parent)] == [69]


@pytest.mark.edge(61)
def test_zero_training_examples_is_a_data_error() -> None:
    with pytest.raises(DataError) as info:
        plan_steps(0, batch_size=4, accumulation=1, world_size=1, epochs=1, max_steps=0, source="x.jsonl")
    assert info.value.case == 61 and "x.jsonl" in info.value.message
    with pytest.raises(DataError) as info:
        plan_steps(10, batch_size=4, accumulation=1, world_size=1, epochs=0, max_steps=0)
    assert info.value.case == 61


@pytest.mark.edge(71, 76)
def test_step_plan_is_ints_and_matches_the_trainer_count() -> None:
    plan = plan_steps(10, batch_size=4, accumulation=2, world_size=1, epochs=3, max_steps=0)
    assert plan.steps_per_epoch == 2 and plan.max_steps == 6  # ceil(ceil(10/4)/2) per epoch
    plan = plan_steps(10, batch_size=4, accumulation=1, world_size=2, epochs=1, max_steps=0)
    assert plan.max_steps == 2
    with pytest.raises(TypeError):
        plan_steps(10, batch_size=4, accumulation=1, world_size=1, epochs=None, max_steps=0)  # type: ignore[arg-type]


@pytest.mark.edge(76)
@pytest.mark.parametrize(("epochs", "max_steps"), [(2, 0), (0, 5), (1, 3)])
def test_epochs_or_max_steps_left_out_never_gives_none(tmp_path: Path, shared_cache: Path, epochs: int,
                                                       max_steps: int) -> None:
    from trainconsole.engine.config import load_config

    ws = new_workspace(tmp_path / "ws", shared_cache, training__epochs=epochs, training__max_steps=max_steps)
    cfg = load_config(ws / "config.toml")
    plan = plan_steps(12, batch_size=4, accumulation=1, world_size=1, epochs=epochs, max_steps=max_steps)
    args = training_arguments(cfg, plan, out_dir=tmp_path / "out", lr=1e-3, use_cpu=True, bf16=False,
                              has_eval=True, gradient_checkpointing=False)
    assert isinstance(args.max_steps, int) and args.max_steps == plan.max_steps > 0
    assert isinstance(args.num_train_epochs, float) and args.num_train_epochs >= 1
    assert args.logging_nan_inf_filter is False and args.save_strategy == "no"


def test_collator_counts_useful_tokens_and_all_masked_batches() -> None:
    collator = Collator(pad_id=0)
    batch = collator([{"input_ids": [5, 6, 7], "labels": [-100, 6, 7]}, {"input_ids": [5], "labels": [-100]}])
    assert batch["input_ids"].shape == (2, 3) and batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert collator.counters.useful_tokens == 2 and collator.counters.masked_batches == 0
    collator([{"input_ids": [5, 6], "labels": [-100, -100]}])
    assert collator.counters.masked_batches == 1


def test_held_out_split_is_deterministic_and_bounded() -> None:
    train, held = split_indices(100, 0.1, 42)
    assert len(held) == 10 and split_indices(100, 0.1, 42) == (train, held)
    assert sorted(train + held) == list(range(100))
    assert split_indices(2, 0.1, 1)[1] != [] and split_indices(1, 0.5, 1) == ([0], [])
    assert split_indices(10, 0.0, 1) == (list(range(10)), [])
