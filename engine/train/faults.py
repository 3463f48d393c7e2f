"""Fault injection, for tests only: make the faults a CPU box cannot produce happen for real.

``TRAINCONSOLE_FAULT="kind@step[,kind@step...]"``. ``step`` is the optimiser step being computed
(1 = the first); step 0 means while the base model loads. Each fault fires once per worker
process, the first time that process computes the step (a rollback that passes the step again
does not re-fire); a kind written with a trailing ``*`` (``nan*@3``) fires every time instead.

Kinds:
- ``oom``: raises the real ``torch.OutOfMemoryError`` type (a GPU OOM cannot happen on a CPU);
- ``oom_above_batch:N``: the same, only while the per-device micro-batch is above N (so the
  daemon's OOM ladder can be seen to cure it);
- ``nan`` / ``inf``: the step's loss becomes NaN / inf, which flows into the gradients and,
  after the optimiser step, into the adapter weights, as a real divergence does;
- ``hang``: the step never finishes (for the daemon's watchdog);
- ``crash``: SIGKILL to itself (no report, no cleanup: as the kernel's OOM killer does);
- ``crash_in_save``: SIGKILL to itself in the middle of writing the checkpoint of step N (the
  weights and optimizer state are on disk, the manifest is not);
- ``device``: raises ``torch.AcceleratorError`` with the text of a CUDA fault;
- ``raise:Name``: raises the built-in exception ``Name`` (``KeyError``, ``MemoryError``...);
- ``enospc``: raises ``OSError(ENOSPC)``, a full disk;
- ``tokens_oom`` / ``tokens_oom:N`` (step ignored, write ``@0``): raises ``MemoryError`` while the
  token cache is built (case 22; with ``:N`` only while the micro-batch is above N);
- ``gpu_memory_cap:MB`` (at step 0): caps this process's CUDA allocator at MB with
  ``torch.cuda.set_per_process_memory_fraction``, so a batch too large for the cap runs out of
  memory for real (bench/gpu.py's OOM ladder on a GPU with memory to spare).
"""

from __future__ import annotations

import builtins
import errno
import os
import signal
import time
from dataclasses import dataclass
from typing import Any

ENV = "TRAINCONSOLE_FAULT"
KINDS = ("oom", "oom_above_batch", "nan", "inf", "hang", "crash", "crash_in_save", "device", "raise",
         "enospc", "tokens_oom", "gpu_memory_cap")


@dataclass
class Fault:
    kind: str
    arg: str
    step: int
    repeat: bool
    fired: bool = False

    def due(self, step: int) -> bool:
        return self.step == step and (self.repeat or not self.fired)


def parse(text: str) -> list[Fault]:
    faults = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        head, sep, step_text = item.rpartition("@")
        if not sep or not step_text.lstrip("-").isdigit():
            raise ValueError(f"{ENV}: {item!r} is not kind@step")
        repeat = head.endswith("*")
        head = head.rstrip("*")
        kind, _, arg = head.partition(":")
        if kind not in KINDS:
            raise ValueError(f"{ENV}: unknown kind {kind!r}; known: {', '.join(KINDS)}")
        if kind == "raise" and not isinstance(getattr(builtins, arg, None), type):
            raise ValueError(f"{ENV}: raise:{arg} is not a built-in exception")
        faults.append(Fault(kind, arg, int(step_text), repeat))
    return faults


class Injector:
    """Fires the configured faults; a no-op when the variable is unset (the normal case)."""

    def __init__(self, text: str | None = None) -> None:
        self.faults = parse(os.environ.get(ENV, "") if text is None else text)
        self.loss_fault: str | None = None

    def __bool__(self) -> bool:
        return bool(self.faults)

    def at_step(self, step: int, *, batch_size: int) -> None:
        """Called at the start of optimiser step ``step`` (0: model loading)."""
        self.loss_fault = None
        for fault in self.faults:
            if not fault.due(step) or fault.kind in ("crash_in_save", "tokens_oom"):
                continue
            if fault.kind == "oom_above_batch" and batch_size <= int(fault.arg or 0):
                continue
            fault.fired = True
            self._fire(fault, step)

    def at_tokenizing(self, *, batch_size: int) -> None:
        """Called as the token cache is about to be built."""
        for fault in self.faults:
            if fault.kind == "tokens_oom" and (not fault.arg or batch_size > int(fault.arg)):
                raise MemoryError(f"(injected by {ENV}=tokens_oom while building the token cache)")

    def in_save(self, step: int) -> None:
        """Called half-way through writing the checkpoint of ``step``."""
        for fault in self.faults:
            if fault.kind == "crash_in_save" and fault.due(step):
                fault.fired = True
                os.kill(os.getpid(), signal.SIGKILL)

    def _fire(self, fault: Fault, step: int) -> None:
        tag = f"(injected by {ENV}={fault.kind}{':' + fault.arg if fault.arg else ''}@{step})"
        if fault.kind in ("oom", "oom_above_batch"):
            import torch

            raise torch.OutOfMemoryError(f"CUDA out of memory. Tried to allocate 2.00 GiB {tag}")
        if fault.kind in ("nan", "inf"):
            self.loss_fault = fault.kind
        elif fault.kind == "hang":
            while True:  # a hung collective or driver: nothing more happens here
                time.sleep(3600)
        elif fault.kind == "crash":
            os.kill(os.getpid(), signal.SIGKILL)
        elif fault.kind == "device":
            import torch

            raise torch.AcceleratorError(f"CUDA error: an illegal memory access was encountered {tag}")
        elif fault.kind == "gpu_memory_cap":
            import torch

            if torch.cuda.is_available():
                total = torch.cuda.get_device_properties(0).total_memory
                torch.cuda.set_per_process_memory_fraction(min(1.0, float(fault.arg) * 2**20 / total), 0)
        elif fault.kind == "enospc":
            raise OSError(errno.ENOSPC, f"{os.strerror(errno.ENOSPC)} {tag}")
        elif fault.kind == "raise":
            exc_type: Any = getattr(builtins, fault.arg)
            raise exc_type(f"{fault.arg} {tag}")

    def poison(self, loss: Any) -> Any:
        """The step's loss, made non-finite when a ``nan``/``inf`` fault is active."""
        if self.loss_fault == "nan":
            return loss * float("nan")
        if self.loss_fault == "inf":
            return loss * float("inf")
        return loss
