"""The step plan (ints, computed before any TrainingArguments exist), the TrainingArguments built
from it with transformers 5 names, and the Trainer subclass that carries the guards.

Why the plan comes first: the memo's two costliest bugs were a step count used before it was
computed and ``num_train_epochs=None`` handed to the Trainer. Here every count is an ``int``,
asserted positive, and ``max_steps`` is always passed explicitly, so the Trainer never derives
anything from a None.
"""

from __future__ import annotations

import math
import resource
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trainconsole.engine import checkpoints as ckpt
from trainconsole.engine import fsio
from trainconsole.engine.config import Config
from trainconsole.engine.errors import DataError, DiskFullError
from trainconsole.engine.events import EventLog
from trainconsole.engine.train.dataset import Collator
from trainconsole.engine.train.faults import Injector
from trainconsole.engine.train.guards import (
    EarlyStop,
    HeartbeatWriter,
    NonFinite,
    Sample,
    StepEvents,
    generate_metrics,
    trainable_finite,
)
from trainconsole.engine.train.reporting import PROJECT, Reporting
from trainconsole.engine.train.step_cost import SteadyModel, cache_lomo_check


@dataclass(frozen=True)
class StepPlan:
    n_train: int
    batch_size: int
    accumulation: int
    world_size: int
    steps_per_epoch: int
    epochs: int
    max_steps: int


def plan_steps(n_train: int, *, batch_size: int, accumulation: int, world_size: int, epochs: int,
               max_steps: int, source: str = "the data") -> StepPlan:
    """Optimiser steps for the job, as the Trainer 5 will count them (``ceil`` of micro-batches
    over accumulation). ``max_steps`` > 0 wins over ``epochs``. Zero steps is a data problem (61)."""
    for name, value in (("n_train", n_train), ("batch_size", batch_size), ("accumulation", accumulation),
                        ("world_size", world_size), ("epochs", epochs), ("max_steps", max_steps)):
        if not isinstance(value, int) or isinstance(value, bool):
            raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if batch_size < 1 or accumulation < 1 or world_size < 1:
        raise ValueError(f"batch_size, accumulation and world_size must be >= 1, got "
                         f"{batch_size}, {accumulation}, {world_size}")
    if n_train <= 0:
        raise DataError(f"{source}: no training examples left (after the held-out share), so there is "
                        "nothing to train: add examples or lower training.eval_fraction", case=61)
    micro_batches = math.ceil(math.ceil(n_train / world_size) / batch_size)
    steps_per_epoch = math.ceil(micro_batches / accumulation)
    total = max_steps if max_steps > 0 else epochs * steps_per_epoch
    if total <= 0:
        raise DataError(f"{source}: the plan has zero training steps (training.epochs = {epochs}, "
                        f"training.max_steps = {max_steps})", case=61)
    assert isinstance(total, int) and total > 0, total
    return StepPlan(n_train, batch_size, accumulation, world_size, steps_per_epoch,
                    max(epochs, math.ceil(total / steps_per_epoch)), total)


