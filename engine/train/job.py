"""One training job from spec to published adapter: checks first, then data, then the step plan,
then training with NaN rollbacks, then publishing. ``worker.py`` wraps this with the process
protocol (signals, report, exit code).

Order matters and is the point: the base model is checked before the data is touched (a bad
model must not cost a tokenization pass), the plan is computed before any TrainingArguments, and
only a checkpoint our manifest verified is ever handed to the Trainer's resume.
"""

from __future__ import annotations

import gc
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trainconsole.engine import checkpoints as ckpt
from trainconsole.engine.config import Config
from trainconsole.engine.errors import ConfigError, DeviceError, DivergedError
from trainconsole.engine.events import EventLog
from trainconsole.engine.runfiles import JobSpec
from trainconsole.engine.train import basecheck, lineage
from trainconsole.engine.train.dataset import Collator, TokenDataset, eval_samples, load_cache, split_indices
from trainconsole.engine.train.faults import Injector
from trainconsole.engine.train.guards import HeartbeatWriter, NonFinite
from trainconsole.engine.train.reporting import Reporting
from trainconsole.engine.train.reporting import setup as reporting_setup
from trainconsole.engine.train.trainer_setup import (
    Hooks,
    StepPlan,
    guarded_trainer_class,
    lr_scale_callback,
    plan_steps,
    training_arguments,
)


@dataclass
class JobResult:
    """How ``TrainJob.run`` ended without an exception (a failure raises)."""

    status: str  # done | interrupted
    global_step: int
    max_steps: int
    adapter: str | None
    message: str


def _device(cfg: Config) -> tuple[bool, str]:
    """(use_cpu, precision) from hardware.device and training.precision; a precision the device
    lacks is the operator's to fix (a permanent ConfigError naming the key)."""
    import torch

    want = cfg.hardware.device
    has_cuda = torch.cuda.is_available()
    if want == "cuda" and not has_cuda:
        raise DeviceError(f"hardware.device = \"cuda\" in {cfg.source} but no GPU is visible to the "
                          "worker; set it to \"auto\" or \"cpu\" to train on the CPU", case=26)
    use_cpu = want == "cpu" or not has_cuda
    bf16_ok = (not use_cpu) and torch.cuda.is_bf16_supported()
    precision = cfg.training.precision
    if precision == "auto":
        precision = "fp32" if use_cpu else "bf16" if bf16_ok else "fp16"
    key = f"training.precision = \"{cfg.training.precision}\" in {cfg.source}"
    if precision == "fp16" and use_cpu:
        raise ConfigError(f"{key}: fp16 training needs a CUDA GPU (its loss scaler is CUDA's) and this job "
                          "runs on the CPU; use \"auto\", \"fp32\" or \"bf16\"")
    if precision == "bf16" and not use_cpu and not bf16_ok:
        name = torch.cuda.get_device_name(0)
        raise ConfigError(f"{key}: the GPU ({name}) has no bf16 support; use \"auto\" or \"fp16\"")
    if cfg.model.load_in_4bit and use_cpu:
        raise ConfigError(f"model.load_in_4bit = true in {cfg.source}: 4-bit loading needs a CUDA GPU and this "
                          "job runs on the CPU; set it to false")
    return use_cpu, precision


DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}


