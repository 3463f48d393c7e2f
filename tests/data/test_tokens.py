"""Tokenization for training: labels on exactly the assistant turns, the length policy (cases 3 and
33), and the on-disk token cache (reuse, invalidation, repair)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from trainconsole.engine.data.encode import IGNORE, encode_batch, token_counter, tokenize_batch
from trainconsole.engine.errors import ConfigError, DataError
from trainconsole.engine.train.tokens import TokenCache, build_cache, cache_key

CHATS: list[list[dict[str, Any]]] = [
    [
        {"role": "system", "content": "Answer briefly."},
        {"role": "user", "content": "What is 2+3?"},
        {"role": "assistant", "content": "It is 5."},
        {"role": "user", "content": "And 4+4?"},
        {"role": "assistant", "content": "  8, with spaces\nand a newline "},
    ],
    [
        {"role": "user", "content": "Look it up."},
        {"role": "assistant", "content": "Calling the tool."},
        {"role": "tool", "content": '{"answer": "Paris"}'},
        {"role": "assistant", "content": "Paris ✈ 東京"},
    ],
    [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}],
]


@pytest.fixture(scope="module")
def tok(tiny_model: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(tiny_model))


def _trained_text(tok: Any, labels: np.ndarray) -> str:
    return str(tok.decode([int(x) for x in labels if x != IGNORE]))


def test_labels_match_transformers_assistant_mask(tok: Any) -> None:
    ids, labels, stats = tokenize_batch(CHATS, tok, 1024, "truncate")
    assert stats.kept == len(CHATS) and stats.dropped == 0
    for chat, got_ids, got_labels in zip(CHATS, ids, labels, strict=True):
        ref = tok.apply_chat_template(chat, tokenize=True, return_assistant_tokens_mask=True, return_dict=True)
        assert got_ids.tolist() == ref["input_ids"]
        want = [i if m else IGNORE for i, m in zip(ref["input_ids"], ref["assistant_masks"], strict=True)]
        assert got_labels.tolist() == want


def test_a_batch_encoded_in_parts_gives_what_one_call_gives(tok: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from trainconsole.engine.data import encode

    # Past one part (the next part is encoded on a second thread), with a refused, a dropped and
    # a truncated example among them so every branch sees indices from later parts.
    chats = [CHATS[i % len(CHATS)] for i in range(2 * encode.PART + 7)]
    chats[encode.PART + 1] = [{"role": "assistant", "content": "no user turn"}, {"role": "bogus", "content": "x"}]
    chats[encode.PART + 3] = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a", "weight": 0}]
    chats[2 * encode.PART + 2] = [{"role": "user", "content": "w"}, {"role": "assistant", "content": "v " * 400}]
    parts, parts_stats = encode_batch(chats, tok, 200, "truncate")
    monkeypatch.setattr(encode, "PART", 1 << 30)
    whole, whole_stats = encode_batch(chats, tok, 200, "truncate")
    assert parts_stats == whole_stats and parts_stats.truncated and parts_stats.dropped
    assert len(parts) == len(whole) == len(chats)
    for a, b in zip(parts, whole, strict=True):
        assert (a is None) == (b is None)
        if a is not None and b is not None:
            assert a[0].tolist() == b[0].tolist() and a[1].tolist() == b[1].tolist()


def test_trained_tokens_are_the_assistant_turns_and_their_end_marker(tok: Any) -> None:
    _ids, labels, _ = tokenize_batch(CHATS, tok, 1024, "truncate")
    for chat, lab in zip(CHATS, labels, strict=True):
        want = "".join(m["content"] + "<|im_end|>" for m in chat if m["role"] == "assistant")
        assert _trained_text(tok, lab) == want


def test_weight_zero_turn_is_not_trained(tok: Any) -> None:
    chat = [dict(m) for m in CHATS[0]]
    chat[2]["weight"] = 0
    _ids, labels, _ = tokenize_batch([chat], tok, 1024, "truncate")
    assert _trained_text(tok, labels[0]) == "  8, with spaces\nand a newline <|im_end|>"


def test_every_turn_weight_zero_is_dropped_not_trained_on_nothing(tok: Any) -> None:
    chat = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a", "weight": 0}]
    ids, _labels, stats = tokenize_batch([chat, CHATS[2]], tok, 1024, "truncate")
    assert len(ids) == 1 and stats.dropped_no_labels == 1


def test_message_objects_from_the_data_gate(tok: Any, tmp_path: Path) -> None:
    from trainconsole.engine.data.gate import iter_examples

    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps({"messages": c}) + "\n" for c in CHATS))
    examples = list(iter_examples(data))
    ids, labels, _ = tokenize_batch([e.messages for e in examples], tok, 1024, "truncate")
    ref_ids, ref_labels, _ = tokenize_batch(CHATS, tok, 1024, "truncate")
    assert [a.tolist() for a in ids] == [a.tolist() for a in ref_ids]
    assert [a.tolist() for a in labels] == [a.tolist() for a in ref_labels]


def test_template_without_generation_markers_falls_back_exactly(tok: Any) -> None:
    from transformers import AutoTokenizer

    plain = AutoTokenizer.from_pretrained(tok.name_or_path)
    plain.chat_template = tok.chat_template.replace("{%- generation -%}", "").replace("{%- endgeneration -%}", "")
    _ids, labels, stats = tokenize_batch(CHATS, plain, 1024, "truncate")
    assert stats.kept == 3
    for chat, lab in zip(CHATS, labels, strict=True):
        # Without markers a turn is what it adds to the text, so its closing newline is trained too.
        want = "".join(m["content"] + "<|im_end|>\n" for m in chat if m["role"] == "assistant")
        assert _trained_text(tok, lab) == want


def test_template_that_cannot_be_split_is_a_config_error(tok: Any) -> None:
    from transformers import AutoTokenizer

    odd = AutoTokenizer.from_pretrained(tok.name_or_path)
    odd.chat_template = "{% for m in messages %}{{ m['content'] }}{% if loop.last %}END{% endif %}{% endfor %}"
    with pytest.raises(ConfigError, match="generation"):
        tokenize_batch(CHATS[:1], odd, 1024, "truncate")
    odd.chat_template = None
    with pytest.raises(ConfigError, match="no chat template"):
        tokenize_batch(CHATS[:1], odd, 1024, "truncate")


def test_a_conversation_the_template_refuses_is_dropped_and_counted(tok: Any) -> None:
    bad = [{"role": "wizard", "content": "abracadabra"}, {"role": "assistant", "content": "x"}]
    results, stats = encode_batch([CHATS[2], bad, CHATS[1]], tok, 1024, "truncate")
    assert [r is None for r in results] == [False, True, False]
    assert stats.dropped_template == 1 and "unknown role wizard" in stats.first_template_error


def _long_chats() -> list[list[dict[str, str]]]:
    filler = "many words " * 200
    return [
        # assistant first, then a long tail: truncation keeps its answer
        [{"role": "assistant", "content": "early answer"}, {"role": "user", "content": filler}],
        # the answer sits past max_length: truncation would leave nothing to learn
        [{"role": "user", "content": filler}, {"role": "assistant", "content": "late answer"}],
        # long answer: truncated, still trains on its first part
        [{"role": "user", "content": "write a lot"}, {"role": "assistant", "content": filler}],
        CHATS[2],
    ]


@pytest.mark.edge(3)
def test_truncation_never_leaves_an_example_without_labels(tok: Any) -> None:
    results, stats = encode_batch(_long_chats(), tok, 128, "truncate")
    assert [r is None for r in results] == [False, True, False, False]
    # The late answer is dropped, not also counted as truncated: each example is counted once.
    assert stats.truncated == 2 and stats.dropped_no_labels == 1 and stats.kept == 3
    for r in results:
        if r is not None:
            ids, labels = r
            assert len(ids) == len(labels) <= 128
            assert np.count_nonzero(labels != IGNORE) > 0
    assert stats.longest > 128


@pytest.mark.edge(3)
def test_drop_policy_drops_over_long_examples(tok: Any) -> None:
    results, stats = encode_batch(_long_chats(), tok, 128, "drop")
    assert [r is None for r in results] == [True, True, True, False]
    assert stats.dropped_long == 3 and stats.truncated == 0 and stats.kept == 1
    with pytest.raises(ConfigError, match="data.long_examples"):
        encode_batch(_long_chats(), tok, 128, "wrap")


@pytest.mark.edge(33)
@pytest.mark.parametrize("policy", ["truncate", "drop"])
def test_max_length_below_the_shortest_example(tok: Any, tmp_path: Path, policy: str) -> None:
    chats = [[{"role": "user", "content": "question " * 80}, {"role": "assistant", "content": "answer " * 5}]] * 4
    shortest = len(tok.apply_chat_template(chats[0])["input_ids"])
    assert shortest > 128
    with pytest.raises(DataError) as err:
        build_cache(chats, tok, 128, policy, tmp_path / "tokens", key="k", source="train.jsonl")
    assert err.value.case == 33
    assert f"max_length 128 is below the shortest example ({shortest} tokens)" in err.value.message
    assert "train.jsonl" in err.value.message
    assert not (tmp_path / "tokens").exists()
    assert [p.name for p in tmp_path.iterdir() if not p.name.endswith(".lock")] == []


def _gen(chats: list[list[dict[str, Any]]], seen: list[int]) -> Iterator[dict[str, Any]]:
    for i, chat in enumerate(chats):
        seen.append(i)
        yield {"messages": chat, "line": 10 + i}


def test_cache_round_trip_and_reuse(tok: Any, tmp_path: Path) -> None:
    chats = CHATS * 5 + _long_chats()
    key = cache_key("sha-of-file", tok, 128, "truncate")
    seen: list[int] = []
    cache = build_cache(_gen(chats, seen), tok, 128, "truncate", tmp_path / "tokens", key=key, chunk=4)
    assert len(seen) == len(chats)
    ref = encode_batch(chats, tok, 128, "truncate")[0]
    kept = [(i, r) for i, r in enumerate(ref) if r is not None]
    assert len(cache) == len(kept) == len(chats) - 1
    for j, (i, (ids, labels)) in enumerate(kept):
        got_ids, got_labels = cache[j]
        assert got_ids.tolist() == ids.tolist() and got_labels.tolist() == labels.tolist()
        assert cache.line(j) == 10 + i
    assert cache.truncated == 2 and cache.dropped == 1 and cache.key == key
    assert cache.lengths().tolist() == [len(r[0]) for _, r in kept]

    again: list[int] = []
    reused = build_cache(_gen(chats, again), tok, 128, "truncate", tmp_path / "tokens", key=key)
    assert again == [], "a matching cache must be reused without reading the data"
    assert len(reused) == len(cache)
    opened = TokenCache.open(tmp_path / "tokens")
    assert opened[-1][0].tolist() == cache[len(cache) - 1][0].tolist()
    with pytest.raises(IndexError):
        opened[len(opened)]


def test_cache_is_rebuilt_when_the_key_changes_or_files_are_damaged(tok: Any, tmp_path: Path) -> None:
    folder = tmp_path / "tokens"
    k1 = cache_key("sha-1", tok, 1024, "truncate")
    assert cache_key("sha-2", tok, 1024, "truncate") != k1
    assert cache_key("sha-1", tok, 512, "truncate") != k1
    assert cache_key("sha-1", tok, 1024, "drop") != k1
    build_cache(CHATS, tok, 1024, "truncate", folder, key=k1)
    seen: list[int] = []
    other = build_cache(_gen(CHATS[:1], seen), tok, 1024, "truncate", folder, key="another")
    assert seen == [0] and len(other) == 1 and other.key == "another"

    ids_file = folder / "input_ids.bin"
    ids_file.write_bytes(ids_file.read_bytes()[:-8])
    with pytest.raises(ValueError):
        TokenCache.open(folder)
    seen.clear()
    repaired = build_cache(_gen(CHATS, seen), tok, 1024, "truncate", folder, key="another")
    assert seen == [0, 1, 2] and len(repaired) == 3
    leftovers = [p.name for p in tmp_path.iterdir() if p.name != "tokens" and not p.name.endswith(".lock")]
    assert leftovers == []


def test_token_counter_agrees_with_the_chat_template(tok: Any, tmp_path: Path) -> None:
    from trainconsole.engine.data.gate import iter_examples

    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps({"messages": c}) + "\n" for c in CHATS))
    counts = token_counter(tok)(list(iter_examples(data)))
    assert counts == [len(tok.apply_chat_template(c)["input_ids"]) for c in CHATS]


def _variant(tok: Any, kind: str) -> Any:
    from transformers import AutoTokenizer

    other = AutoTokenizer.from_pretrained(tok.name_or_path)
    if kind == "trim":
        other.chat_template = tok.chat_template.replace(
            "message['content'] + '<|im_end|>'", "(message['content'] | trim) + '<|im_end|>'")
    elif kind == "branch":
        other.chat_template = tok.chat_template.replace(
            "{%- generation -%}", "{%- generation -%}{%- if 'Paris' in message['content'] -%}[city] {% endif -%}")
    return other


@pytest.mark.parametrize("kind", ["builtin", "trim", "branch"])
def test_batched_rendering_matches_the_template_exactly(tok: Any, kind: str) -> None:
    from trainconsole.engine.data.chat_render import _prints_content_only

    variant = _variant(tok, kind)
    assert variant.chat_template != tok.chat_template or kind == "builtin"
    assert _prints_content_only(variant.chat_template) == (kind == "builtin")
    # Same role sequence several times, the content-dependent one last, so only a renderer that
    # really applies the template to every conversation gets it right.
    chats = [CHATS[2], [{"role": "user", "content": " pad "}, {"role": "assistant", "content": "  x  "}]] * 3
    chats += [[{"role": "user", "content": "where?"}, {"role": "assistant", "content": " Paris "}], CHATS[1]]
    ids, labels, _ = tokenize_batch(chats, variant, 1024, "truncate")
    for chat, got_ids, got_labels in zip(chats, ids, labels, strict=True):
        ref = variant.apply_chat_template(chat, tokenize=True, return_assistant_tokens_mask=True, return_dict=True)
        assert got_ids.tolist() == ref["input_ids"]
        want = [i if m else IGNORE for i, m in zip(ref["input_ids"], ref["assistant_masks"], strict=True)]
        assert got_labels.tolist() == want


def _write_jsonl(path: Path, chats: list[list[dict[str, Any]]], bad_line_at: int | None = None) -> None:
    lines = [json.dumps({"messages": c}) for c in chats]
    if bad_line_at is not None:
        lines.insert(bad_line_at, '{"messages": [')
    path.write_text("\n".join(lines) + "\n")


@pytest.mark.edge(3)
def test_long_examples_in_a_real_file_are_truncated_or_dropped(tok: Any, tmp_path: Path) -> None:
    from trainconsole.engine.data.gate import iter_examples

    data = tmp_path / "long.jsonl"
    _write_jsonl(data, _long_chats(), bad_line_at=1)
    cache = build_cache(iter_examples(data), tok, 128, "truncate", tmp_path / "tokens", key="t",
                        source=str(data))
    # line 2 is the broken record (skipped by the gate), line 3 the answer past max_length
    assert [cache.line(i) for i in range(len(cache))] == [1, 4, 5]
    assert cache.truncated == 2 and cache.dropped == 1
    assert all(len(cache[i][0]) <= 128 and (cache[i][1][1:] != IGNORE).any() for i in range(len(cache)))

    dropped = build_cache(iter_examples(data), tok, 128, "drop", tmp_path / "tokens-drop", key="d")
    assert [dropped.line(i) for i in range(len(dropped))] == [5]
    assert dropped.stats.dropped_long == 3 and dropped.truncated == 0


@pytest.mark.edge(33)
def test_max_length_below_every_example_in_a_real_file(tok: Any, tmp_path: Path) -> None:
    from trainconsole.engine.data.gate import iter_examples

    data = tmp_path / "wordy.jsonl"
    _write_jsonl(data, [[{"role": "user", "content": f"question {i} " + "and more " * 60},
                         {"role": "assistant", "content": "yes"}] for i in range(5)])
    with pytest.raises(DataError, match=r"wordy.jsonl: training.max_length 128 is below the shortest example"):
        build_cache(iter_examples(data), tok, 128, "truncate", tmp_path / "tokens", key="k", source=str(data))


def test_truncation_saved_in_the_tokenizer_does_not_cut_silently(tok: Any) -> None:
    from transformers import AutoTokenizer

    other = AutoTokenizer.from_pretrained(tok.name_or_path)
    other.backend_tokenizer.enable_truncation(8)
    results, stats = encode_batch(_long_chats()[2:3], other, 128, "truncate")
    assert stats.truncated == 1 and stats.longest > 128 and len(results[0][0]) == 128  # type: ignore[index]