def training_arguments(cfg: Config, plan: StepPlan, *, out_dir: Path, lr: float, use_cpu: bool,
                       bf16: bool, has_eval: bool, gradient_checkpointing: bool,
                       reporting: Reporting | None = None, fp16: bool = False) -> Any:
    from transformers import TrainingArguments

    t = cfg.training
    reporters = list(reporting.report_to) if reporting is not None and reporting.active else "none"
    return TrainingArguments(
        output_dir=str(out_dir),
        per_device_train_batch_size=plan.batch_size,
        per_device_eval_batch_size=plan.batch_size,
        gradient_accumulation_steps=plan.accumulation,
        max_steps=plan.max_steps,
        num_train_epochs=float(plan.epochs),
        learning_rate=lr,
        lr_scheduler_type=t.lr_scheduler,
        warmup_steps=float(t.warmup_steps),
        weight_decay=t.weight_decay,
        max_grad_norm=t.max_grad_norm,
        seed=t.seed,
        data_seed=t.seed,
        # Our guard reads every step's loss itself; the Trainer's own logging would add a second
        # host sync per step and, by default, hide NaN steps behind an average.
        logging_strategy="no",
        logging_nan_inf_filter=False,
        eval_strategy="steps" if has_eval else "no",
        eval_steps=t.eval_steps,
        prediction_loss_only=True,
        # Checkpoints go through engine/checkpoints.py (staged, fsynced, manifest last).
        save_strategy="no",
        # Metrics mirrors (engine/train/reporting.py); fed from end_step, not the Trainer's logging.
        report_to=reporters,
        run_name=reporting.run_name if reporting is not None else None,
        project=PROJECT,
        trackio_static_space_id=False,  # never publish a Space from a training box
        disable_tqdm=True,
        use_cpu=use_cpu,
        bf16=bf16,
        fp16=fp16,  # with the Trainer's loss scaler
        train_sampling_strategy="group_by_length" if t.group_by_length else "random",
        activation_checkpointing=gradient_checkpointing,
        activation_checkpointing_kwargs={"use_reentrant": False} if gradient_checkpointing else None,
        remove_unused_columns=False,
        ddp_find_unused_parameters=False,  # a LoRA forward uses every adapter: skip the extra graph walk
        dataloader_num_workers=0,
        dataloader_pin_memory=not use_cpu,
    )


