"""The on-disk token cache the worker trains from. The encoding itself (chat template, labels on
assistant tokens only, length policy) is ``trainconsole.engine.data.encode``, shared with the
data gate's token counts.

Memory stays bounded whatever the lines hold: a chunk is cut short once its text is large, and the
encoder never holds more of a huge line than max_length tokens could span.

The cache is three flat binary files (``input_ids`` and ``labels`` int32, concatenated; ``offsets``
int64, one more than the examples) plus ``lines`` (each kept example's line in the data file),
read back memory-mapped. It is written in chunks to a staging folder and renamed into place, with
``meta.json`` (counts and the key) written last; a folder whose key matches is reused as it is.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from trainconsole.engine import fsio
from trainconsole.engine.data.encode import EncodeStats, encode_batch, fast_backend
from trainconsole.engine.errors import DataError

# Bump when anything here or in engine/data/encode.py changes what is written, so old caches are
# rebuilt rather than trusted.
CACHE_VERSION = 2
CHUNK = 1000
CHUNK_CHARS = 1 << 21  # content characters in one chunk: ~1000 examples of ordinary size
FILES = {"input_ids": np.int32, "labels": np.int32, "offsets": np.int64, "lines": np.int64}


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """A hash of everything about a tokenizer that changes the tokens we write."""
    digest = hashlib.sha256()
    digest.update(fast_backend(tokenizer).to_str().encode())
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
    def stats(self) -> EncodeStats:
        fields = {k: v for k, v in self.meta["stats"].items() if k != "dropped"}
        return EncodeStats(**fields)

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


def check_usable(stats: EncodeStats, max_length: int, source: str = "the data") -> None:
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
    fsio.sweep(cache_dir.parent)  # what builds killed midway left
    reused = _reusable(cache_dir, key)
    if reused is not None:
        return reused
    cache_dir.parent.mkdir(parents=True, exist_ok=True)
    # Two workers tokenizing the same file into the same folder: the second waits, then reuses.
    with FileLock(str(cache_dir.parent / f".{cache_dir.name}.lock")):
        reused = _reusable(cache_dir, key)
        if reused is not None:
            return reused
        with fsio.staged(cache_dir.parent, cache_dir.name) as staging:
            stats = _write(staging, examples, tokenizer, max_length, long_examples, chunk)
            check_usable(stats, max_length, source)
            sizes = {name: (staging / f"{name}.bin").stat().st_size // np.dtype(dt).itemsize
                     for name, dt in FILES.items()}
            meta = {"version": CACHE_VERSION, "key": key, "max_length": max_length,
                    "long_examples": long_examples, "sizes": sizes, "stats": stats.to_dict()}
            fsio.write_json(staging / "meta.json", meta)
            fsio.publish_dir(staging, cache_dir)  # an older cache in place is discarded
    return TokenCache.open(cache_dir)


def _write(folder: Path, examples: Iterable[Any], tokenizer: Any, max_length: int, long_examples: str,
           chunk: int) -> EncodeStats:
    stats = EncodeStats()
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
            fsio.sync_file(fh)
    finally:
        for fh in handles.values():
            fh.close()
    return stats
