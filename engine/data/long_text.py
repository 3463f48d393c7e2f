"""Very long texts, tokenized in bounded memory: counted in pieces, or cut to a prefix that still
holds more than max_length tokens. Ordinary examples never come here."""

from __future__ import annotations

from typing import Any

# An encoding costs ~150 bytes a token (ids, offsets, token strings): a 10 MB line would take over
# 1.5 GB in one piece. Longer texts are counted piece by piece, in bounded memory.
LONG_TEXT = 1 << 20  # characters
_PIECE = 1 << 16
_PIECES_AT_ONCE = 8  # encoded together, in parallel


def count_long(backend: Any, text: str) -> int:
    """Token count of a very long text, in pieces cut before a space: the pre-tokenizer splits
    there anyway, so ordinary text counts exactly; a run with no space is cut where it must be
    (off by a token or so per cut, for a text already far over any max_length)."""
    pieces: list[str] = []
    total, start = 0, 0
    while start < len(text):
        end = min(start + _PIECE, len(text))
        if end < len(text):
            cut = text.rfind(" ", start + 1, end)
            if cut > start:
                end = cut
        pieces.append(text[start:end])
        start = end
        if len(pieces) == _PIECES_AT_ONCE or start >= len(text):
            total += sum(len(e.ids) for e in backend.encode_batch_fast(pieces, add_special_tokens=False))
            pieces = []
    return total


# Tokens encoded past max_length before a cut text is trusted: the tokens next to a cut can differ
# from those of the whole text, and these keep that difference beyond what is kept.
MARGIN = 256
# backend id -> (backend, longest token in characters); the backend is held so its id is not reused.
_LONGEST: dict[int, tuple[Any, int]] = {}


def longest_token(backend: Any) -> int:
    """The most characters of text one token can stand for: its length in the vocabulary, where a
    byte-level symbol or a metaspace stands for at most one character (and byte-fallback spellings
    like <0xE3> for fewer). Computed once per tokenizer."""
    held = _LONGEST.get(id(backend))
    if held is None or held[0] is not backend:
        if len(_LONGEST) > 8:
            _LONGEST.clear()
        vocab = backend.get_vocab(with_added_tokens=True)
        held = (backend, max((len(token) for token in vocab), default=1))
        _LONGEST[id(backend)] = held
    return max(1, held[1])


def prefix_chars(backend: Any, max_length: int) -> int:
    """A text longer than this many characters holds more than max_length + MARGIN tokens."""
    return (max_length + MARGIN) * longest_token(backend)
