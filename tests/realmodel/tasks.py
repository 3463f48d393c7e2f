"""Data for the real-model tier: a reply format the base model never uses on its own (the word
wrapped in double angle brackets), so a changed greedy answer can only come from training."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tests.worker.wutil import new_workspace

TRAIN_WORDS = """river apple stone cloud garden window candle forest silver rabbit orange pencil mirror
bottle ladder basket pillow rocket violin castle engine harbor jacket kitten lemon marble needle ocean
parrot quartz saddle tiger tunnel wallet yellow zebra anchor bridge copper dragon falcon glacier hammer
island jungle kettle lantern meadow nickel oyster pepper rhythm spider thunder velvet whistle barley
cactus dolphin ember""".split()
# Words no training file holds: answers on these show whether the format was learnt.
UNSEEN_WORDS = ["turnip", "compass", "blanket", "feather", "sandal", "trumpet"]
PROMPT = "Wrap this word: {}"
# A short system prompt of our own: without one the model's template inserts a 20-token default,
# half of each example, and the tier's CPU time goes mostly to reading it.
SYSTEM = "Wrap words."


def answer(word: str) -> str:
    return f"<<{word}>>"


def prompt(word: str) -> list[dict[str, str]]:
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": PROMPT.format(word)}]


def wrap_rows(words: list[str]) -> list[dict[str, Any]]:
    return [{"messages": [*prompt(w), {"role": "assistant", "content": answer(w)}]} for w in words]


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


# One short LoRA job on a 135M model, sized for two CPU cores: 53 training and 7 held-out examples,
# batch 8 (7 steps an epoch), 12 steps, a checkpoint every 6.
JOB: dict[str, Any] = {
    "training.max_steps": 12,
    "training.epochs": 0,
    "training.batch_size": 8,
    "training.max_length": 128,
    "training.learning_rate": 1e-3,
    "training.save_steps": 6,
    "training.eval_steps": 12,
    "training.eval_fraction": 0.125,
    "training.seed": 7,
    "lora.r": 8,
    "lora.alpha": 16,
    "guards.eval_samples": 8,
    "guards.min_accuracy": 0.0,
    "guards.first_step_grace_s": 900.0,
    "guards.hang_floor_s": 300.0,
    "hardware.device": "cpu",
}


def real_workspace(root: Path, cache: Path, model: Path, **values: Any) -> Path:
    """A workspace training `model` with JOB's settings (plus `values`, dots written as __)."""
    return new_workspace(root, cache, **{k.replace(".", "__"): v for k, v in JOB.items()},
                         model__base_model=str(model), **values)
