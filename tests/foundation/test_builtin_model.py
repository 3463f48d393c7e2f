"""The built-in tiny model: deterministic, self-healing, loadable offline like any local model, and
its chat template marks exactly the assistant turns."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from trainconsole.engine.config import Config
from trainconsole.engine.config.schema import ModelConfig, PathsConfig
from trainconsole.engine.data.builtin import MANIFEST, is_intact
from trainconsole.engine.errors import ConfigError
from trainconsole.engine.train.model import ensure_builtin, resolve_base_model

ROOT = Path(__file__).resolve().parents[2]

CHAT = [
    {"role": "system", "content": "Answer briefly."},
    {"role": "user", "content": "What is 2+3?"},
    {"role": "assistant", "content": "It is 5."},
    {"role": "tool", "content": '{"result": 5}'},
    {"role": "user", "content": "Reverse: cat dog"},
    {"role": "assistant", "content": "dog cat"},
]


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def _tokenizer(folder: Path):  # type: ignore[no-untyped-def]
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(folder))


def test_two_builds_are_byte_identical(tiny_model: Path, tmp_path: Path) -> None:
    again = ensure_builtin("builtin:tiny-chat", tmp_path / "other-cache")
    assert again != tiny_model
    first, second = _files(tiny_model), _files(again)
    assert sorted(first) == sorted(second)
    assert "model.safetensors" in first and "tokenizer.json" in first and MANIFEST in first
    for name in first:
        assert first[name] == second[name], f"{name} differs between two builds"


def test_build_leaves_no_staging_and_is_reused(tiny_model: Path) -> None:
    before = (tiny_model / "model.safetensors").stat().st_mtime_ns
    assert ensure_builtin("builtin:tiny-chat", tiny_model.parent.parent) == tiny_model
    assert (tiny_model / "model.safetensors").stat().st_mtime_ns == before
    assert not [p for p in tiny_model.parent.iterdir() if ".staging-" in p.name or ".damaged-" in p.name]


def test_loads_offline_with_auto_classes(tiny_model: Path, tmp_path: Path) -> None:
    script = textwrap.dedent(
        f"""
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer
        tok = AutoTokenizer.from_pretrained({str(tiny_model)!r})
        model = AutoModelForCausalLM.from_pretrained({str(tiny_model)!r})
        ids = tok.apply_chat_template([{{"role": "user", "content": "hi"}}],
                                      add_generation_prompt=True, return_tensors="pt", return_dict=True)
        out = model.generate(**ids, max_new_tokens=4, do_sample=False)
        assert model.config.model_type == "llama"
        assert len(tok) <= model.config.vocab_size
        print(out.shape[1] > ids["input_ids"].shape[1])
        """
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf-home")}
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "True"


def test_assistant_mask_covers_exactly_the_assistant_turns(tiny_model: Path) -> None:
    tok = _tokenizer(tiny_model)
    out = tok.apply_chat_template(CHAT, tokenize=True, return_assistant_tokens_mask=True, return_dict=True)
    ids, mask = out["input_ids"], out["assistant_masks"]
    assert len(ids) == len(mask)
    masked = tok.decode([i for i, m in zip(ids, mask, strict=True) if m])
    assert masked == "It is 5.<|im_end|>dog cat<|im_end|>"
    unmasked = tok.decode([i for i, m in zip(ids, mask, strict=True) if not m])
    assert "What is 2+3?" in unmasked and "<|im_start|>assistant" in unmasked
    assert "It is 5." not in unmasked


def test_template_renders_every_role_and_generation_prompt(tiny_model: Path) -> None:
    tok = _tokenizer(tiny_model)
    text = tok.apply_chat_template(CHAT[:2], tokenize=False, add_generation_prompt=True)
    assert text == (
        "<|im_start|>system\nAnswer briefly.<|im_end|>\n"
        "<|im_start|>user\nWhat is 2+3?<|im_end|>\n<|im_start|>assistant\n"
    )
    tool = tok.apply_chat_template(CHAT[3:4], tokenize=False)
    assert tool == '<|im_start|>tool\n{"result": 5}<|im_end|>\n'
    assert tok.eos_token == "<|im_end|>" and tok.pad_token == "<|pad|>"
    assert tok.pad_token_id != tok.eos_token_id


def test_template_rejects_an_unknown_role(tiny_model: Path) -> None:
    tok = _tokenizer(tiny_model)
    with pytest.raises(Exception, match="unknown role wizard"):
        tok.apply_chat_template([{"role": "wizard", "content": "x"}], tokenize=False)


@pytest.mark.parametrize("damage", ["truncate_weights", "delete_tokenizer", "delete_manifest", "edit_config"])
def test_damaged_folder_is_rebuilt(tiny_model: Path, tmp_path: Path, damage: str) -> None:
    cache = tmp_path / "cache"
    folder = cache / "models" / "tiny-chat"
    shutil.copytree(tiny_model, folder)
    assert is_intact(folder)
    if damage == "truncate_weights":
        weights = folder / "model.safetensors"
        weights.write_bytes(weights.read_bytes()[:1000])
    elif damage == "delete_tokenizer":
        (folder / "tokenizer.json").unlink()
    elif damage == "delete_manifest":
        (folder / MANIFEST).unlink()
    else:
        cfg = json.loads((folder / "config.json").read_text())
        cfg["vocab_size"] = 7
        (folder / "config.json").write_text(json.dumps(cfg))
    assert not is_intact(folder)
    assert ensure_builtin("builtin:tiny-chat", cache) == folder.resolve()
    assert is_intact(folder)
    assert _files(folder) == _files(tiny_model)


def test_concurrent_builds_do_not_corrupt(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    code = "import sys; from pathlib import Path; from trainconsole.engine.train.model import ensure_builtin; " \
        "print(ensure_builtin('builtin:tiny-chat', Path(sys.argv[1])))"
    procs = [
        subprocess.Popen([sys.executable, "-c", code, str(cache)], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, cwd=ROOT)
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=180) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [o[1] for o in outs]
    folder = cache / "models" / "tiny-chat"
    assert {o[0].strip() for o in outs} == {str(folder.resolve())}
    assert is_intact(folder)
    leftovers = [p.name for p in (cache / "models").iterdir() if p.name.startswith(".tiny-chat.") and not p.name.endswith(".lock")]
    assert leftovers == []


def test_unknown_builtin_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="model.base_model.*builtin:huge"):
        ensure_builtin("builtin:huge", tmp_path)


def _cfg(base: str, root: Path, cache: Path) -> Config:
    return Config(model=ModelConfig(base_model=base), paths=PathsConfig(cache=str(cache)),
                  source=root / "config.toml")


def test_resolve_base_model(tiny_model: Path, tmp_path: Path) -> None:
    cache = tiny_model.parent.parent
    assert resolve_base_model(_cfg("builtin:tiny-chat", tmp_path, cache)) == tiny_model
    local = tmp_path / "my-model"
    local.mkdir()
    assert resolve_base_model(_cfg(str(local), tmp_path, cache)) == local.resolve()
    assert resolve_base_model(_cfg("my-model", tmp_path, cache)) == local.resolve()
    assert resolve_base_model(_cfg("org/some-model", tmp_path, cache)) == "org/some-model"


def test_lora_visibly_learns_a_toy_task(tiny_model: Path) -> None:
    """What the demo relies on: a few dozen LoRA steps on short Q/A pairs make the loss fall clearly."""
    import random

    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from trainconsole.engine.data.encode import IGNORE, tokenize_batch

    tok = _tokenizer(tiny_model)
    model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(str(tiny_model)),
        LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"),
    )
    rng = random.Random(0)
    torch.manual_seed(0)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    losses = []
    for _step in range(60):
        pairs = [(rng.randint(0, 9), rng.randint(0, 9)) for _ in range(4)]
        chats = [[{"role": "user", "content": f"What is {a}+{b}?"}, {"role": "assistant", "content": str(a + b)}]
                 for a, b in pairs]
        ids, labels, _ = tokenize_batch(chats, tok, 128, "truncate")
        width = max(len(x) for x in ids)
        batch = torch.full((len(ids), width), tok.pad_token_id)
        target = torch.full((len(ids), width), IGNORE)
        attention = torch.zeros((len(ids), width), dtype=torch.long)
        for row, (x, y) in enumerate(zip(ids, labels, strict=True)):
            batch[row, : len(x)] = torch.from_numpy(x.astype("int64"))
            target[row, : len(y)] = torch.from_numpy(y.astype("int64"))
            attention[row, : len(x)] = 1
        loss = model(input_ids=batch, attention_mask=attention, labels=target).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    first, last = sum(losses[:5]) / 5, sum(losses[-10:]) / 10
    assert last < first - 1.0, (first, last)


def test_resolve_base_model_from_the_shipped_config(workspace: Path, tiny_model: Path) -> None:
    from trainconsole.engine.config import load_config

    cfg = load_config(workspace / "config.toml")
    assert cfg.model.base_model == "builtin:tiny-chat"
    assert resolve_base_model(cfg) == tiny_model
