"""Tokenization for training: chat template, labels on assistant tokens only, length policy, and
the on-disk token cache the worker trains from.

Speed comes from batching: a chunk of conversations is rendered to text with the model's chat
template in one pass (recording the character spans of its ``{% generation %}`` blocks), then
encoded by one batched call of the fast tokenizer; each assistant span is mapped to tokens with
``char_to_token``, so no Python loop runs per token. A template without generation markers falls
back to rendering each conversation prefix by prefix (slower, still exact), and refuses with a
ConfigError when its output is not prefix-stable: labels are never silently all masked.

Memory stays bounded whatever the lines hold: a chunk is cut short once its text is large, and a
text longer than max_length tokens could ever span (at the vocabulary's longest token) is encoded
only up to that point, its assistant spans clipped there; its full length is counted piece by piece.

The cache is three flat binary files (``input_ids`` and ``labels`` int32, concatenated; ``offsets``
int64, one more than the examples) plus ``lines`` (each kept example's line in the data file),
read back memory-mapped. It is written in chunks to a staging folder and renamed into place, with
``meta.json`` (counts and the key) written last; a folder whose key matches is reused as it is.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from trainconsole.engine.data.chat_render import render_batch
from trainconsole.engine.data.long_text import LONG_TEXT, MARGIN, count_long, prefix_chars
from trainconsole.engine.errors import ConfigError, DataError

# Bump when anything here changes what is written, so old caches are rebuilt rather than trusted.
CACHE_VERSION = 1
CHUNK = 1000
CHUNK_CHARS = 1 << 21  # content characters in one chunk: ~1000 examples of ordinary size
IGNORE = -100
LONG_POLICIES = ("truncate", "drop")
FILES = {"input_ids": np.int32, "labels": np.int32, "offsets": np.int64, "lines": np.int64}


@dataclass
class TokenStats:
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

    def add(self, other: TokenStats) -> None:
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


def _backend(tokenizer: Any) -> Any:
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


def encode_batch(messages_list: Sequence[Sequence[Any]], tokenizer: Any, max_length: int,
                 long_examples: str) -> tuple[list[tuple[np.ndarray, np.ndarray] | None], TokenStats]:
    """Tokenize a batch of conversations. Each result is ``(input_ids, labels)`` (int32; labels
    -100 outside trained assistant turns) or None when the example is dropped; the stats say why."""
    if long_examples not in LONG_POLICIES:
        raise ConfigError(f"data.long_examples: {long_examples!r} is not one of {', '.join(LONG_POLICIES)}")
    stats = TokenStats(examples=len(messages_list))
    if not messages_list:
        return [], stats
    backend = _backend(tokenizer)
    plain, weights = zip(*(_as_dicts(m) for m in messages_list), strict=True)
    texts, spans, errors = render_batch(list(plain), tokenizer)
    limit = prefix_chars(backend, max_length)
    long = {i for i, t in enumerate(texts) if t is not None and len(t) > limit}
    # Far too long to fit: only a prefix long enough for max_length tokens (and a margin) is encoded,
    # so one huge line costs no more memory than an example that just fits.
    encodings = backend.encode_batch([("" if t is None else t[:limit] if i in long else t)
                                      for i, t in enumerate(texts)], add_special_tokens=False)
    out: list[tuple[np.ndarray, np.ndarray] | None] = []
    for i, enc in enumerate(encodings):
        text = texts[i]
        if text is None:
            stats.dropped_template += 1
            stats.first_template_error = stats.first_template_error or errors[i]
            out.append(None)
            continue
        if i in long and len(enc.ids) < max_length + MARGIN:
            # A normalizer let tokens cover more characters than the vocabulary shows: stay exact.
            long.discard(i)
            enc = backend.encode(text, add_special_tokens=False)
        ids = np.asarray(enc.ids, dtype=np.int32)
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
            tokens = _span_to_tokens(enc, min(start, cut), min(end, cut))
            if tokens is not None:
                labels[tokens[0]:tokens[1]] = ids[tokens[0]:tokens[1]]
        if n > max_length:
            ids, labels = ids[:max_length], labels[:max_length]
            stats.truncated += 1
        # Causal LMs predict token t from tokens before it: a label on the first token never trains.
        trained = int(np.count_nonzero(labels[1:] != IGNORE))
        if not trained:
            stats.dropped_no_labels += 1
            out.append(None)
            continue
        stats.kept += 1
        stats.tokens += len(ids)
        stats.label_tokens += trained
        out.append((ids, labels))
    return out, stats


def tokenize_batch(messages_list: Sequence[Sequence[Any]], tokenizer: Any, max_length: int,
                   long_examples: str) -> tuple[list[np.ndarray], list[np.ndarray], TokenStats]:
    """The kept examples of a batch as parallel lists of input ids and labels, with the counts."""
    results, stats = encode_batch(messages_list, tokenizer, max_length, long_examples)
    kept = [r for r in results if r is not None]
    return [r[0] for r in kept], [r[1] for r in kept], stats


def token_counter(tokenizer: Any) -> Any:
    """A counter for the data gate: examples -> full token counts, chat template applied. Examples
    the template refuses count as 0."""

    def count(examples: Sequence[Any]) -> list[int]:
        texts, _spans, _errors = render_batch([_as_dicts(e.messages)[0] for e in examples], tokenizer,
                                              spans=False)
        backend = _backend(tokenizer)
        encs = backend.encode_batch_fast(
            [t if t is not None and len(t) <= LONG_TEXT else "" for t in texts], add_special_tokens=False)
        return [0 if t is None else count_long(backend, t) if len(t) > LONG_TEXT else len(e.ids)
                for e, t in zip(encs, texts, strict=True)]

    return count


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """A hash of everything about a tokenizer that changes the tokens we write."""
    digest = hashlib.sha256()
    digest.update(_backend(tokenizer).to_str().encode())
    digest.update((tokenizer.chat_template or "").encode())
    digest.update(json.dumps(tokenizer.special_tokens_map, sort_keys=True, default=str).encode())
    return digest.hexdigest()


def cache_key(data_sha256: str, tokenizer: Any, max_length: int, long_examples: str) -> str:
    """The token cache key: the data file's hash, the tokenizer and the settings."""
    parts = [f"v{CACHE_VERSION}", data_sha256, tokenizer_fingerprint(tokenizer), str(max_length), long_examples]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


