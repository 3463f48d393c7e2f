"""The guards around a running job (cases 64-70), kept cheap: per step one host sync for the loss
and the gradient norm together, a flushed JSON line and an atomic (not fsynced) heartbeat file.

- NaN or inf in the loss or the gradient norm (64, 65) raises ``NonFinite`` before anything is
  saved; the worker rolls back to the last good checkpoint with a lower learning rate.
- Plateau (66): window means of ``plateau_window`` steps against the best so far, with hysteresis:
  one standing alert while the plateau lasts, settled by a "resolved" one (``Plateau``).
- Rising validation loss (67): early stop after ``early_stop_patience`` evaluations without a
  new best; the worker publishes the best checkpoint, not the last.
- Think-tag share and accuracy (68, 69): greedy generations on held-out prompts, compared with
  the held-out assistant answers.
- Heartbeat (70): ``heartbeat.json`` rewritten atomically at every step for the daemon's watchdog.
"""

from __future__ import annotations

import math
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trainconsole.engine.events import EventLog
from trainconsole.engine.runfiles import Heartbeat


class NonFinite(Exception):
    """A step produced NaN or inf: nothing from it may be saved."""

    def __init__(self, step: int, loss: float, grad_norm: float | None, where: str = "loss") -> None:
        self.step, self.loss, self.grad_norm, self.where = step, loss, grad_norm, where
        # The loss names the case when it is the culprit; a finite loss with a bad gradient norm
        # takes the norm's kind.
        culprit = loss if not math.isfinite(loss) or grad_norm is None else grad_norm
        self.case = 64 if math.isnan(culprit) else 65
        super().__init__(f"non-finite {where} at step {step}: loss {loss}, grad norm {grad_norm}")


def assert_finite_file(path: Path) -> None:
    """Raise ``NonFinite`` if a safetensors file holds a NaN or inf anywhere."""
    import torch
    from safetensors.torch import load_file

    for name, tensor in load_file(str(path)).items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise NonFinite(-1, float("nan"), None, where=f"tensor {name} in {path.name}")


def trainable_finite(model: Any) -> bool:
    """One device sync for all trainable tensors (an adapter is small)."""
    import torch

    flags = [torch.isfinite(p).all() for p in model.parameters() if p.requires_grad]
    return bool(torch.stack(flags).all()) if flags else True


class HeartbeatWriter:
    """Writes ``heartbeat.json`` (``trainconsole.engine.runfiles.Heartbeat``: pid, step, monotonic
    time, last step time) for the daemon's watchdog.

    The step thread only records the values (with the monotonic time of the step itself); a
    writer thread replaces the file within ``interval`` seconds. A rename over an existing file
    can cost milliseconds on a busy disk (ext4 starts writeback on it), and waking a thread per
    step costs a GIL hand-over: either would be most of the guards' cost per step. If the step
    thread hangs, nothing new is recorded and the file's ``mono`` goes stale, which is what the
    daemon's watchdog looks for."""

    interval = 0.25

    def __init__(self, path: Path | None) -> None:
        """``path`` None: a rank other than 0, which writes no heartbeat."""
        self.path = path
        self.pid = os.getpid()
        self._latest: tuple[int, float, float | None] | None = None
        self._written: tuple[int, float, float | None] | None = None
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._closed = False

    def _write(self, path: Path, value: tuple[int, float, float | None]) -> None:
        Heartbeat(self.pid, *value).write(path)

    def beat(self, step: int, step_time_s: float | None = None) -> None:
        value = (step, time.monotonic(), step_time_s)
        if self.path is None:
            return
        if self._thread is None:  # the first beat is written at once, so the file exists
            self._write(self.path, value)
            self._thread = threading.Thread(target=self._run, name="heartbeat", daemon=True)
            self._thread.start()
            return
        self._latest = value  # one reference assignment: atomic under the GIL, no lock needed

    def _flush(self) -> None:
        value = self._latest
        if self.path is not None and value is not None and value is not self._written:
            self._written = value
            try:
                self._write(self.path, value)
            except OSError:
                pass  # a full disk: the watchdog will judge from the stale file, as it should

    def _run(self) -> None:
        while not self._closed:
            self._wake.wait(self.interval)
            self._flush()

    def close(self) -> None:
        """Write the last value and stop the writer."""
        self._closed = True
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._flush()


@dataclass(frozen=True)
class PlateauChange:
    """A plateau began (``started``) or ended. Means are of whole windows, steps inclusive."""

    started: bool
    mean: float  # the window that decided it
    first_step: int
    last_step: int
    best: float  # the best window mean before the plateau
    best_last_step: int
    windows: int  # windows without progress when it began

    @property
    def change(self) -> float:
        """Relative change of ``mean`` against ``best``: negative is better (lower loss)."""
        return (self.mean - self.best) / max(abs(self.best), 1e-12)