class Hooks:
    """What the Trainer subclass calls at step boundaries: faults, the finite check, events,
    heartbeat, our checkpoints, evaluation guards and the stop request."""

    def __init__(self, *, events: EventLog, job_id: str, cfg: Config, plan: StepPlan, ckpt_root: Path,
                 fingerprint: dict[str, Any], heartbeat: HeartbeatWriter, faults: Injector, collator: Collator,
                 tokenizer: Any, samples: list[Sample], lr: float, configured_lr: float, rollbacks: int,
                 early: dict[str, Any] | None, stop_flag: list[bool], parent: str | None = None,
                 reporting: bool = False) -> None:
        self.events, self.job_id, self.cfg, self.plan = events, job_id, cfg, plan
        self.ckpt_root, self.fingerprint, self.heartbeat = ckpt_root, fingerprint, heartbeat
        self.faults, self.collator, self.tokenizer, self.samples = faults, collator, tokenizer, samples
        self.lr, self.rollbacks, self.stop_flag = lr, rollbacks, stop_flag
        self.configured_lr = configured_lr
        self.parent = parent
        self.reporting = reporting  # whether report.to has a library to feed
        self.early = EarlyStop(cfg.guards.early_stop_patience)
        self.tripped: dict[str, bool] = {}  # guard -> over its limit at the last evaluation
        if early:
            self.early.restore(early)
        self.step_events = StepEvents(events, job_id, cfg.guards, plan.max_steps, cfg.training.logging_steps)
        self.loss_sum: Any = None
        self.begun = self.ended = self.saved = -1
        self.t_last = time.monotonic()
        self.tokens_last = 0
        self.interrupted = self.early_stopped = False
        self.last_eval: float | None = None
        self.overhead_s = 0.0  # time spent in end_step (the guards' own cost, syncs included)
        self.overhead_steps = 0

    def begin_step(self, step: int) -> None:
        if self.ended < 0:  # the first step of this attempt: loading time is not step time
            self.t_last = time.monotonic()
        self.begun = step
        self.loss_sum = None
        self.faults.at_step(step, batch_size=self.plan.batch_size)

    def end_step(self, trainer: Any, grad_norm: Any, lr: float | None) -> None:
        import torch

        step = trainer.state.global_step
        if step == self.ended or self.loss_sum is None:
            return
        self.ended = step
        entered = time.monotonic()
        loss_t = self.loss_sum.detach().float().reshape(())
        if isinstance(grad_norm, torch.Tensor):  # one host sync for both numbers
            loss, gn = torch.stack([loss_t, grad_norm.detach().float().reshape(()).to(loss_t.device)]).tolist()
        else:
            loss, gn = loss_t.item(), (None if grad_norm is None else float(grad_norm))
        if not math.isfinite(loss) or (gn is not None and not math.isfinite(gn)):
            raise NonFinite(step, loss, gn)
        now = time.monotonic()
        dt = max(now - self.t_last, 1e-9)
        tokens = self.collator.counters.useful_tokens
        self.t_last, tps, self.tokens_last = now, (tokens - self.tokens_last) / dt, tokens
        self.heartbeat.beat(step, dt)
        if torch.cuda.is_available():
            mem = torch.cuda.max_memory_allocated() / 2**20
        else:
            mem = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        self.step_events.step(step, loss, gn, float(lr if lr is not None else 0.0), tps,
                              trainer.state.epoch, round(mem, 1), dt)
        if self.reporting and step % self.cfg.training.logging_steps == 0:
            logs = {"loss": loss, "learning_rate": float(lr or 0.0), "tokens_per_s": tps,
                    "epoch": trainer.state.epoch}
            if gn is not None:
                logs["grad_norm"] = gn
            # Straight to the reporters' callbacks: Trainer.log would also keep every step in the
            # log history, which is saved with each checkpoint and grows with the run.
            trainer.control = trainer.callback_handler.on_log(trainer.args, trainer.state, trainer.control, logs)
        if self.collator.counters.masked_batches:
            self.step_events.masked(self.collator.counters.masked_batches)
        control = trainer.control
        if step % self.cfg.training.save_steps == 0 or step >= self.plan.max_steps:
            control.should_save = True
        if step >= self.plan.max_steps and trainer.eval_dataset is not None:
            control.should_evaluate = True  # every job ends with its held-out numbers
        if self.stop_flag[0]:
            self.interrupted = True
            control.should_save = True
            control.should_training_stop = True
        self.overhead_s += time.monotonic() - entered
        self.overhead_steps += 1

    def after_eval(self, trainer: Any, metrics: dict[str, float]) -> None:
        step = trainer.state.global_step
        self.heartbeat.beat(step)
        eval_loss = float(metrics.get("eval_loss", math.nan))
        gen = generate_metrics(trainer.model, self.tokenizer, self.samples)
        self.heartbeat.beat(step)
        self.last_eval = eval_loss
        self.events.emit("eval", job_id=self.job_id, step=step, eval_loss=eval_loss, **gen)
        g = self.cfg.guards
        # One alert when a metric crosses its limit, not one per evaluation: a 3000-step job
        # would otherwise bury every other alert under dozens of identical warnings.
        think_bad = bool(gen) and gen["think_share"] > g.think_tag_max_share
        if think_bad and not self.tripped.get("think"):
            self.events.alert(68, f"{gen['think_share']:.0%} of held-out generations contain <think> "
                                  f"at step {step} (limit guards.think_tag_max_share = "
                                  f"{g.think_tag_max_share})",
                              severity="warning", job_id=self.job_id, key="think")
        accuracy_bad = bool(gen) and gen["accuracy"] < g.min_accuracy
        if accuracy_bad and not self.tripped.get("accuracy"):
            self.events.alert(69, f"held-out accuracy {gen['accuracy']:.0%} at step {step} is below "
                                  f"guards.min_accuracy = {g.min_accuracy}",
                              severity="warning", job_id=self.job_id, key="accuracy")
        self.tripped.update(think=think_bad, accuracy=accuracy_bad)
        if math.isfinite(eval_loss) and self.early.add(step, eval_loss):
            trainer.control.should_save = True  # the best checkpoint must exist to be published
        elif self.early.exhausted:
            self.early_stopped = True
            trainer.control.should_training_stop = True
            trainer.control.should_save = True
            self.events.alert(67, f"validation loss has not improved for {self.early.bad_evals} "
                                  f"evaluations (best {self.early.best_loss:.4f} at step "
                                  f"{self.early.best_step}, now {eval_loss:.4f}): stopping early and "
                                  "publishing the best checkpoint", severity="warning",
                              job_id=self.job_id, key="early-stop")

    def save(self, trainer: Any) -> None:
        step = trainer.state.global_step
        if step == self.saved:
            return
        if not trainer.args.should_save:  # not rank 0: rank 0 writes the one checkpoint
            self.saved = step
            return
        if not trainable_finite(trainer.model):
            raise NonFinite(step, math.nan, None, where="adapter weights")
        staging = fsio.new_staging(self.ckpt_root, f"{ckpt.PREFIX}{step}")
        try:
            trainer.save_model(str(staging), _internal_call=True)
            trainer._save_optimizer_and_scheduler(str(staging))
            self.faults.in_save(step)
            trainer._save_scaler(str(staging))
            trainer._save_rng_state(str(staging))
            trainer.state.save_to_json(str(staging / ckpt.TRAINER_STATE))
            extra = {"lr": self.lr, "configured_lr": self.configured_lr, "rollbacks": self.rollbacks,
                     "early": self.early.state(), "parent": self.parent,
                     "eval_loss": self.last_eval, "max_steps": self.plan.max_steps}
            ckpt.publish(staging, self.ckpt_root / f"{ckpt.PREFIX}{step}", kind="checkpoint", step=step,
                         fingerprint=self.fingerprint, extra=extra)
        except Exception as exc:
            # torch's zip writer reports a full disk as RuntimeError ("unexpected pos") and
            # safetensors as its own error type, both losing the errno; the free space, not the
            # message, says whether this was ENOSPC (case 25).
            full = _disk_nearly_full(self.ckpt_root)
            shutil.rmtree(staging, ignore_errors=True)
            if full:
                raise DiskFullError(f"no space left to save checkpoint-{step} in {self.ckpt_root} "
                                    f"({exc})", case=25) from exc
            raise
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        self.saved = step
        best = self.early.best_step
        ckpt.prune(self.ckpt_root, keep_last=2, keep_steps=() if best is None else (best,))