class TokenCache:
    """A finished token cache, memory-mapped: ``cache[i] -> (input_ids, labels)``."""

    def __init__(self, folder: Path, meta: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
        self.folder = folder
        self.meta = meta
        self._ids = arrays["input_ids"]
        self._labels = arrays["labels"]
        self._offsets = arrays["offsets"]
        self._lines = arrays["lines"]

    @classmethod
    def open(cls, folder: Path) -> TokenCache:
        """Open a cache; raises FileNotFoundError or ValueError when it is missing or incomplete."""
        folder = Path(folder)
        meta = json.loads((folder / "meta.json").read_text())
        if meta.get("version") != CACHE_VERSION:
            raise ValueError(f"{folder}: token cache version {meta.get('version')} is not {CACHE_VERSION}")
        arrays: dict[str, np.ndarray] = {}
        for name, dtype in FILES.items():
            path = folder / f"{name}.bin"
            want = int(meta["sizes"][name])
            have = path.stat().st_size // np.dtype(dtype).itemsize
            if have != want:
                raise ValueError(f"{path}: {have} values, meta.json says {want}")
            arrays[name] = (np.memmap(path, dtype=dtype, mode="r", shape=(want,)) if want
                            else np.zeros(0, dtype=dtype))
        if len(arrays["offsets"]) != meta["stats"]["kept"] + 1:
            raise ValueError(f"{folder}: offsets do not match the example count")
        return cls(folder, meta, arrays)

    @property
    def key(self) -> str:
        return str(self.meta["key"])

    @property
    def stats(self) -> TokenStats:
        fields = {k: v for k, v in self.meta["stats"].items() if k != "dropped"}
        return TokenStats(**fields)

    @property
    def truncated(self) -> int:
        return self.stats.truncated

    @property
    def dropped(self) -> int:
        return self.stats.dropped

    def __len__(self) -> int:
        return len(self._offsets) - 1

    def __getitem__(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        if not -len(self) <= i < len(self):
            raise IndexError(i)
        i %= len(self)
        a, b = int(self._offsets[i]), int(self._offsets[i + 1])
        return self._ids[a:b], self._labels[a:b]

    def line(self, i: int) -> int:
        """The data file line the i-th example came from."""
        return int(self._lines[i])

    def lengths(self) -> np.ndarray:
        return np.diff(self._offsets)


def _chunks(examples: Iterable[Any], size: int, chars: int = CHUNK_CHARS) -> Iterator[list[Any]]:
    """Lists of up to ``size`` examples, cut early once they hold ``chars`` characters of content:
    a chunk of long examples is held, rendered and encoded at once, so its text is what bounds RAM."""
    chunk: list[Any] = []
    held = 0
    for index, example in enumerate(examples):
        chunk.append(example)
        held += sum(len(m["content"] if isinstance(m, dict) else m.content)
                    for m in _messages_and_line(example, index)[0])
        if len(chunk) >= size or held >= chars:
            yield chunk
            chunk, held = [], 0
    if chunk:
        yield chunk


def _messages_and_line(example: Any, index: int) -> tuple[Sequence[Any], int]:
    if isinstance(example, dict):
        return example["messages"], int(example.get("line", index + 1))
    if hasattr(example, "messages"):
        return example.messages, int(getattr(example, "line", index + 1))
    return example, index + 1


def check_usable(stats: TokenStats, max_length: int, source: str = "the data") -> None:
    """Raise DataError when no example survived tokenization, saying why (case 33 when every
    example is longer than max_length)."""
    if stats.kept:
        return
    if not stats.examples:
        raise DataError(f"{source}: no examples to train on", case=1)
    if stats.shortest > max_length and stats.dropped_long + stats.dropped_no_labels == stats.examples:
        raise DataError(
            f"{source}: training.max_length {max_length} is below the shortest example "
            f"({stats.shortest} tokens), so no example fits; raise training.max_length or shorten the data",
            case=33,
        )
    if stats.dropped_template == stats.examples:
        raise DataError(f"{source}: the chat template refused every example: {stats.first_template_error}")
    raise DataError(
        f"{source}: no example has assistant tokens left to train on within max_length {max_length} "
        f"({stats.dropped_long} too long, {stats.dropped_no_labels} with nothing to learn after truncation "
        f"or weight 0, {stats.dropped_template} refused by the chat template)",
        case=3,
    )


def _reusable(cache_dir: Path, key: str) -> TokenCache | None:
    try:
        existing = TokenCache.open(cache_dir)
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return existing if existing.key == key else None


def build_cache(examples: Iterable[Any], tokenizer: Any, max_length: int, long_examples: str,
                cache_dir: Path, *, key: str, source: str = "the data", chunk: int = CHUNK) -> TokenCache:
    """Tokenize ``examples`` (Example objects, ``{"messages", "line"}`` dicts or message lists) into
    ``cache_dir``, or reuse what is there when its key matches. Streams in chunks: memory holds one
    chunk, never the file. Raises DataError when no example is usable (see ``check_usable``)."""
    from filelock import FileLock

    cache_dir = Path(cache_dir)
    reused = _reusable(cache_dir, key)
    if reused is not None:
        return reused
    cache_dir.parent.mkdir(parents=True, exist_ok=True)
    # Two workers tokenizing the same file into the same folder: the second waits, then reuses.
    with FileLock(str(cache_dir.parent / f".{cache_dir.name}.lock")):
        reused = _reusable(cache_dir, key)
        if reused is not None:
            return reused
        staging = cache_dir.parent / f".{cache_dir.name}.staging-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        staging.mkdir()
        try:
            stats = _write(staging, examples, tokenizer, max_length, long_examples, chunk)
            check_usable(stats, max_length, source)
            sizes = {name: (staging / f"{name}.bin").stat().st_size // np.dtype(dt).itemsize
                     for name, dt in FILES.items()}
            meta = {"version": CACHE_VERSION, "key": key, "max_length": max_length,
                    "long_examples": long_examples, "sizes": sizes, "stats": stats.to_dict()}
            with (staging / "meta.json").open("w") as fh:
                fh.write(json.dumps(meta, indent=1, sort_keys=True) + "\n")
                fh.flush()
                os.fsync(fh.fileno())
            if cache_dir.exists() or cache_dir.is_symlink():
                aside = cache_dir.parent / f".{cache_dir.name}.old-{uuid.uuid4().hex[:8]}"
                cache_dir.rename(aside)
                if aside.is_dir() and not aside.is_symlink():
                    shutil.rmtree(aside, ignore_errors=True)
                else:
                    aside.unlink()
            staging.rename(cache_dir)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return TokenCache.open(cache_dir)


def _write(folder: Path, examples: Iterable[Any], tokenizer: Any, max_length: int, long_examples: str,
           chunk: int) -> TokenStats:
    stats = TokenStats()
    handles = {name: (folder / f"{name}.bin").open("wb") for name in FILES}
    try:
        position = 0
        handles["offsets"].write(np.zeros(1, dtype=np.int64).tobytes())
        seen = 0
        for batch in _chunks(examples, chunk):
            pairs = [_messages_and_line(e, seen + j) for j, e in enumerate(batch)]
            seen += len(batch)
            results, part = encode_batch([p[0] for p in pairs], tokenizer, max_length, long_examples)
            stats.add(part)
            kept = [(r, line) for r, (_m, line) in zip(results, pairs, strict=True) if r is not None]
            if not kept:
                continue
            ids = np.concatenate([r[0] for r, _ in kept])
            labels = np.concatenate([r[1] for r, _ in kept])
            ends = position + np.cumsum([len(r[0]) for r, _ in kept], dtype=np.int64)
            position = int(ends[-1])
            handles["input_ids"].write(ids.tobytes())
            handles["labels"].write(labels.tobytes())
            handles["offsets"].write(ends.tobytes())
            handles["lines"].write(np.asarray([line for _, line in kept], dtype=np.int64).tobytes())
        for fh in handles.values():
            fh.flush()
            os.fsync(fh.fileno())
    finally:
        for fh in handles.values():
            fh.close()
    return stats
