"""Training overhead benchmark: what our guards cost per step, against the plain HF Trainer + peft
and against a hand-written torch loop, on the same model, data and seed, in one run.

The model is a Llama of about 25M parameters (8M with --quick) with random weights, built locally (the built-in
tiny model's steps would be all overhead). Each variant trains the same LoRA on the same batches;
its step time is the interval between consecutive optimiser-step ends (data loading, forward,
backward, optimiser, logging and guards all included). The variants run in rounds (raw, plain,
guarded, repeated) so drift in a shared machine's load hits all of them alike.

  guarded_vs_plain_trainer   median step time, our worker / plain Trainer (logging each step);
                             target <= 1.02
  plain_trainer_vs_raw_loop  median step time, plain Trainer / hand-written loop, for scale
  useful_tokens_per_s        non-padding label tokens per second in our worker (median step)
  guard_ms_per_step          the guard's own time per step, measured inside the worker
  guarded_vs_plain_trainer_min   the same ratio on the fastest step of each (least disturbed by
                             other load on a shared machine)
  *_step_ms                  the medians themselves
  short_step_guarded_vs_raw_loop   median CPU seconds of the process per step, our worker /
                             hand-written loop, on a small model whose raw step is about 15 ms on
                             one CPU thread (a LoRA step on a GPU is 10-50 ms, so per-step costs
                             of a few ms would show); target <= 1.05. CPU time, because at this
                             step length a shared machine's other load swamps the wall clock;
                             the wall-clock ratio is *_wall. short_step_plain_trainer_vs_raw_loop
                             for scale

    python bench/train_overhead.py [--quick]
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path[0] = str(ROOT)

DIMS = {"hidden_size": 384, "intermediate_size": 1024, "num_hidden_layers": 6, "num_attention_heads": 6,
        "num_key_value_heads": 6}  # about 8M parameters (--quick)
FULL_DIMS = {"hidden_size": 512, "intermediate_size": 1536, "num_hidden_layers": 8, "num_attention_heads": 8,
             "num_key_value_heads": 8}  # about 25M
# Short steps: a step of about 15 ms on this CPU, as a LoRA step on a GPU takes 10-50 ms, so
# the guarded path's per-step costs are not hidden under a long forward pass.
SHORT_DIMS = {"hidden_size": 128, "intermediate_size": 256, "num_hidden_layers": 2, "num_attention_heads": 4,
              "num_key_value_heads": 4}
SHORT_WORDS = 12
SHORT_STEPS = 60
SEED = 42
BATCH = 4
MAX_LENGTH = 256
LR = 2e-4
WARMUP = 2  # first steps of each run left out (allocator, caches)
WORDS = ("the model reads every line and learns which words follow which others while the guards "
         "watch the loss the gradient norm and the clock on each step").split()


def build_model(cache: Path, where: Path, dims: dict[str, int]) -> Path:
    import torch
    from transformers import AutoConfig, LlamaForCausalLM

    from trainconsole.engine.train.model import ensure_builtin

    tiny = ensure_builtin("builtin:tiny-chat", cache)
    config = AutoConfig.from_pretrained(tiny)
    for key, value in dims.items():
        setattr(config, key, value)
    config.max_position_embeddings = 4096
    torch.manual_seed(SEED)
    model = LlamaForCausalLM(config)
    model.save_pretrained(where)
    for path in tiny.iterdir():
        if path.name.startswith(("tokenizer", "special_tokens", "chat_template", "generation")):
            shutil.copy(path, where / path.name)
    return where


def write_data(path: Path, n: int, words: int) -> Path:
    """``n`` conversations that are word-for-word permutations of one another, so every batch has
    the same shape in every variant whatever order its sampler draws (padding is then zero and
    step times compare like with like)."""
    rng = random.Random(SEED)
    q_words = [WORDS[i % len(WORDS)] for i in range(words // 3)]
    a_words = [WORDS[(i * 7) % len(WORDS)] for i in range(words - words // 3)]
    with path.open("w") as fh:
        for _ in range(n):
            rng.shuffle(q_words)
            rng.shuffle(a_words)
            fh.write(json.dumps({"messages": [{"role": "user", "content": " ".join(q_words)},
                                              {"role": "assistant", "content": " ".join(a_words)}]}) + "\n")
    return path


def write_config(ws: Path, cache: Path, model: Path, steps: int) -> Path:
    from trainconsole.engine.config import default_config_text, set_value

    cfg = ws / "config.toml"
    cfg.write_text(default_config_text().replace('cache = ".cache"', f'cache = "{cache}"'))
    for key, value in {"model.base_model": str(model), "training.max_steps": steps, "training.batch_size": BATCH,
                       "training.max_length": MAX_LENGTH, "training.learning_rate": LR,
                       "training.eval_fraction": 0.0, "training.save_steps": 100000, "hardware.device": "cpu",
                       "lora.dropout": 0.0}.items():
        set_value(cfg, key, value)
    return cfg


def dataset(cfg_path: Path, data: Path) -> tuple[Any, Any, Any]:
    """The token cache and tokenizer exactly as the worker builds them."""
    from trainconsole.engine.config import load_config
    from trainconsole.engine.train import basecheck
    from trainconsole.engine.train.dataset import TokenDataset, load_cache

    cfg = load_config(cfg_path)
    base = basecheck.check_files(cfg, cfg.training.max_length)
    tokenizer = basecheck.load_tokenizer(cfg, base)
    cache = load_cache(cfg, data, tokenizer, cfg.layout().cache)
    return cfg, TokenDataset(cache, list(range(len(cache)))), tokenizer


def peft_model(cfg: Any, model_dir: Path) -> Any:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, set_seed

    set_seed(SEED)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    lc = cfg.lora
    return get_peft_model(model, LoraConfig(r=lc.r, lora_alpha=lc.alpha, lora_dropout=lc.dropout,
                                            target_modules=list(lc.target_modules), task_type="CAUSAL_LM"))


def run_raw(cfg: Any, model_dir: Path, data: Any, pad: int, steps: int, cpu: list[float]) -> list[float]:
    import torch

    from trainconsole.engine.train.dataset import Collator

    model = peft_model(cfg, model_dir)
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=LR)
    loader = torch.utils.data.DataLoader(data, batch_size=BATCH, shuffle=True, collate_fn=Collator(pad),
                                         generator=torch.Generator().manual_seed(SEED))
    times, last = [], time.monotonic()
    cpu_times, cpu_last = [], time.process_time()
    batches = iter(loader)
    for _ in range(steps):
        try:
            batch = next(batches)
        except StopIteration:
            batches = iter(loader)
            batch = next(batches)
        loss = model(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad()
        float(loss.detach())  # the one sync a loop that prints its loss pays
        now = time.monotonic()
        times.append(now - last)
        last = now
        cpu_now = time.process_time()
        cpu_times.append(cpu_now - cpu_last)
        cpu_last = cpu_now
    cpu += cpu_times[WARMUP:]
    return times[WARMUP:]


def run_plain(cfg: Any, model_dir: Path, data: Any, pad: int, steps: int, out: Path,
              cpu: list[float]) -> list[float]:
    from transformers import Trainer, TrainerCallback, TrainingArguments

    from trainconsole.engine.train.dataset import Collator

    stamps: list[float] = []
    cpu_stamps: list[float] = []

    class Clock(TrainerCallback):
        def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            stamps.append(time.monotonic())
            cpu_stamps.append(time.process_time())

    args = TrainingArguments(output_dir=str(out), per_device_train_batch_size=BATCH, max_steps=steps,
                             learning_rate=LR, logging_steps=1, save_strategy="no", report_to="none",
                             disable_tqdm=True, use_cpu=True, seed=SEED, data_seed=SEED,
                             remove_unused_columns=False, dataloader_pin_memory=False)
    trainer = Trainer(model=peft_model(cfg, model_dir), args=args, train_dataset=data,
                      data_collator=Collator(pad), callbacks=[Clock()])
    from transformers.trainer_callback import PrinterCallback

    trainer.remove_callback(PrinterCallback)
    trainer.train()
    cpu += [b - a for a, b in zip(cpu_stamps, cpu_stamps[1:], strict=False)][WARMUP - 1:]
    return [b - a for a, b in zip(stamps, stamps[1:], strict=False)][WARMUP - 1:]


def run_guarded(ws: Path, cfg_path: Path, data_file: Path, job: str,
                cpu: list[float]) -> tuple[list[float], list[float], float]:
    """The worker's own job runner (what ``python -m trainconsole.engine.train.worker`` runs), in this process."""
    from trainconsole.engine.events import EventLog, read_all
    from trainconsole.engine.runfiles import JobSpec, write_spec
    from trainconsole.engine.train.guards import HeartbeatWriter
    from trainconsole.engine.train.job import TrainJob
    from trainconsole.engine.train.trainer_setup import Hooks

    # The process's CPU clock at each step's end, read where the plain Trainer's callback reads it
    # (the worker's end-of-step hook); the wall-clock step times come from the step events.
    cpu_stamps: dict[int, float] = {}
    end_step = Hooks.end_step

    def stamped(self: Any, trainer: Any, grad_norm: Any, lr: float | None) -> None:
        end_step(self, trainer, grad_norm, lr)
        cpu_stamps.setdefault(self.ended, time.process_time())

    spec_path = write_spec(ws / "runs" / job, job_id=job, data_file=data_file, config=cfg_path,
                           adapters_dir=ws / "adapters", overrides={})
    run_dir = spec_path.parent
    with EventLog(run_dir / "events.jsonl") as events:
        runner = TrainJob(JobSpec.read(spec_path), events, HeartbeatWriter(run_dir / "heartbeat.json"), [False])
        Hooks.end_step = stamped  # type: ignore[method-assign]
        try:
            outcome = runner.run()
        finally:
            Hooks.end_step = end_step  # type: ignore[method-assign]
    if outcome.status != "done" or runner.hooks is None:
        raise SystemExit(f"guarded run failed: {outcome}")
    steps = [e for e in read_all(run_dir / "events.jsonl") if e["type"] == "step"]
    steps = steps[WARMUP:-1]  # the last step includes the final checkpoint's save
    ordered = [cpu_stamps[k] for k in sorted(cpu_stamps)]
    cpu += [b - a for a, b in zip(ordered, ordered[1:], strict=False)][WARMUP - 1:-1]
    per_step = runner.hooks.overhead_s / max(runner.hooks.overhead_steps, 1)
    return [e["step_time_s"] for e in steps], [e["tokens_per_s"] for e in steps], per_step


