"""GPU readiness in one script: the paths a CPU machine cannot run, run for real on one GPU.

1. NVML gauges as the engine reads them (``engine.sysmon``): utilisation, memory, temperature,
   power, and per-process GPU memory while a worker trains.
2. bf16 LoRA on SmolLM2-135M-Instruct: the guarded worker against the plain HF Trainer, same
   model, data, batch and seed, in alternating rounds (``gpu_guarded_vs_plain_trainer``, median
   step time ratio; ``gpu_tokens_per_s``, trained tokens per second in the guarded worker).
3. A real CUDA out-of-memory and the daemon's ladder: a job whose micro-batch needs about four
   times what its allocator may use (``torch.cuda.set_per_process_memory_fraction``, through the
   worker's ``gpu_memory_cap`` fault hook) runs under the real supervisor; the ladder halves the
   micro-batch until it fits (``oom_rungs_to_recover``, target <= 2).
4. GPU memory back to the baseline after the worker exits (``gpu_mem_back_to_baseline_s``,
   target < 5 s): the per-job worker process is the memory guardrail.

On a machine without a CUDA GPU it says so and exits 0, writing nothing. Otherwise it writes
``bench/results/gpu.json``. It needs the converted SmolLM2 (``make realmodel`` builds it into
``~/.cache/trainconsole-tests``; ``--model DIR`` names another copy). Under 8 minutes on one GPU.

    python bench/gpu.py [--quick] [--model DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path[0] = str(ROOT)

SEED = 42
BATCH = 8
LR = 2e-4
WARMUP = 3  # first steps of each run left out (allocator, kernels, caches)
OOM_LENGTH = 1024  # tokens per example in the OOM job: a micro-batch's memory is mostly these


def no_gpu_reason() -> str | None:
    try:
        import torch
    except ImportError as exc:
        return f"torch is not importable ({exc})"
    if not torch.cuda.is_available():
        return "torch.cuda.is_available() is False"
    return None


def write_data(path: Path, n: int, words: int) -> Path:
    vocab = ("the model reads every line and learns which words follow which others while the guards "
             "watch the loss the gradient norm and the clock on each step").split()
    with path.open("w") as fh:
        for i in range(n):
            q = " ".join(vocab[(i + k) % len(vocab)] for k in range(words // 3))
            a = " ".join(vocab[(i * 7 + k) % len(vocab)] for k in range(words - words // 3))
            fh.write(json.dumps({"messages": [{"role": "user", "content": q},
                                              {"role": "assistant", "content": a}]}) + "\n")
    return path


def write_config(ws: Path, model: Path, values: dict[str, Any]) -> Path:
    from trainconsole.engine.config import default_config_text, set_value

    ws.mkdir(parents=True, exist_ok=True)
    cfg = ws / "config.toml"
    cfg.write_text(default_config_text())
    base = {"model.base_model": str(model), "training.batch_size": BATCH, "training.max_length": 512,
            "training.learning_rate": LR, "training.eval_fraction": 0.0, "training.save_steps": 100000,
            "training.precision": "bf16", "hardware.device": "cuda", "lora.dropout": 0.0,
            "lora.target_modules": "all-linear", "queue.poll_s": 0.2, "queue.stable_s": 0.0,
            "queue.backoff_s": 0.0, "hardware.min_free_disk_mb": 0, "hardware.min_free_ram_mb": 0}
    for key, value in {**base, **values}.items():
        set_value(cfg, key, value)
    return cfg


def nvml_gauges() -> dict[str, Any]:
    from trainconsole.engine.sysmon import Sysmon

    mon = Sysmon()
    sample = mon.sample()
    if sample.gpu_state != "ok" or not sample.gpus:
        raise SystemExit(f"bench/gpu.py: torch sees a GPU but NVML does not ({mon.gpu_detail or sample.gpu_state})")
    gpu = sample.gpus[0]
    return {"gpu_name": gpu.name, "gpu_util_pct": gpu.util_pct, "gpu_mem_used_mb": gpu.mem_used_mb,
            "gpu_mem_total_mb": gpu.mem_total_mb, "gpu_temp_c": gpu.temp_c, "gpu_power_w": gpu.power_w}


def gpu_used_mb() -> float:
    from trainconsole.engine.sysmon import Sysmon

    gpus = Sysmon([0]).sample().gpus
    return float(gpus[0].mem_used_mb or 0.0) if gpus else 0.0


def run_plain(cfg_path: Path, data_file: Path, steps: int, out: Path) -> list[float]:
    """The plain HF Trainer + peft, bf16, on the worker's own token cache and collator."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, Trainer, TrainerCallback, TrainingArguments, set_seed
    from transformers.trainer_callback import PrinterCallback

    from trainconsole.engine.config import load_config
    from trainconsole.engine.train import basecheck
    from trainconsole.engine.train.dataset import Collator, TokenDataset, load_cache

    cfg = load_config(cfg_path)
    base = basecheck.check_files(cfg, cfg.training.max_length)
    tokenizer = basecheck.load_tokenizer(cfg, base)
    cache = load_cache(cfg, data_file, tokenizer, cfg.layout().cache)
    set_seed(SEED)
    model = AutoModelForCausalLM.from_pretrained(base.path, dtype=torch.bfloat16)
    model = get_peft_model(model, LoraConfig(r=cfg.lora.r, lora_alpha=cfg.lora.alpha, lora_dropout=0.0,
                                             target_modules="all-linear", task_type="CAUSAL_LM"))
    stamps: list[float] = []

    class Clock(TrainerCallback):
        def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            torch.cuda.synchronize()
            stamps.append(time.monotonic())

    args = TrainingArguments(output_dir=str(out), per_device_train_batch_size=BATCH, max_steps=steps,
                             learning_rate=LR, logging_steps=1, save_strategy="no", report_to="none",
                             disable_tqdm=True, bf16=True, seed=SEED, data_seed=SEED,
                             remove_unused_columns=False)
    trainer = Trainer(model=model, args=args, train_dataset=TokenDataset(cache, list(range(len(cache)))),
                      data_collator=Collator(tokenizer.pad_token_id), callbacks=[Clock()])
    trainer.remove_callback(PrinterCallback)
    trainer.train()
    del trainer, model
    torch.cuda.empty_cache()
    return [b - a for a, b in zip(stamps, stamps[1:], strict=False)][WARMUP - 1:]


