"""Assistant tokens found from the ids' byte lengths (engine/data/byte_offsets.py) are the ones
transformers' own assistant mask gives, on any text; a tokenizer whose tokens are not plain byte
runs, or a text they do not account for, goes the tokenizer's offsets way with the same result."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from trainconsole.engine.data import encode
from trainconsole.engine.data.byte_offsets import byte_table
from trainconsole.engine.data.encode import IGNORE, encode_batch, tokenize_batch


@pytest.fixture(scope="module")
def tok(tiny_model: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(tiny_model))


def _with_backend(tok: Any, change: dict[str, Any]) -> Any:
    """The same tokenizer with parts of its tokenizer.json replaced (a normalizer, say)."""
    from tokenizers import Tokenizer
    from transformers import AutoTokenizer

    other = AutoTokenizer.from_pretrained(tok.name_or_path)
    spec = json.loads(tok.backend_tokenizer.to_str())
    spec.update(change)
    other._tokenizer = Tokenizer.from_str(json.dumps(spec))
    return other


def _assert_matches_transformers(tok: Any, chats: list[list[dict[str, str]]]) -> None:
    ids, labels, stats = tokenize_batch(chats, tok, 1 << 20, "truncate")
    kept = iter(zip(ids, labels, strict=True))
    for chat in chats:
        ref = tok.apply_chat_template(chat, tokenize=True, return_assistant_tokens_mask=True, return_dict=True)
        want = [i if m else IGNORE for i, m in zip(ref["input_ids"], ref["assistant_masks"], strict=True)]
        if sum(1 for x in want[1:] if x != IGNORE) == 0:
            continue  # nothing to train on: dropped, and counted
        got_ids, got_labels = next(kept)
        assert got_ids.tolist() == ref["input_ids"]
        assert got_labels.tolist() == want
    assert next(kept, None) is None and stats.kept == len(ids)


# Multi-byte characters, combining marks, emoji, whitespace at the edges of a turn and template
# markup inside the content: the places where byte and character offsets part.
PIECES = [*"ab Z.,\n\t  é漢字🙂", "e\u0301", "<|im_end|>", "<|im_start|>"]
TEXT = st.lists(st.sampled_from(PIECES), max_size=30).map("".join)
TURN = st.tuples(TEXT, TEXT)
CHAT = st.tuples(st.one_of(st.none(), TEXT), st.lists(TURN, min_size=1, max_size=3))


def _chat(system: str | None, turns: list[tuple[str, str]]) -> list[dict[str, str]]:
    chat = [] if system is None else [{"role": "system", "content": system}]
    for user, assistant in turns:
        chat += [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]
    return chat


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(CHAT, min_size=1, max_size=6))
def test_assistant_tokens_from_byte_lengths_match_transformers(tok: Any, chats: list[Any]) -> None:
    assert byte_table(tok.backend_tokenizer) is not None  # the built-in model takes the byte way
    _assert_matches_transformers(tok, [_chat(s, t) for s, t in chats])


def test_the_byte_way_and_the_offsets_way_agree_on_a_large_batch(tok: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    chats = [_chat("sys é" * (i % 3), [(f"q{i} 漢字", f" answer {i} 🙂 "), ("again", "e\u0301 " * (i % 5))])
             for i in range(2 * encode.PART + 5)]
    chats[7] = _chat(None, [("w", "v " * 400)])  # truncated at 200
    fast, fast_stats = encode_batch(chats, tok, 200, "truncate")
    monkeypatch.setattr(encode, "byte_table", lambda backend: None)
    slow, slow_stats = encode_batch(chats, tok, 200, "truncate")
    assert fast_stats == slow_stats and fast_stats.truncated == 1
    for a, b in zip(fast, slow, strict=True):
        assert a is not None and b is not None
        assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])


def test_a_tokenizer_with_a_normalizer_uses_its_own_offsets(tok: Any) -> None:
    lower = _with_backend(tok, {"normalizer": {"type": "Lowercase"}})
    assert byte_table(lower.backend_tokenizer) is None
    _assert_matches_transformers(lower, [_chat("Be BRIEF", [("Hi THERE", "HELLO é 🙂")])])


def test_an_nfc_tokenizer_takes_the_byte_way_for_ascii_only(tok: Any) -> None:
    nfc = _with_backend(tok, {"normalizer": {"type": "NFC"}})
    table = byte_table(nfc.backend_tokenizer)
    assert table is not None and table.ascii_only
    ids = np.asarray(nfc.backend_tokenizer.encode("cafe\u0301").ids)
    assert table.offsets("cafe\u0301", ids) is None  # NFC composed the accent: the ids no longer add up
    _assert_matches_transformers(nfc, [_chat(None, [("plain", "ascii")]), _chat(None, [("cafe\u0301", "cafe\u0301 e\u0301")])])


def test_a_text_the_ids_do_not_account_for_is_refused(tok: Any) -> None:
    table = byte_table(tok.backend_tokenizer)
    assert table is not None
    ids = np.asarray(tok.backend_tokenizer.encode("hello world").ids)
    assert table.offsets("hello world", ids) is not None
    assert table.offsets("hello world!", ids) is None
    assert table.offsets("hello", np.asarray([len(table.lengths)])) is None  # an id past the vocabulary
