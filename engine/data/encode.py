"""Encoding conversations into token ids and labels, without torch: the one implementation that
the data gate's token counts (``trainconsole validate``) and the worker's token cache
(``trainconsole.engine.train.tokens``) share, so a count shown before training is the count
training sees.

Speed comes from batching: a chunk of conversations is rendered to text with the model's chat
template in one pass (recording the character spans of its ``{% generation %}`` blocks), then
encoded by one batched call of the fast tokenizer; each assistant span is mapped to tokens by a
binary search in the tokens' byte offsets (``trainconsole.engine.data.byte_offsets``; the
tokenizer's ``char_to_token`` where those cannot be known from the ids), so no Python loop runs per
token. A template without generation markers falls
back to rendering each conversation prefix by prefix (slower, still exact), and refuses with a
ConfigError when its output is not prefix-stable: labels are never silently all masked.

A text longer than max_length tokens could ever span (at the vocabulary's longest token) is encoded
only up to that point, its assistant spans clipped there; its full length is counted piece by piece
(``trainconsole.engine.data.long_text``).

``tokenizer`` is anything with ``backend_tokenizer``, ``chat_template`` and ``special_tokens_map``:
a transformers fast tokenizer in the worker, ``trainconsole.engine.data.tokenizer.LightTokenizer``
in the data gate. Changing what is produced here changes the token cache: bump its
``CACHE_VERSION`` (``trainconsole.engine.train.tokens``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from functools import partial
from typing import Any

import numpy as np

from trainconsole.engine.data.byte_offsets import ByteTable, byte_table
from trainconsole.engine.data.chat_render import render_batch
from trainconsole.engine.data.long_text import LONG_TEXT, MARGIN, count_long, prefix_chars
from trainconsole.engine.data.scan import TokenCounter
from trainconsole.engine.errors import ConfigError

IGNORE = -100
Spans = Callable[[int, int], tuple[int, int] | None]
LONG_POLICIES = ("truncate", "drop")


@dataclass
class EncodeStats:
    """Counts over the examples seen so far; ``shortest``/``longest`` are full lengths, before any
    truncation."""

    examples: int = 0
    kept: int = 0
    tokens: int = 0  # tokens kept, after truncation
    label_tokens: int = 0  # of those, the ones trained on
    truncated: int = 0
    dropped_long: int = 0  # over max_length with long_examples = "drop"
    dropped_no_labels: int = 0  # nothing left to train on (truncated away, or every turn weight 0)
    dropped_template: int = 0  # the chat template refused the conversation
    shortest: int = 0
    longest: int = 0
    first_template_error: str = ""

    @property
    def dropped(self) -> int:
        return self.dropped_long + self.dropped_no_labels + self.dropped_template

    def add(self, other: EncodeStats) -> None:
        if other.examples and other.shortest and (not self.shortest or other.shortest < self.shortest):
            self.shortest = other.shortest
        self.longest = max(self.longest, other.longest)
        for name in ("examples", "kept", "tokens", "label_tokens", "truncated", "dropped_long",
                     "dropped_no_labels", "dropped_template"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.first_template_error = self.first_template_error or other.first_template_error

    def _seen_length(self, n: int) -> None:
        self.shortest = n if not self.shortest else min(self.shortest, n)
        self.longest = max(self.longest, n)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "dropped": self.dropped}


def _as_dicts(messages: Sequence[Any]) -> tuple[list[dict[str, str]], list[int]]:
    """Plain role/content dicts for the template (it never sees our weight field) and the weights."""
    plain: list[dict[str, str]] = []
    weights: list[int] = []
    for m in messages:
        if isinstance(m, dict):
            role, content, weight = m["role"], m["content"], m.get("weight", 1)
        else:
            role, content, weight = m.role, m.content, getattr(m, "weight", 1)
        plain.append({"role": role, "content": content})
        weights.append(1 if weight is None else int(weight))
    return plain, weights


def _span_to_tokens(enc: Any, start: int, end: int) -> tuple[int, int] | None:
    """The token range [a, b) of every token overlapping the characters [start, end)."""
    if end <= start:
        return None
    a = enc.char_to_token(start)
    b = enc.char_to_token(end - 1)
    if a is not None and b is not None:
        return a, b + 1
    # A normalizer dropped those characters: fall back to overlap on the offsets, as transformers does.
    hits = [i for i, (s, e) in enumerate(enc.offsets) if e > start and s < end]
    return (hits[0], hits[-1] + 1) if hits else None


def fast_backend(tokenizer: Any) -> Any:
    """The tokenizer's ``tokenizers.Tokenizer``, with any truncation or padding of its own cleared;
    a ConfigError for a slow tokenizer (no tokenizer.json)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise ConfigError(
            f"model.base_model: the tokenizer ({type(tokenizer).__name__}) is not a fast tokenizer; "
            "training needs one (a tokenizer.json) to find the assistant tokens"
        )
    # A tokenizer.json may carry its own truncation or padding; the length policy here is ours, and
    # the transformers wrapper clears these per call as well.
    if backend.truncation is not None:
        backend.no_truncation()
    if backend.padding is not None:
        backend.no_padding()
    return backend