@dataclass
class Comparison:
    times: dict[str, list[float]] = field(default_factory=dict)  # variant -> step times
    cpu: dict[str, list[float]] = field(default_factory=dict)  # variant -> the process's CPU seconds per step
    tokens_per_s: list[float] = field(default_factory=list)  # the guarded worker's, per step
    guard_cost: list[float] = field(default_factory=list)  # the guard's own seconds per step, per run
    params: int = 0


def compare(root: Path, dims: dict[str, int], words: int, steps: int, rounds: int,
            variants: tuple[str, ...]) -> Comparison:
    """Each variant ``rounds`` times on one model and data set, the order rotating each round so a
    slow patch of a shared machine is shared out."""
    root.mkdir(parents=True)
    cache = root / "cache"
    model_dir = build_model(cache, root / "model", dims)
    data_file = write_data(root / "data.jsonl", 200, words)
    cfg_path = write_config(root, cache, model_dir, steps)
    cfg, data, tokenizer = dataset(cfg_path, data_file)
    result = Comparison(times={v: [] for v in variants}, cpu={v: [] for v in variants})
    result.params = sum(p.numel() for p in peft_model(cfg, model_dir).parameters())
    pad = tokenizer.pad_token_id
    for r in range(rounds):
        for variant in variants[r % len(variants):] + variants[:r % len(variants)]:
            if variant == "raw":
                result.times["raw"] += run_raw(cfg, model_dir, data, pad, steps, result.cpu["raw"])
            elif variant == "plain":
                result.times["plain"] += run_plain(cfg, model_dir, data, pad, steps, root / f"plain{r}",
                                                   result.cpu["plain"])
            else:
                shutil.rmtree(root / "adapters", ignore_errors=True)
                g, t, cost = run_guarded(root, cfg_path, data_file, f"j{r:04d}", result.cpu["guarded"])
                result.times["guarded"] += g
                result.tokens_per_s += t
                result.guard_cost.append(cost)
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer steps and rounds (under 2 minutes)")
    parser.add_argument("-v", action="store_true", help="print every step time")
    args = parser.parse_args()
    steps, rounds, words = (12, 3, 30) if args.quick else (30, 4, 120)
    short_rounds = 3 if args.quick else 6

    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    import torch

    # One thread for every variant: on a shared machine a second thread mostly measures contention.
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory(prefix="train-overhead-") as tmp:
        root = Path(tmp)
        started = time.monotonic()
        long_ = compare(root / "long", DIMS if args.quick else FULL_DIMS, words, steps, rounds,
                        ("raw", "plain", "guarded"))
        short = compare(root / "short", SHORT_DIMS, SHORT_WORDS, SHORT_STEPS, short_rounds,
                        ("raw", "plain", "guarded"))
        elapsed = time.monotonic() - started
    plain, guarded = long_.times["plain"], long_.times["guarded"]
    med = {name: statistics.median(v) for name, v in long_.times.items()}
    short_med = {name: statistics.median(v) for name, v in short.times.items()}
    short_cpu = {name: statistics.median(v) for name, v in short.cpu.items()}
    if args.v:
        for label, result in (("long", long_), ("short", short)):
            for name, v in result.times.items():
                print(label, name, [round(x * 1000, 1) for x in v])
                print(label, name, "cpu", [round(x * 1000, 1) for x in result.cpu[name]])
    metrics = {
        "guarded_vs_plain_trainer": round(med["guarded"] / med["plain"], 4),
        "plain_trainer_vs_raw_loop": round(med["plain"] / med["raw"], 4),
        "useful_tokens_per_s": round(statistics.median(long_.tokens_per_s), 1),
        # Measured directly inside the worker: what the per-step guard (finite check and its one
        # host sync, step event, heartbeat) costs, and its share of a median guarded step.
        "guard_ms_per_step": round(statistics.median(long_.guard_cost) * 1000, 3),
        "guard_share_of_step": round(statistics.median(long_.guard_cost) / med["guarded"], 5),
        # Contention on a shared machine only ever adds time, so the fastest steps are the least
        # disturbed view of the same comparison.
        "guarded_vs_plain_trainer_min": round(min(guarded) / min(plain), 4),
        "guarded_step_ms": round(med["guarded"] * 1000, 2),
        "plain_step_ms": round(med["plain"] * 1000, 2),
        "raw_step_ms": round(med["raw"] * 1000, 2),
        "model_params_m": round(long_.params / 1e6, 2),
        "steps_measured_per_variant": len(guarded),
        # Short steps (a GPU's 10-50 ms LoRA step, reproduced on this CPU with a small model): every
        # millisecond the guarded path adds per step shows here; target <= 1.05. Median CPU
        # seconds of the process per step: on a machine shared with other load the wall clock
        # mostly measures the neighbours at this step length (both are reported).
        "short_step_guarded_vs_raw_loop": round(short_cpu["guarded"] / short_cpu["raw"], 4),
        "short_step_plain_trainer_vs_raw_loop": round(short_cpu["plain"] / short_cpu["raw"], 4),
        "short_step_guarded_vs_raw_loop_wall": round(short_med["guarded"] / short_med["raw"], 4),
        "short_step_guarded_vs_raw_loop_wall_min": round(min(short.times["guarded"]) / min(short.times["raw"]), 4),
        "short_step_guarded_cpu_ms": round(short_cpu["guarded"] * 1000, 2),
        "short_step_plain_cpu_ms": round(short_cpu["plain"] * 1000, 2),
        "short_step_raw_cpu_ms": round(short_cpu["raw"] * 1000, 2),
        "short_step_guarded_ms": round(short_med["guarded"] * 1000, 2),
        "short_step_plain_ms": round(short_med["plain"] * 1000, 2),
        "short_step_raw_ms": round(short_med["raw"] * 1000, 2),
        "short_step_guard_ms_per_step": round(statistics.median(short.guard_cost) * 1000, 3),
        "short_step_steps_measured_per_variant": len(short.times["guarded"]),
    }
    width = max(len(k) for k in metrics)
    print(f"train_overhead: {rounds} round(s) x {steps} steps per variant, short steps {short_rounds} x "
          f"{SHORT_STEPS}, batch {BATCH}, {elapsed:.0f} s")
    for key, value in metrics.items():
        print(f"  {key:<{width}}  {value}")
    out = ROOT / "bench" / "results" / "train_overhead.json"
    out.write_text(json.dumps({"benchmark": "train_overhead", "quick": args.quick, "metrics": metrics},
                              indent=1) + "\n")
    print(f"wrote {out.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
