"""From a data file to what the Trainer consumes: the token cache, a deterministic held-out split,
torch datasets over the memory-mapped cache, and a collator that counts useful tokens.

The split depends only on the example count and the seed (a seeded permutation of indices), so
every attempt of a job, and a resumed one, holds out the same examples. The collator runs on the
host before batches reach the device, so counting non-padding label tokens there costs no device
synchronisation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from trainconsole.engine.checkpoints import sha256_file
from trainconsole.engine.config import Config
from trainconsole.engine.errors import DataError
from trainconsole.engine.train.guards import Sample

IGNORE = -100


def load_cache(cfg: Config, data_file: Path, tokenizer: Any, cache_root: Path) -> Any:
    """Validate the file (a rejected file is a permanent DataError) and build or reuse its cache."""
    from trainconsole.engine.data.gate import iter_examples, validate_file
    from trainconsole.engine.train.tokens import build_cache, cache_key

    report = validate_file(data_file, cfg)
    if not report.accepted:
        raise DataError(f"{data_file}: rejected: {report.reason}", case=report.case)
    key = cache_key(sha256_file(data_file), tokenizer, cfg.training.max_length, cfg.data.long_examples)
    return build_cache(iter_examples(data_file, cfg.data), tokenizer, cfg.training.max_length,
                       cfg.data.long_examples, cache_root / "tokens" / key[:24], key=key,
                       source=str(data_file))


def split_indices(n: int, fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """(train, held-out) indices. At least one example is held out when the fraction is positive
    and there are two or more; training always keeps at least one."""
    k = math.floor(n * fraction)
    if fraction > 0 and n >= 2:
        k = max(k, 1)
    k = min(k, max(n - 1, 0))
    order = np.random.default_rng(seed).permutation(n)
    held = sorted(int(i) for i in order[:k])
    held_set = set(held)
    return [i for i in range(n) if i not in held_set], held


class TokenDataset:
    """``dataset[i]`` -> the i-th selected example as plain int lists (the Trainer's sampler and
    ``len`` are all it needs)."""

    def __init__(self, cache: Any, indices: list[int]) -> None:
        self.cache = cache
        self.indices = indices

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> dict[str, Any]:
        ids, labels = self.cache[self.indices[i]]
        return {"input_ids": ids, "labels": labels}


@dataclass
class Counters:
    useful_tokens: int = 0
    masked_batches: int = 0


class Collator:
    """Right-pads a batch; counts non-padding label tokens and batches with none (all masked).

    ``packing``: padding-free instead. The batch's examples are laid end to end in one row, with
    position ids that restart at each example and no attention mask; transformers then derives a
    block-diagonal causal mask from the position ids, so each example attends only to itself and
    no compute goes to padding. The first label of each example is masked: it would otherwise be
    predicted from the end of the example before it."""

    def __init__(self, pad_id: int, *, packing: bool = False) -> None:
        self.pad_id = pad_id
        self.packing = packing
        self.counters = Counters()

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        import torch

        if self.packing:
            return self._packed(features)
        width = max(len(f["input_ids"]) for f in features)
        ids = torch.full((len(features), width), self.pad_id, dtype=torch.long)
        labels = torch.full((len(features), width), IGNORE, dtype=torch.long)
        mask = torch.zeros((len(features), width), dtype=torch.long)
        for row, f in enumerate(features):
            n = len(f["input_ids"])
            ids[row, :n] = torch.from_numpy(np.asarray(f["input_ids"], dtype=np.int64))
            labels[row, :n] = torch.from_numpy(np.asarray(f["labels"], dtype=np.int64))
            mask[row, :n] = 1
        useful = int((labels[:, 1:] != IGNORE).sum())  # the first token is never predicted
        self._count(useful)
        return {"input_ids": ids, "labels": labels, "attention_mask": mask}

    def _packed(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        import torch

        ids = np.concatenate([np.asarray(f["input_ids"], dtype=np.int64) for f in features])
        labels = np.concatenate([np.asarray(f["labels"], dtype=np.int64) for f in features])
        positions = np.concatenate([np.arange(len(f["input_ids"]), dtype=np.int64) for f in features])
        labels[positions == 0] = IGNORE
        useful = int(np.count_nonzero(labels != IGNORE))
        self._count(useful)
        return {"input_ids": torch.from_numpy(ids)[None], "labels": torch.from_numpy(labels)[None],
                "position_ids": torch.from_numpy(positions)[None]}

    def _count(self, useful: int) -> None:
        self.counters.useful_tokens += useful
        if useful == 0:
            self.counters.masked_batches += 1


def eval_samples(cache: Any, indices: list[int], tokenizer: Any, count: int) -> list[Sample]:
    """Prompts and expected answers for generation: the prompt is everything before the last
    trained-on span (the final assistant turn), the answer is that span's text."""
    samples: list[Sample] = []
    for index in indices[:count]:
        ids, labels = cache[index]
        trained = np.flatnonzero(np.asarray(labels) != IGNORE)
        if not len(trained):
            continue
        end = int(trained[-1]) + 1
        start = end - 1
        while start > 0 and labels[start - 1] != IGNORE:
            start -= 1
        answer = tokenizer.decode([int(t) for t in ids[start:end]], skip_special_tokens=True)
        samples.append(Sample([int(t) for t in ids[:start]], answer.strip(), end - start))
    return samples