# Examples per encode call when a batch is encoded in parts (see _encodings).
PART = 256


def _encodings(backend: Any, texts: list[str], *, offsets: bool) -> Iterator[tuple[int, Any]]:
    """``(index, encoding)`` for each text, in order; without ``offsets`` the encodings carry
    none (``encode_batch_fast``). A large batch is encoded in parts, the next part on a second
    thread while the caller works through the one before: the fast tokenizer releases the GIL while
    it encodes, so the Python work of finding the assistant tokens overlaps the encoding instead of
    following it."""
    encode = backend.encode_batch if offsets else backend.encode_batch_fast
    if len(texts) <= PART:
        yield from enumerate(encode(texts, add_special_tokens=False))
        return
    starts = range(0, len(texts), PART)
    # A pool per call: one made before a fork would leave the child a pool whose thread is gone.
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="encode") as pool:
        pending = pool.submit(encode, texts[:PART], add_special_tokens=False)
        for start in starts:
            encodings = pending.result()
            if start + PART < len(texts):
                pending = pool.submit(encode, texts[start + PART:start + 2 * PART], add_special_tokens=False)
            yield from enumerate(encodings, start)


def _located(backend: Any, table: ByteTable | None, text: str, enc: Any) -> tuple[np.ndarray, Spans]:
    """The ids of ``text`` and how to find the tokens of a character span in them: from the ids'
    byte lengths where the table accounts for the text, else from the tokenizer's own offsets."""
    ids = np.asarray(enc.ids, dtype=np.int32)
    if table is None:
        return ids, partial(_span_to_tokens, enc)
    located = table.offsets(text, ids)
    if located is not None:
        return ids, located.span_to_tokens
    enc = backend.encode(text, add_special_tokens=False)
    return np.asarray(enc.ids, dtype=np.int32), partial(_span_to_tokens, enc)