def run_guarded(ws: Path, cfg_path: Path, data_file: Path, job: str) -> tuple[list[float], list[float]]:
    """The worker's own job runner, in this process (what the daemon's worker runs)."""
    import torch

    from trainconsole.engine.events import EventLog, read_all
    from trainconsole.engine.train.guards import Heartbeat
    from trainconsole.engine.train.job import TrainJob
    from trainconsole.engine.train.worker import read_spec, write_spec

    spec = write_spec(ws / "runs" / job, job_id=job, data_file=data_file, config=cfg_path,
                      adapters_dir=ws / "adapters" / job, overrides={})
    with EventLog(spec.parent / "events.jsonl") as events:
        outcome = TrainJob(read_spec(spec), events, Heartbeat(spec.parent / "heartbeat.json"), [False]).run()
    if outcome.status != "done":
        raise SystemExit(f"bench/gpu.py: guarded run failed: {outcome}")
    torch.cuda.empty_cache()
    steps = [e for e in read_all(spec.parent / "events.jsonl") if e["type"] == "step"][WARMUP:-1]
    return [e["step_time_s"] for e in steps], [e["tokens_per_s"] for e in steps]


def per_example_mb(cfg_path: Path, data_file: Path) -> tuple[float, float]:
    """(memory the model and optimiser state hold, memory one more example of OOM_LENGTH tokens
    adds to a training step's peak), measured on this GPU with the worker's own model loading."""
    import torch
    from peft import LoraConfig, get_peft_model

    from trainconsole.engine.config import load_config
    from trainconsole.engine.train import basecheck
    from trainconsole.engine.train.dataset import Collator, load_cache

    cfg = load_config(cfg_path)
    base = basecheck.check_files(cfg, cfg.training.max_length)
    tokenizer = basecheck.load_tokenizer(cfg, base)
    cache = load_cache(cfg, data_file, tokenizer, cfg.layout().cache)
    model = basecheck.load_model(cfg, base, dtype=torch.bfloat16).cuda()
    model = get_peft_model(model, LoraConfig(r=cfg.lora.r, lora_alpha=cfg.lora.alpha,
                                             target_modules="all-linear", task_type="CAUSAL_LM"))
    collate = Collator(tokenizer.pad_token_id)
    peaks = []
    for n in (1, 2):
        batch = {k: v.cuda() for k, v in collate([{"input_ids": cache[i][0], "labels": cache[i][1]}
                                                  for i in range(n)]).items()}
        torch.cuda.reset_peak_memory_stats()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            model(**batch).loss.backward()
        model.zero_grad(set_to_none=True)
        peaks.append(torch.cuda.max_memory_allocated() / 2**20)
    static = torch.cuda.memory_allocated() / 2**20
    del model
    torch.cuda.empty_cache()
    return static, max(peaks[1] - peaks[0], 1.0)