_NEARLY_FULL_BYTES = 64 << 20


def _disk_nearly_full(path: Path) -> bool:
    try:
        return shutil.disk_usage(path).free < _NEARLY_FULL_BYTES
    except OSError:
        return False


_CLASSES: dict[str, Any] = {}

# The Trainer's private methods the guarded Trainer overrides or calls, with the parameters it
# relies on. Public callbacks cannot do their work: the step's gradient norm reaches no callback
# unless the Trainer logs (a second host sync per step), and a checkpoint must be written through
# engine/checkpoints.py instead of in place. So the seam is pinned: pyproject allows
# transformers 5 only, and a version whose Trainer has changed these is refused in one line
# before any model is loaded, instead of failing mid-run or, worse, saving nothing.
TRAINER_PRIVATE_API: dict[str, tuple[str, ...]] = {
    "_maybe_log_save_evaluate": ("tr_loss", "grad_norm", "learning_rate"),
    "_save_checkpoint": ("model", "trial"),
    "_save_optimizer_and_scheduler": ("output_dir",),
    "_save_scaler": ("output_dir",),
    "_save_rng_state": ("output_dir",),
}


def check_trainer_api(trainer_cls: Any) -> None:
    """Raise ConfigError naming the installed transformers when a pinned private method is gone
    or has lost a parameter the guarded Trainer passes."""
    import inspect

    import transformers

    from trainconsole.engine.errors import ConfigError

    for name, params in TRAINER_PRIVATE_API.items():
        method = getattr(trainer_cls, name, None)
        missing = list(params) if method is None else [
            p for p in params if p not in inspect.signature(method).parameters]
        if missing:
            raise ConfigError(
                f"transformers {transformers.__version__}: Trainer.{name} "
                + ("is gone" if method is None else f"no longer takes {', '.join(missing)}")
                + "; the guarded Trainer is built against transformers 5 (tested with 5.25): "
                "install 'transformers>=5,<6' at a version that has it")