def encode_batch(messages_list: Sequence[Sequence[Any]], tokenizer: Any, max_length: int,
                 long_examples: str) -> tuple[list[tuple[np.ndarray, np.ndarray] | None], EncodeStats]:
    """Tokenize a batch of conversations. Each result is ``(input_ids, labels)`` (int32; labels
    -100 outside trained assistant turns) or None when the example is dropped; the stats say why."""
    if long_examples not in LONG_POLICIES:
        raise ConfigError(f"data.long_examples: {long_examples!r} is not one of {', '.join(LONG_POLICIES)}")
    stats = EncodeStats(examples=len(messages_list))
    if not messages_list:
        return [], stats
    backend = fast_backend(tokenizer)
    plain, weights = zip(*(_as_dicts(m) for m in messages_list), strict=True)
    texts, spans, errors = render_batch(list(plain), tokenizer)
    limit = prefix_chars(backend, max_length)
    long = {i for i, t in enumerate(texts) if t is not None and len(t) > limit}
    # Far too long to fit: only a prefix long enough for max_length tokens (and a margin) is encoded,
    # so one huge line costs no more memory than an example that just fits.
    inputs = [("" if t is None else t[:limit] if i in long else t) for i, t in enumerate(texts)]
    table = byte_table(backend)
    out: list[tuple[np.ndarray, np.ndarray] | None] = []
    for i, enc in _encodings(backend, inputs, offsets=table is None):
        text = texts[i]
        if text is None:
            stats.dropped_template += 1
            stats.first_template_error = stats.first_template_error or errors[i]
            out.append(None)
            continue
        ids, span_to_tokens = _located(backend, table, inputs[i], enc)
        if i in long and len(ids) < max_length + MARGIN:
            # A normalizer let tokens cover more characters than the vocabulary shows: stay exact.
            long.discard(i)
            enc = backend.encode(text, add_special_tokens=False)
            ids, span_to_tokens = np.asarray(enc.ids, dtype=np.int32), partial(_span_to_tokens, enc)
        n = count_long(backend, text) if i in long else len(ids)
        stats._seen_length(n)
        if n > max_length and long_examples == "drop":
            stats.dropped_long += 1
            out.append(None)
            continue
        labels = np.full(len(ids), IGNORE, dtype=np.int32)
        roles = [m["role"] for m in plain[i]]
        turn_weights = [w for r, w in zip(roles, weights[i], strict=True) if r == "assistant"]
        cut = limit if i in long else len(text)
        for (start, end), weight in zip(spans[i], turn_weights, strict=True):
            if not weight:
                continue
            # A turn past the cut is past max_length too; one across it is trained up to the cut.
            tokens = span_to_tokens(min(start, cut), min(end, cut))
            if tokens is not None:
                labels[tokens[0]:tokens[1]] = ids[tokens[0]:tokens[1]]
        cut_here = n > max_length
        if cut_here:
            ids, labels = ids[:max_length], labels[:max_length]
        # Causal LMs predict token t from tokens before it: a label on the first token never trains.
        trained = int(np.count_nonzero(labels[1:] != IGNORE))
        if not trained:
            stats.dropped_no_labels += 1  # counted once: an example is truncated or dropped, not both
            out.append(None)
            continue
        stats.truncated += cut_here
        stats.kept += 1
        stats.tokens += len(ids)
        stats.label_tokens += trained
        out.append((ids, labels))
    return out, stats


def tokenize_batch(messages_list: Sequence[Sequence[Any]], tokenizer: Any, max_length: int,
                   long_examples: str) -> tuple[list[np.ndarray], list[np.ndarray], EncodeStats]:
    """The kept examples of a batch as parallel lists of input ids and labels, with the counts."""
    results, stats = encode_batch(messages_list, tokenizer, max_length, long_examples)
    kept = [r for r in results if r is not None]
    return [r[0] for r in kept], [r[1] for r in kept], stats


def token_counter(tokenizer: Any) -> TokenCounter:
    """A counter for the data gate: examples -> full token counts, chat template applied. Examples
    the template refuses count as 0."""

    def count(examples: Sequence[Any]) -> list[int]:
        texts, _spans, _errors = render_batch([_as_dicts(e.messages)[0] for e in examples], tokenizer,
                                              spans=False)
        backend = fast_backend(tokenizer)
        encs = backend.encode_batch_fast(
            [t if t is not None and len(t) <= LONG_TEXT else "" for t in texts], add_special_tokens=False)
        return [0 if t is None else count_long(backend, t) if len(t) > LONG_TEXT else len(e.ids)
                for e, t in zip(encs, texts, strict=True)]

    return count