def oom_ladder(root: Path, model: Path) -> tuple[int, float, dict[str, Any]]:
    """(rungs the ladder needed, seconds for GPU memory to return to the baseline after the
    worker exited, the NVML view while the worker trained)."""
    from tests.daemon.harness import Harness
    from trainconsole.engine.daemon.launcher import launcher_for
    from trainconsole.engine.sysmon import Sysmon

    ws = root / "oom"
    settings = {"training.max_length": OOM_LENGTH, "training.batch_size": 16, "training.max_steps": 4,
                "training.epochs": 0, "queue.max_attempts": 5, "guards.first_step_grace_s": 600.0,
                "guards.hang_floor_s": 300.0}
    cfg = write_config(ws, model, settings)
    data = write_data(ws / "long.jsonl", 64, OOM_LENGTH)  # words, so comfortably over OOM_LENGTH tokens
    static, per = per_example_mb(cfg, data)
    # Room for about four examples: 16 -> 8 (rung 1) still runs out, 8 -> 4 (rung 2) fits.
    cap = static + 4.5 * per
    print(f"  OOM job: model+state {static:.0f} MB, {per:.0f} MB per example, allocator cap {cap:.0f} MB")
    baseline = gpu_used_mb()
    os.environ["TRAINCONSOLE_FAULT"] = f"gpu_memory_cap:{int(cap)}@0"
    h = Harness(ws, settings, launcher_factory=launcher_for)
    seen: dict[str, Any] = {}
    try:
        os.replace(data, h.layout.incoming / "long.jsonl")
        h.run_until(lambda: bool(h.jobs()) and h.jobs()[0].status in ("done", "failed")
                    or h.sup.current is not None and bool(Sysmon([0]).gpu_processes()), timeout=600)
        procs = Sysmon([0]).gpu_processes()
        seen = {"worker_gpu_processes": [{"pid": pid, "used_mb": mb} for _, pid, mb in procs], **nvml_gauges()}
        h.run_until(lambda: h.jobs()[0].status in ("done", "failed"), timeout=900)
        job = h.jobs()[0]
        if job.status != "done":
            raise SystemExit(f"bench/gpu.py: the OOM job failed: {job.error}")
        ended = time.monotonic()
        while gpu_used_mb() > baseline + 256 and time.monotonic() - ended < 60:
            time.sleep(0.05)
        back = time.monotonic() - ended
        return int(job.overrides.get("oom_rung", 0)), back, seen
    finally:
        os.environ.pop("TRAINCONSOLE_FAULT", None)
        h.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer steps and rounds")
    parser.add_argument("--model", type=Path, help="the converted SmolLM2 folder (default: make realmodel's)")
    args = parser.parse_args()
    why = no_gpu_reason()
    if why:
        print(f"bench/gpu.py: no CUDA GPU on this machine ({why}); nothing to measure, nothing written")
        return 0
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    if args.model is not None:
        model = args.model
    else:
        from tests.realmodel.smollm2 import ensure_smollm2

        model = ensure_smollm2()
    steps, rounds = (20, 1) if args.quick else (40, 2)
    started = time.monotonic()
    metrics: dict[str, Any] = dict(nvml_gauges())
    plain: list[float] = []
    guarded: list[float] = []
    tps: list[float] = []
    with tempfile.TemporaryDirectory(prefix="gpu-bench-") as tmp:
        root = Path(tmp)
        data = write_data(root / "data.jsonl", 400, 120)
        cfg = write_config(root / "ws", model, {"training.max_steps": steps, "training.epochs": 0})
        for r in range(rounds):
            for variant in ("plain", "guarded") if r % 2 == 0 else ("guarded", "plain"):
                if variant == "plain":
                    plain += run_plain(cfg, data, steps, root / f"plain{r}")
                else:
                    g, t = run_guarded(root / "ws", cfg, data, f"g{r}")
                    guarded += g
                    tps += t
        rungs, back_s, seen = oom_ladder(root, model)
    metrics.update({
        "gpu_guarded_vs_plain_trainer": round(statistics.median(guarded) / statistics.median(plain), 4),
        "gpu_tokens_per_s": round(statistics.median(tps), 1),
        "gpu_guarded_step_ms": round(statistics.median(guarded) * 1000, 2),
        "gpu_plain_step_ms": round(statistics.median(plain) * 1000, 2),
        "oom_rungs_to_recover": rungs,
        "gpu_mem_back_to_baseline_s": round(back_s, 2),
        **{f"during_job_{k}": v for k, v in seen.items()},
    })
    width = max(len(k) for k in metrics)
    print(f"gpu: {rounds} round(s) x {steps} steps per variant, batch {BATCH}, {time.monotonic() - started:.0f} s")
    for key, value in metrics.items():
        print(f"  {key:<{width}}  {value}")
    out = ROOT / "bench" / "results" / "gpu.json"
    out.write_text(json.dumps({"benchmark": "gpu", "quick": args.quick, "metrics": metrics}, indent=1) + "\n")
    print(f"wrote {out.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
