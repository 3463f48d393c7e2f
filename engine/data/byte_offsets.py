"""Token positions from token ids alone, for byte-level BPE tokenizers (GPT-2, Llama 3, SmolLM2,
the built-in model): there every vocabulary entry stands for a fixed run of bytes and the tokens of
a text concatenate back to exactly its UTF-8 bytes, so the cumulative byte lengths of the ids are
the tokens' offsets.

The fast tokenizer can report offsets itself, but converting them to character offsets takes about
a third of its encoding time; encoding without offsets (``encode_batch_fast``) and finding the
few span boundaries here is what makes labelling cost less than encoding with offsets.

Exactness is checked, never assumed: the table exists only for a BPE model with no normalizer (or
NFC, used on ASCII text only, which it leaves alone), whose vocabulary is all in the byte-level
alphabet and whose added tokens strip nothing around them; and a text whose tokens do not add up
to its own byte length is handed back (None), for the caller to encode with offsets.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from typing import Any

import numpy as np

_TABLES: OrderedDict[int, tuple[Any, ByteTable | None]] = OrderedDict()
_KEEP = 4  # tokenizers whose tables are kept: a worker has one, tests a few


class ByteTable:
    """The byte length of every token id of one tokenizer."""

    def __init__(self, lengths: np.ndarray, ascii_only: bool) -> None:
        self.lengths = lengths
        self.ascii_only = ascii_only  # an NFC normalizer: exact only where it changes nothing

    def offsets(self, text: str, ids: np.ndarray) -> ByteOffsets | None:
        """The tokens' end offsets in ``text``'s bytes, or None where they do not account for it."""
        if self.ascii_only and not text.isascii():
            return None
        if ids.size and int(ids.max()) >= len(self.lengths):
            return None
        ends = np.cumsum(self.lengths[ids], dtype=np.int64)
        raw = None if text.isascii() else text.encode("utf-8")
        total = len(text) if raw is None else len(raw)
        if (int(ends[-1]) if ends.size else 0) != total:
            return None
        return ByteOffsets(text, ends, raw is not None)


class ByteOffsets:
    """One text's token end offsets, in bytes."""

    def __init__(self, text: str, ends: np.ndarray, wide: bool) -> None:
        self.text = text
        self.ends = ends
        self.wide = wide  # some characters take more than one byte

    def _byte(self, char: int) -> int:
        return len(self.text[:char].encode("utf-8")) if self.wide else char

    def span_to_tokens(self, start: int, end: int) -> tuple[int, int] | None:
        """The token range [a, b) of every token overlapping the characters [start, end)."""
        if end <= start:
            return None
        first, last = self._byte(start), self._byte(end) - 1
        a = int(np.searchsorted(self.ends, first, side="right"))
        b = int(np.searchsorted(self.ends, last, side="right"))
        return (a, b + 1) if b < len(self.ends) else None


def byte_table(backend: Any) -> ByteTable | None:
    """The table for a ``tokenizers.Tokenizer``, built once per tokenizer; None where its tokens
    are not plain byte runs (then offsets come from the tokenizer)."""
    key = id(backend)
    hit = _TABLES.get(key)
    if hit is not None and hit[0] is backend:
        _TABLES.move_to_end(key)
        return hit[1]
    table = _build(backend)
    _TABLES[key] = (backend, table)  # the backend is held, so its id is not reused while cached
    while len(_TABLES) > _KEEP:
        _TABLES.popitem(last=False)
    return table


def _build(backend: Any) -> ByteTable | None:
    from tokenizers import pre_tokenizers

    spec = json.loads(backend.to_str())
    model, normalizer = spec.get("model") or {}, spec.get("normalizer")
    if model.get("type") != "BPE" or model.get("byte_fallback"):
        return None
    if normalizer is not None and normalizer.get("type") != "NFC":
        return None
    pre = spec.get("pre_tokenizer") or {}
    steps = pre.get("pretokenizers", [pre]) if pre.get("type") == "Sequence" else [pre]
    if not any(s.get("type") == "ByteLevel" for s in steps) or any(
            s.get("type") == "ByteLevel" and s.get("add_prefix_space") for s in steps):
        return None
    vocab: dict[str, int] = model.get("vocab") or {}
    added = spec.get("added_tokens") or []
    size = max([*vocab.values(), *(t["id"] for t in added), -1]) + 1
    lengths = np.full(size, -1, dtype=np.int64)
    alphabet = set(pre_tokenizers.ByteLevel.alphabet())
    for token, i in vocab.items():
        if not set(token) <= alphabet:
            return None
        lengths[i] = len(token)
    for t in added:
        if t.get("lstrip") or t.get("rstrip") or t.get("single_word"):
            return None
        lengths[t["id"]] = len(t["content"].encode("utf-8"))
    if (lengths < 0).any():
        return None
    return ByteTable(lengths, ascii_only=normalizer is not None)