@dataclass
class Plateau:
    """Case 66 with hysteresis: one standing alert per plateau, not one per window.

    The loss is averaged over back-to-back windows of ``window`` steps. A window whose mean beats
    the best mean so far by ``min_delta`` (relative) and by twice its own standard error (the
    noise of a mean of that many steps) is progress and becomes the best. ``patience``
    windows in a row without progress begin a plateau (one alert). It ends only when ``patience``
    windows in a row each beat that best by ``2 * min_delta``: a wider band than the one that
    began it (and past the noise), held for as long, so a noisy loss whose lucky windows dip under
    the threshold does not flap in and out. The best is held while the plateau lasts, so a slow descent accumulates
    until it counts.

    Measured on a noisy loss (the old rule compared each window with the one before and alerted
    whenever that failed): 577 alerts by step 58k, about one every 2-3 s. Here such a loss gives
    one alert per plateau, and a new one only after a real drop and ``patience`` flat windows."""

    window: int
    min_delta: float
    patience: int = 3
    best: float = math.inf
    best_last_step: int = 0
    stale: int = 0
    active: bool = False
    better: int = 0  # windows in a row past the band, while a plateau lasts
    _sum: float = 0.0
    _sumsq: float = 0.0
    _count: int = 0
    _first_step: int = 0

    def add(self, step: int, loss: float) -> PlateauChange | None:
        if not math.isfinite(loss):
            return None  # a NaN is case 64's, handled before this; it must not poison the mean
        if self._count == 0:
            self._first_step = step
        self._sum += loss
        self._sumsq += loss * loss
        self._count += 1
        if self._count < self.window:
            return None
        n, mean, first = self._count, self._sum / self._count, self._first_step
        # The noise of a window's mean (its standard error): an improvement must clear it twice
        # over as well as min_delta, or a noisy loss's lucky windows pass for progress.
        var = max(0.0, (self._sumsq - self._sum * self._sum / n) / (n - 1)) if n > 1 else 0.0
        noise = 2.0 * math.sqrt(var / n)
        self._sum, self._sumsq, self._count = 0.0, 0.0, 0
        if not math.isfinite(self.best):
            self.best, self.best_last_step = mean, step
            return None
        drop = self.best - mean
        scale = max(abs(self.best), 1e-12)
        if self.active:
            past_band = drop > 0 and drop >= max(2 * self.min_delta * scale, noise)
            self.better = self.better + 1 if past_band else 0
            if self.better < self.patience:
                self.stale += 1
                return None
            change = PlateauChange(False, mean, first, step, self.best, self.best_last_step, self.stale)
            self.active, self.stale, self.better = False, 0, 0
            self.best, self.best_last_step = mean, step
            return change
        if drop > 0 and drop >= self.min_delta * scale:
            self.best, self.best_last_step, self.stale = mean, step, 0
            return None
        self.stale += 1
        if self.stale < self.patience:
            return None
        self.active = True
        return PlateauChange(True, mean, first, step, self.best, self.best_last_step, self.stale)

    def state(self) -> dict[str, Any]:
        return {"best": None if math.isinf(self.best) else self.best, "best_last_step": self.best_last_step,
                "stale": self.stale, "active": self.active}


def plateau_message(change: PlateauChange, window: int, min_delta: float) -> str:
    """Worded by the sign of the change: a loss that got worse "rose", never "improved -2.66%"."""
    pct = abs(change.change)
    if change.started:
        moved = ("rose " if change.change > 0 else "fell only ") + f"{pct:.2%}"
        if change.change == 0:
            moved = "did not move"
        return (f"loss plateau: the mean loss of steps {change.first_step}-{change.last_step} "
                f"({change.mean:.4g}) {moved} against the best {window}-step mean "
                f"({change.best:.4g}, to step {change.best_last_step}); {change.windows} windows "
                f"without a {min_delta:.2%} improvement. Check the learning rate and the data")
    return (f"loss improving again: the mean loss of steps {change.first_step}-{change.last_step} "
            f"({change.mean:.4g}) fell {pct:.2%} below the plateau's best ({change.best:.4g})")


