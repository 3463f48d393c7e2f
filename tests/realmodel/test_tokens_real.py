"""The data gate and the token cache with SmolLM2's own tokenizer and chat template. Its template
has no {% generation %} markers, so assistant spans come from prefix rendering: checked here
against the text the template renders, for multi-turn conversations with and without a system
prompt (without one, the template inserts its own), and with a turn of weight 0."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np

from tests.realmodel.tasks import write_jsonl
from tests.worker.wutil import ROOT, new_workspace
from trainconsole.engine.config import load_config
from trainconsole.engine.data.gate import iter_examples, validate_file
from trainconsole.engine.train.dataset import IGNORE, load_cache

CONVERSATIONS: list[list[dict[str, Any]]] = [
    [{"role": "system", "content": "You answer in French."},
     {"role": "user", "content": "Say hello."},
     {"role": "assistant", "content": "Bonjour !"},
     {"role": "user", "content": "And goodbye?"},
     {"role": "assistant", "content": "Au revoir."}],
    [{"role": "user", "content": "What is 2 + 2?"},
     {"role": "assistant", "content": "4"},
     {"role": "user", "content": "Times ten?"},
     {"role": "assistant", "content": "40, since 4 x 10 = 40."}],
    [{"role": "system", "content": "Be brief."},
     {"role": "user", "content": "Name a colour."},
     {"role": "assistant", "content": "Teal.", "weight": 0},
     {"role": "user", "content": "Another one, with unicode: é, 日本, 🙂"},
     {"role": "assistant", "content": "Crimson — 深紅 🙂"}],
    [{"role": "user", "content": "  leading and trailing spaces  "},
     {"role": "assistant", "content": "  kept as written \n"}],
]


def _runs(labels: np.ndarray) -> list[tuple[int, int]]:
    """[start, end) of each run of trained positions."""
    on = np.concatenate([[False], labels != IGNORE, [False]])
    edges = np.flatnonzero(on[1:] != on[:-1])
    return list(zip(edges[::2].tolist(), edges[1::2].tolist(), strict=True))


def test_assistant_masks_are_exactly_the_assistant_turns(tmp_path: Path, smollm2: Path,
                                                         smollm2_tokenizer: Any, shared_cache: Path) -> None:
    tok = smollm2_tokenizer
    ws = new_workspace(tmp_path / "ws", shared_cache, model__base_model=str(smollm2),
                       training__max_length=512)
    cfg = load_config(ws / "config.toml")
    data = write_jsonl(tmp_path / "chat.jsonl", [{"messages": c} for c in CONVERSATIONS])
    cache = load_cache(cfg, data, tok, cfg.layout().cache)
    assert len(cache) == len(CONVERSATIONS)
    for i, conv in enumerate(CONVERSATIONS):
        plain = [{"role": m["role"], "content": m["content"]} for m in conv]
        rendered = tok.apply_chat_template(plain, tokenize=False)
        if conv[0]["role"] != "system":
            assert rendered.startswith("<|im_start|>system\nYou are a helpful AI assistant named SmolLM")
        ids, labels = (np.asarray(a) for a in cache[i])
        # The tokens are the rendered text's, and nothing else.
        assert tok.decode(ids.tolist()) == rendered
        assert ids.tolist() == tok(rendered, add_special_tokens=False)["input_ids"]
        # Each trained run is one assistant turn of weight 1: its content and the end-of-turn
        # marker (what the model must learn to produce), and nothing of the prompt around it but,
        # where BPE merged it with leading spaces of the content, the header's own newline.
        trained = [m["content"] for m in conv if m["role"] == "assistant" and m.get("weight", 1)]
        runs = _runs(labels)
        assert len(runs) == len(trained)
        for (a, b), content in zip(runs, trained, strict=True):
            run, want = tok.decode(ids[a:b].tolist()), content + "<|im_end|>\n"
            assert run.endswith(want), (run, want)
            extra = run[: len(run) - len(want)]
            assert extra in ("", "\n"), run
            assert (tok.decode(ids[:a].tolist()) + extra).endswith("<|im_start|>assistant\n")
            assert (labels[a:b] == ids[a:b]).all()
        # The weight-0 turn is in the text the model reads, and not trained on.
        for m in conv:
            if m["role"] == "assistant" and not m.get("weight", 1):
                assert m["content"] in rendered


def test_gate_counts_tokens_as_training_does(tmp_path: Path, smollm2: Path, smollm2_tokenizer: Any,
                                             shared_cache: Path) -> None:
    ws = new_workspace(tmp_path / "ws", shared_cache, model__base_model=str(smollm2), training__max_length=512)
    cfg = load_config(ws / "config.toml")
    data = write_jsonl(tmp_path / "chat.jsonl", [{"messages": c} for c in CONVERSATIONS])
    report = validate_file(data, cfg)
    assert report.accepted and report.valid == len(CONVERSATIONS)
    assert len(list(iter_examples(data, cfg.data))) == len(CONVERSATIONS)
    # `trainconsole validate` counts with a torch-free stand-in for the tokenizer; its numbers
    # must be the real tokenizer's, template included.
    done = subprocess.run([sys.executable, "-m", "trainconsole.console.cli", "--config", str(ws / "config.toml"),
                           "validate", "--json", str(data)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    out = json.loads(done.stdout)
    tokens = out["files"][0]["tokens"]
    want = [len(smollm2_tokenizer.apply_chat_template(
        [{"role": m["role"], "content": m["content"]} for m in c], tokenize=True, return_dict=True)["input_ids"])
        for c in CONVERSATIONS]
    assert (tokens["examples"], tokens["min"], tokens["max"]) == (len(CONVERSATIONS), min(want), max(want)), tokens
