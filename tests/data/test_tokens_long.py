"""Examples far longer than max_length: only a prefix is encoded (bounded memory, case 80), with the
same tokens and labels as encoding the whole text then truncating, and the zero-trainable-tokens
rule (case 3) still applied. Peak RSS is measured in a child process; a memory bound, not a time
bound."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.helpers import ROOT
from trainconsole.engine.data.encode import IGNORE, encode_batch
from trainconsole.engine.data.long_text import prefix_chars
from trainconsole.engine.train.tokens import _chunks


@pytest.fixture(scope="module")
def tok(tiny_model: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(tiny_model))


def _reference(tok: Any, chat: list[dict[str, str]]) -> tuple[list[int], list[int]]:
    ref = tok.apply_chat_template(chat, tokenize=True, return_assistant_tokens_mask=True, return_dict=True)
    ids = list(ref["input_ids"])
    return ids, [i if m else IGNORE for i, m in zip(ids, ref["assistant_masks"], strict=True)]


def _prose(words: int) -> str:
    vocab = ["alpha", "beta,", "gamma", "délta", "東京", "x9", "\n", "(quoted)", "  two"]
    return " ".join(vocab[(i * 7) % len(vocab)] for i in range(words))


def _limit(tok: Any, max_length: int) -> int:
    return prefix_chars(tok.backend_tokenizer, max_length)


@pytest.mark.edge(3, 80)
def test_a_cut_example_gets_the_tokens_and_labels_of_the_whole_one(tok: Any) -> None:
    max_length = 40
    chats = [
        [{"role": "user", "content": "Write a lot."}, {"role": "assistant", "content": _prose(6000)}],
        [{"role": "system", "content": "s"}, {"role": "user", "content": "q"},
         {"role": "assistant", "content": "a" * 50_000}],
    ]
    for chat in chats:
        assert len(chat[-1]["content"]) > _limit(tok, max_length)  # the cut path is the one under test
    results, stats = encode_batch(chats, tok, max_length, "truncate")
    assert stats.kept == 2 and stats.truncated == 2
    lengths = []
    for chat, result in zip(chats, results, strict=True):
        assert result is not None
        ids, labels = _reference(tok, chat)
        lengths.append(len(ids))
        assert result[0].tolist() == ids[:max_length]
        assert result[1].tolist() == labels[:max_length]
    assert stats.longest == max(lengths) and stats.shortest == min(lengths)


@pytest.mark.edge(3, 80)
def test_an_assistant_turn_past_the_cut_is_dropped_for_having_nothing_to_learn(tok: Any) -> None:
    chat = [{"role": "user", "content": _prose(8000)}, {"role": "assistant", "content": "short answer"}]
    assert len(_prose(8000)) > _limit(tok, 32)
    results, stats = encode_batch([chat], tok, 32, "truncate")
    assert results == [None]
    assert stats.dropped_no_labels == 1 and stats.kept == 0
    assert stats.longest == len(_reference(tok, chat)[0])


@pytest.mark.edge(3, 80)
def test_drop_policy_drops_a_far_too_long_example_and_counts_its_length(tok: Any) -> None:
    fits = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    huge = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": _prose(9000)}]
    results, stats = encode_batch([fits, huge], tok, 64, "drop")
    assert results[1] is None and results[0] is not None
    assert stats.dropped_long == 1 and stats.kept == 1
    assert stats.longest == len(_reference(tok, huge)[0])
    ids, labels = _reference(tok, fits)
    assert results[0][0].tolist() == ids and results[0][1].tolist() == labels
    assert np.count_nonzero(results[0][1] != IGNORE)


@pytest.mark.edge(80)
def test_chunks_are_cut_short_by_the_text_they_hold() -> None:
    examples = [[{"role": "user", "content": "x" * n}] for n in (10, 10, 500, 10, 10, 10)]
    sizes = [len(c) for c in _chunks(examples, 4, chars=100)]
    assert sizes == [3, 3]
    assert [len(c) for c in _chunks(examples, 4, chars=10_000)] == [4, 2]


MEASURE = """
import json, resource, sys
from pathlib import Path
from transformers import AutoTokenizer
from trainconsole.engine.data.gate import iter_examples
from trainconsole.engine.train.tokens import build_cache
tok = AutoTokenizer.from_pretrained(sys.argv[2])
tok.apply_chat_template([{"role": "user", "content": "warm"}, {"role": "assistant", "content": "up"}])
base_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
cache = build_cache(iter_examples(Path(sys.argv[1])), tok, 256, sys.argv[3], Path(sys.argv[4]), key="k")
peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"base_mb": base_kb / 1024, "peak_mb": peak_kb / 1024, "stats": cache.stats.to_dict(),
                  "lines": [cache.line(i) for i in range(len(cache))]}))
"""


@pytest.mark.edge(3, 80)
@pytest.mark.parametrize("policy", ["truncate", "drop"])
def test_a_ten_megabyte_turn_builds_the_token_cache_in_bounded_memory(
        tok: Any, tiny_model: Path, tmp_path: Path, policy: str) -> None:
    data = tmp_path / "big.jsonl"
    small = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello there"}]}
    big = {"messages": [{"role": "user", "content": "a" * 10_000_000}, {"role": "assistant", "content": "ok"}]}
    data.write_text("\n".join(json.dumps(r) for r in (small, big, small)) + "\n")
    done = subprocess.run([sys.executable, "-c", MEASURE, str(data), str(tiny_model), policy,
                           str(tmp_path / "cache")], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    # Encoding the whole 10 MB line took about 1.9 GB over the loaded tokenizer (~150 bytes a token);
    # the line itself, its parse and its rendering account for some tens of MB.
    assert result["peak_mb"] - result["base_mb"] < 250, result
    stats = result["stats"]
    assert stats["kept"] == 2 and result["lines"] == [1, 3]
    assert stats["longest"] > 10_000_000
    if policy == "drop":
        assert stats["dropped_long"] == 1
    else:
        # The user turn fills max_length, so the cut leaves no assistant token: dropped, as always.
        assert stats["dropped_no_labels"] == 1