class TrainJob:
    def __init__(self, spec: JobSpec, events: EventLog, heartbeat: HeartbeatWriter,
                 stop_flag: list[bool], faults: Injector | None = None) -> None:
        self.spec, self.events, self.heartbeat, self.stop_flag = spec, events, heartbeat, stop_flag
        self.job_id = spec.job_id
        self.lineage = spec.lineage
        self.run_dir = spec.run_dir
        self.ckpt_root = spec.folder.checkpoints
        self.faults = faults if faults is not None else Injector()
        self.plan: StepPlan | None = None
        self.step = 0
        self.hooks: Hooks | None = None
        self.phase = "loading"  # "tokenizing" while the token cache is built (an OOM there is 22)
        # Under torchrun only rank 0 writes: checkpoints, quarantine, the adapter.
        self.lead = int(os.environ.get("RANK", "0") or 0) == 0

    @property
    def current_step(self) -> int:
        """The last completed optimiser step, as far as this process knows."""
        return max(self.step, self.hooks.ended if self.hooks else 0)

    @property
    def training_started(self) -> bool:
        """Whether an optimiser step has begun (an OOM before that happened while loading)."""
        return self.hooks is not None and self.hooks.begun > 0

    def log(self, message: str) -> None:
        self.events.emit("log", level="info", message=message, job_id=self.job_id)

    def run(self) -> JobResult:
        import warnings

        from transformers.utils import logging as hf_logging_module

        from trainconsole.engine.config import load_config
        from trainconsole.engine.config.jobsettings import with_settings

        # The worker's stdout is a log file, not a terminal: no progress bars or advice to upgrade.
        hf_logging: Any = hf_logging_module
        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
        warnings.filterwarnings("ignore", category=FutureWarning)
        # The engine's config.toml for the engine-wide sections; the job's own settings, fixed when
        # it was queued, for everything per-job (a later edit of config.toml changes no queued job).
        cfg = with_settings(load_config(self.spec.config), self.spec.settings or None)
        ov = self.spec.overrides
        batch = int(ov.get("batch_size") or cfg.training.batch_size)
        accum = int(ov.get("gradient_accumulation") or cfg.training.gradient_accumulation)
        grad_ckpt = bool(ov["gradient_checkpointing"] if "gradient_checkpointing" in ov
                         else cfg.training.gradient_checkpointing)
        lr = float(cfg.training.learning_rate) * float(ov.get("lr_factor") or 1.0)
        adapters = self.spec.adapters_dir or cfg.layout().adapters
        data_file = self.spec.data_file

        base = basecheck.check_files(cfg, cfg.training.max_length)
        use_cpu, precision = _device(cfg)
        fp = base.fingerprint
        already = lineage.published_for(adapters, self.job_id)
        if already is not None:
            self.log(f"adapter {already.name} was already published by this job; nothing to do")
            return JobResult("done", 0, 0, str(already), "already published")
        parent = lineage.check_parent(adapters, fp, self.events, self.job_id, lineage=self.lineage,
                                      start_from=self.spec.start_from)
        # A checkpoint must also match the adapter's shape: one saved before lora.r was changed
        # would pass the base check and then fail inside the Trainer's resume.
        ck_fp = {**fp, "lora": lineage.lora_shape(cfg, parent)}
        tokenizer = basecheck.load_tokenizer(cfg, base)
        self.phase = "tokenizing"
        self.faults.at_tokenizing(batch_size=batch)
        cache = load_cache(cfg, data_file, tokenizer, cfg.layout().cache)
        self.phase = "loading"
        if cache.truncated or cache.dropped:
            self.events.alert(3, f"{data_file.name}: {cache.truncated} example(s) truncated and "
                                 f"{cache.dropped} dropped at training.max_length {cfg.training.max_length}",
                              severity="info", job_id=self.job_id, key="long-examples")
        if cfg.data.eval_file:
            # A held-out file of its own: every example of the job's file trains.
            eval_path = cfg.resolve(cfg.data.eval_file)
            eval_cache = load_cache(cfg, eval_path, tokenizer, cfg.layout().cache)
            train_idx, eval_idx = list(range(len(cache))), list(range(len(eval_cache)))
            self.log(f"held-out examples from data.eval_file {eval_path}")
        else:
            eval_cache = cache
            train_idx, eval_idx = split_indices(len(cache), cfg.training.eval_fraction, cfg.training.seed)
        world = int(os.environ.get("WORLD_SIZE", "1"))
        plan = plan_steps(len(train_idx), batch_size=batch, accumulation=accum, world_size=world,
                          epochs=cfg.training.epochs, max_steps=cfg.training.max_steps, source=str(data_file))
        self.plan = plan
        resume, _ = ckpt.scan(self.ckpt_root, fingerprint=ck_fp, events=self.events, job_id=self.job_id,
                                 quarantine_bad=self.lead)
        if resume is not None and "parent" in resume.extra and self.spec.start_from is None:
            # Another job of this lineage may have published since this one began (it preempted this
            # one): the checkpoint knows which adapter this job continues, the lineage's newest may not.
            recorded = resume.extra["parent"]
            if not recorded:
                parent = None
            elif (adapters / recorded).is_dir():
                parent = adapters / recorded
        self.log(f"plan: {plan.n_train} training and {len(eval_idx)} held-out examples, batch {batch} x "
                 f"accumulation {accum} x {world} process(es), {plan.max_steps} steps"
                 + (f", continuing adapter {parent.name}" if parent else ", new adapter"))
        if resume is not None and resume.step >= plan.max_steps:
            self.events.alert(63, f"checkpoint {resume.path.name} is already at step {resume.step} of "
                                  f"{plan.max_steps}: completing without training", severity="info",
                              job_id=self.job_id, key="already-trained")
            return self._publish(resume, adapters, fp, parent, plan, note="already trained")
        early = resume.extra.get("early") if resume is not None else None
        if isinstance(early, dict) and int(early.get("bad_evals") or 0) >= cfg.guards.early_stop_patience \
                and early.get("best_step") is not None:
            # It had already stopped early; the process ended before publishing the best one.
            stopped = ckpt.verify(self.ckpt_root / f"{ckpt.PREFIX}{early['best_step']}", fingerprint=ck_fp)
            if isinstance(stopped, ckpt.Checkpoint):
                self.log(f"this job had stopped early; publishing its best checkpoint {stopped.path.name}")
                return self._publish(stopped, adapters, fp, parent, plan, note="early stop: best checkpoint")
        if resume is not None:
            self.log(f"resuming from {resume.path.name}")
            self.step = resume.step

        if self.stop_flag[0]:  # asked to stop while loading: nothing new to save
            return JobResult("interrupted", self.step, plan.max_steps, None, "stopped on request before training")
        rollbacks = int(resume.extra.get("rollbacks", 0)) if resume else 0
        lr_now = self._resume_lr(resume, lr)
        samples = eval_samples(eval_cache, eval_idx, tokenizer, cfg.guards.eval_samples)
        reporting = reporting_setup(list(cfg.report.to), job_id=self.job_id, lineage=self.lineage,
                                    run_dir=self.run_dir, runs=cfg.layout().runs, events=self.events)
        while True:
            hooks = Hooks(events=self.events, job_id=self.job_id, cfg=cfg, plan=plan, ckpt_root=self.ckpt_root,
                          fingerprint=ck_fp, heartbeat=self.heartbeat, faults=self.faults,
                          collator=Collator(tokenizer.pad_token_id, packing=cfg.training.packing), tokenizer=tokenizer, samples=samples,
                          lr=lr_now, configured_lr=lr, rollbacks=rollbacks,
                          early=resume.extra.get("early") if resume else None,
                          parent=(resume.extra if resume else {}).get("parent", parent.name if parent else None),
                          stop_flag=self.stop_flag, reporting=reporting.active)
            self.hooks = hooks
            try:
                self._train_once(cfg, base, parent, plan, hooks, (cache, eval_cache), train_idx, eval_idx, resume,
                                 use_cpu=use_cpu, precision=precision, grad_ckpt=grad_ckpt, reporting=reporting)
                break
            except NonFinite as bad:
                rollbacks += 1
                self.step = max(self.step, bad.step)
                retry = rollbacks <= cfg.guards.nan_retries
                self.events.alert(bad.case, f"{bad} ; nothing from this step was saved; "
                                  + (f"rolling back with learning rate x{cfg.guards.nan_lr_factor} "
                                     f"(rollback {rollbacks} of {cfg.guards.nan_retries})" if retry
                                     else "no rollbacks left"),
                                  severity="critical", job_id=self.job_id, key=f"nonfinite-{rollbacks}")
                if not retry:
                    raise DivergedError(
                        f"training diverged: {bad} after {cfg.guards.nan_retries} learning-rate rollback(s); "
                        "lower training.learning_rate or check the data", case=bad.case) from None
                gc.collect()
                resume, _ = ckpt.scan(self.ckpt_root, fingerprint=ck_fp, events=self.events, job_id=self.job_id,
                                 quarantine_bad=self.lead)
                # The rate the checkpoint was trained at, lowered once per rollback since it was written.
                base_lr = self._resume_lr(resume, lr)
                done = int(resume.extra.get("rollbacks", 0)) if resume else 0
                lr_now = base_lr * cfg.guards.nan_lr_factor ** (rollbacks - done)
        step = self.step = max(self.step, hooks.ended)
        if hooks.interrupted:
            return JobResult("interrupted", step, plan.max_steps, None, f"stopped on request at step {step}")
        if not self.lead:
            return JobResult("done", step, plan.max_steps, None, "done (rank 0 publishes)")
        final = ckpt.verify(self.ckpt_root / f"{ckpt.PREFIX}{step}", fingerprint=ck_fp)
        source = final
        best = hooks.early.best_step
        if hooks.early_stopped and best is not None:
            chosen = ckpt.verify(self.ckpt_root / f"{ckpt.PREFIX}{best}", fingerprint=ck_fp)
            if isinstance(chosen, ckpt.Checkpoint):
                source = chosen
        if not isinstance(source, ckpt.Checkpoint):
            raise RuntimeError(f"the final checkpoint of step {step} does not verify: {source.reason}")
        return self._publish(source, adapters, fp, parent, plan,
                             note="early stop: best checkpoint" if source is not final else "")

    @staticmethod
    def _resume_lr(resume: ckpt.Checkpoint | None, lr: float) -> float:
        """The rate to go on with: the checkpoint's own (NaN rollbacks included), scaled by any
        change the operator made to the configured rate since (config or an lr_factor override)."""
        if resume is None:
            return lr
        then = float(resume.extra.get("lr", lr))
        configured_then = float(resume.extra.get("configured_lr", lr))
        return then * (lr / configured_then) if configured_then > 0 else lr

    def _train_once(self, cfg: Config, base: basecheck.BaseModel, parent: Path | None, plan: StepPlan,
                    hooks: Hooks, caches: tuple[Any, Any], train_idx: list[int], eval_idx: list[int],
                    resume: ckpt.Checkpoint | None, *, use_cpu: bool, precision: str, grad_ckpt: bool,
                    reporting: Reporting) -> None:
        import torch
        from transformers import set_seed
        from transformers.trainer_callback import PrinterCallback, ProgressCallback

        # Seeds before the adapter exists, so its initialisation (and the run) is reproducible.
        set_seed(cfg.training.seed)
        self.faults.at_step(0, batch_size=plan.batch_size)
        model = basecheck.load_model(cfg, base, dtype=getattr(torch, DTYPES[precision]),
                                     gradient_checkpointing=grad_ckpt)
        model = self._wrap_lora(cfg, model, parent)
        if cfg.training.packing:
            # A key/value cache built during a training forward would switch off the block-diagonal
            # mask transformers derives from a packed row's position ids.
            model.config.use_cache = False
        ckpt_lr = float(resume.extra.get("lr", hooks.lr)) if resume else hooks.lr
        args = training_arguments(cfg, plan, out_dir=self.spec.folder.trainer, lr=hooks.lr, use_cpu=use_cpu,
                                  bf16=precision == "bf16", fp16=precision == "fp16", has_eval=bool(eval_idx),
                                  gradient_checkpointing=grad_ckpt, reporting=reporting)
        trainer_cls = guarded_trainer_class()
        cache, eval_cache = caches
        trainer = trainer_cls(model=model, args=args, train_dataset=TokenDataset(cache, train_idx),
                              eval_dataset=TokenDataset(eval_cache, eval_idx) if eval_idx else None,
                              data_collator=hooks.collator, hooks=hooks,
                              callbacks=[lr_scale_callback(hooks.lr / ckpt_lr)])
        trainer.remove_callback(PrinterCallback)
        trainer.remove_callback(ProgressCallback)
        try:
            trainer.train(resume_from_checkpoint=str(resume.path) if resume else None)
        finally:
            del trainer, model
            gc.collect()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()

    def _wrap_lora(self, cfg: Config, model: Any, parent: Path | None) -> Any:
        from peft import LoraConfig, PeftModel, get_peft_model

        if parent is not None:
            self.log(f"continuing adapter {parent.name}")
            self._check_shape(cfg, model, parent)
            return PeftModel.from_pretrained(model, str(parent), is_trainable=True)
        lc = cfg.lora
        targets = lc.target_modules if isinstance(lc.target_modules, str) else list(lc.target_modules)
        try:
            return get_peft_model(model, LoraConfig(
                r=lc.r, lora_alpha=lc.alpha, lora_dropout=lc.dropout, target_modules=targets,
                use_rslora=lc.use_rslora, use_dora=lc.use_dora, modules_to_save=list(lc.modules_to_save) or None,
                task_type="CAUSAL_LM"))
        except ValueError as exc:
            raise ConfigError(f"lora.target_modules = {targets!r} in {cfg.source}: {exc}") from None

    def _check_shape(self, cfg: Config, model: Any, parent: Path) -> None:
        """Continuing an adapter keeps the adapter's own shape; a [lora] section that says otherwise
        is not silently ignored."""
        have = lineage.adapter_shape(parent)
        want = lineage.configured_shape(cfg, lineage.linear_names(model))
        if have != want:
            self.events.alert(
                None, f"[lora] in {cfg.source} asks for {lineage.describe(want)}, but the adapter being "
                      f"continued ({parent.name}) is {lineage.describe(have)}: continuing keeps the "
                      f"adapter's own shape. To train with the new settings, start a new adapter lineage: "
                      f"move {parent.parent / 'latest'} aside (the adapters stay where they are)",
                severity="warning", job_id=self.job_id, key="lora-shape")

    def _publish(self, source: ckpt.Checkpoint, adapters: Path, fp: dict[str, Any], parent: Path | None,
                 plan: StepPlan, note: str) -> JobResult:
        if not self.lead:
            return JobResult("done", source.step, plan.max_steps, None, "done (rank 0 publishes)")
        # The parent the checkpoint was trained from: another job may have moved latest since.
        parent_name = source.extra.get("parent", parent.name if parent else None)
        path = lineage.publish_adapter(source.path, adapters, job_id=self.job_id, fingerprint=fp,
                                       step=source.step, parent=parent_name,
                                       extra={"eval_loss": source.extra.get("eval_loss"), "note": note},
                                       lineage=self.lineage)
        self.log(f"published adapter {path.name} from {source.path.name}" + (f" ({note})" if note else ""))
        self.step = max(self.step, source.step)
        return JobResult("done", self.step, plan.max_steps, str(path), note or "done")