@dataclass
class EarlyStop:
    """Tracks the best evaluation loss; says when patience has run out (case 67)."""

    patience: int
    best_loss: float = math.inf
    best_step: int | None = None
    bad_evals: int = 0

    def add(self, step: int, loss: float) -> bool:
        """True when this evaluation is a new best (its checkpoint must be kept)."""
        if loss < self.best_loss:
            self.best_loss, self.best_step, self.bad_evals = loss, step, 0
            return True
        self.bad_evals += 1
        return False

    @property
    def exhausted(self) -> bool:
        return self.bad_evals >= self.patience

    def state(self) -> dict[str, Any]:
        return {"best_loss": None if math.isinf(self.best_loss) else self.best_loss,
                "best_step": self.best_step, "bad_evals": self.bad_evals}

    def restore(self, state: dict[str, Any]) -> None:
        if state.get("best_loss") is not None:
            self.best_loss = float(state["best_loss"])
        self.best_step = state.get("best_step")
        self.bad_evals = int(state.get("bad_evals") or 0)


@dataclass(frozen=True)
class Sample:
    """One held-out prompt and the answer it should produce."""

    prompt_ids: list[int]
    answer: str
    answer_tokens: int = 48


def _norm(text: str) -> str:
    return " ".join(text.lower().split())


def generate_metrics(model: Any, tokenizer: Any, samples: list[Sample], *, max_new_tokens: int = 256,
                     batch_size: int = 8) -> dict[str, float]:
    """Greedy generations for the held-out prompts: share containing ``<think>``, and accuracy
    (the expected answer matched exactly or contained). The RNG is left as it was, so evaluation
    never changes the training run."""
    import torch

    if not samples:
        return {}
    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    think = correct = 0
    was_training = model.training
    model.eval()
    try:
        with torch.random.fork_rng(devices=[]), torch.no_grad():
            for start in range(0, len(samples), batch_size):
                chunk = samples[start:start + batch_size]
                width = max(len(s.prompt_ids) for s in chunk)
                ids = torch.full((len(chunk), width), pad, dtype=torch.long)
                mask = torch.zeros((len(chunk), width), dtype=torch.long)
                for row, sample in enumerate(chunk):  # left padding: generation continues at the end
                    ids[row, width - len(sample.prompt_ids):] = torch.tensor(sample.prompt_ids)
                    mask[row, width - len(sample.prompt_ids):] = 1
                # A little past the longest expected answer: room for a <think> preamble to show.
                budget = min(max_new_tokens, max(s.answer_tokens for s in chunk) + 16)
                out = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device),
                                     max_new_tokens=budget, do_sample=False, pad_token_id=pad)
                for row, sample in enumerate(chunk):
                    text = tokenizer.decode(out[row, width:], skip_special_tokens=True)
                    think += "<think>" in text
                    got, want = _norm(text), _norm(sample.answer)
                    correct += bool(want) and (got == want or want in got)
    finally:
        model.train(was_training)
    return {"think_share": think / len(samples), "accuracy": correct / len(samples)}


class StepEvents:
    """Emits one ``step`` event per logging interval and the alerts of the cheap guards."""

    def __init__(self, events: EventLog, job_id: str, guards_cfg: Any, max_steps: int,
                 logging_steps: int) -> None:
        self.events, self.job_id, self.max_steps = events, job_id, max_steps
        self.logging_steps = logging_steps
        self.plateau = Plateau(guards_cfg.plateau_window, guards_cfg.plateau_min_delta,
                               guards_cfg.plateau_patience)
        self.masked_alerted = 0

    def step(self, step: int, loss: float, grad_norm: float | None, lr: float, tokens_per_s: float,
             epoch: float | None, memory_mb: float | None, step_time_s: float | None = None) -> None:
        if step % self.logging_steps == 0 or step == self.max_steps:
            self.events.emit("step", job_id=self.job_id, step=step, max_steps=self.max_steps,
                             loss=round(loss, 6), lr=lr, grad_norm=None if grad_norm is None
                             else round(grad_norm, 6), tokens_per_s=round(tokens_per_s, 1),
                             epoch=None if epoch is None else round(epoch, 4), memory_mb=memory_mb,
                             step_time_s=None if step_time_s is None else round(step_time_s, 5))
        change = self.plateau.add(step, loss)
        if change is not None:
            # One key per job: the console keeps one row for the condition, which a resolution
            # settles and a new plateau makes news again.
            self.events.alert(66, plateau_message(change, self.plateau.window, self.plateau.min_delta),
                              severity="warning" if change.started else "info", job_id=self.job_id,
                              key=f"plateau-{self.job_id}", resolved=not change.started)

    def masked(self, count: int) -> None:
        """Batches whose labels were all masked (they would log loss 0 and teach nothing)."""
        if count > self.masked_alerted:
            self.masked_alerted = count
            self.events.alert(None, f"{count} batch(es) had every label masked (no assistant tokens): "
                                    "they teach nothing", severity="warning", job_id=self.job_id,
                              key="masked-batches")