def guarded_trainer_class() -> Any:
    """The Trainer subclass, defined on first use so importing this module stays torch-free."""
    if "trainer" in _CLASSES:
        return _CLASSES["trainer"]
    from transformers import Trainer, TrainerCallback

    check_trainer_api(Trainer)
    cache_lomo_check()

    class GuardedTrainer(Trainer):
        def __init__(self, *args: Any, hooks: Hooks, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.hooks = hooks
            self.steady: SteadyModel | None = None
            self.flop_params: int | None = None

        def train(self, *args: Any, **kwargs: Any) -> Any:
            try:
                return super().train(*args, **kwargs)
            finally:
                if self.steady is not None:
                    self.steady.remove()
                    self.steady = None

        def training_step(self, model: Any, inputs: Any, num_items_in_batch: Any = None) -> Any:
            step = self.state.global_step + 1
            if step != self.hooks.begun:
                self.hooks.begin_step(step)
            if self.steady is None and self.optimizer is not None:
                self.steady = SteadyModel(model, self.optimizer)
            loss = super().training_step(model, inputs, num_items_in_batch)
            h = self.hooks
            h.loss_sum = loss if h.loss_sum is None else h.loss_sum + loss
            return loss

        def compute_loss(self, model: Any, inputs: Any, return_outputs: bool = False,
                         num_items_in_batch: Any = None) -> Any:
            out = super().compute_loss(model, inputs, return_outputs=return_outputs,
                                       num_items_in_batch=num_items_in_batch)
            if not self.hooks.faults.loss_fault or not model.training:
                return out
            if return_outputs:
                return self.hooks.faults.poison(out[0]), out[1]
            return self.hooks.faults.poison(out)

        def floating_point_ops(self, inputs: Any) -> int:
            # The Trainer's own recounts the model's parameters (a walk over every module) per step.
            model: Any = self.model
            main = getattr(model, "main_input_name", "input_ids")
            if main not in inputs or not hasattr(model, "num_parameters"):
                return 0
            if self.flop_params is None:
                self.flop_params = int(model.num_parameters(exclude_embeddings=True))
            return 6 * int(inputs[main].numel()) * self.flop_params

        def _maybe_log_save_evaluate(self, tr_loss: Any, grad_norm: Any, *args: Any, **kwargs: Any) -> None:
            self.hooks.end_step(self, grad_norm, kwargs.get("learning_rate"))
            super()._maybe_log_save_evaluate(tr_loss, grad_norm, *args, **kwargs)

        def _save_checkpoint(self, model: Any, trial: Any) -> None:
            self.hooks.save(self)

        def evaluate(self, *args: Any, **kwargs: Any) -> Any:
            metrics = super().evaluate(*args, **kwargs)
            self.hooks.after_eval(self, metrics)
            return metrics

    class LrScale(TrainerCallback):
        """After a resume has loaded the optimiser and schedule, scale the learning rate (a NaN
        rollback lowers it; the loaded schedule would otherwise put it back)."""

        def __init__(self, factor: float) -> None:
            self.factor = factor

        def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if self.factor == 1.0:
                return
            scheduler, optimizer = kwargs.get("lr_scheduler"), kwargs.get("optimizer")
            if scheduler is not None and hasattr(scheduler, "base_lrs"):
                scheduler.base_lrs = [lr * self.factor for lr in scheduler.base_lrs]
                if hasattr(scheduler, "_last_lr"):
                    scheduler._last_lr = [lr * self.factor for lr in scheduler._last_lr]
            if optimizer is not None:
                for group in optimizer.param_groups:
                    group["lr"] *= self.factor
                    if "initial_lr" in group:
                        group["initial_lr"] *= self.factor

    _CLASSES["trainer"] = GuardedTrainer
    _CLASSES["lr_scale"] = LrScale
    return GuardedTrainer


def lr_scale_callback(factor: float) -> Any:
    guarded_trainer_class()
    return _CLASSES["lr_scale"](factor)
