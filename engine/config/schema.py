"""The config's one source of truth: every section, key, type, default, range and explanation.

Validation (``trainconsole.engine.config.load``), the shipped commented ``config.toml`` and the console's settings
editor are all derived from the dataclasses below, so a key cannot be documented in one place
and forgotten in another."""

from __future__ import annotations

import math
import typing
from dataclasses import MISSING, Field, dataclass, field, fields
from typing import Any, Final, TypeVar

T = TypeVar("T")

BUILTIN_MODELS: Final = ("builtin:tiny-chat",)


@dataclass(frozen=True)
class Spec:
    """How one key is documented and checked."""

    doc: str
    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False  # the lower bound itself is not allowed (e.g. max_grad_norm > 0)
    choices: tuple[str, ...] = ()
    nonempty: bool = False
    note: str = ""  # extra words after the allowed range, e.g. "0 = use max_steps"
    case_low: int | None = None  # the memo case a too-small value is
    case_high: int | None = None  # the memo case a too-large value is
    pattern: str = ""  # a string must match this (re.fullmatch); ``note`` says it in words


def _f(default: T, doc: str, **kw: Any) -> T:
    meta = {"spec": Spec(doc, **kw)}
    if isinstance(default, list):
        frozen = list(default)
        return typing.cast(T, field(default_factory=lambda: list(frozen), metadata=meta))
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class ModelConfig:
    """Which model is fine-tuned."""

    base_model: str = _f(
        "builtin:tiny-chat",
        "The base model: builtin:tiny-chat (built locally, no download), a local folder "
        "(absolute, ./, ../ or ~; relative to this file), or a model id already in the local cache. "
        "A folder that does not exist is an error.",
        nonempty=True)
    revision: str = _f("", "Model revision (branch, tag or commit) for a model id; empty means the default.")
    trust_remote_code: bool = _f(
        False, "Run Python code shipped with the model. Leave false unless you trust the model's author.")
    load_in_4bit: bool = _f(
        False, "Load the base model's weights in 4 bits (QLoRA, NF4 through bitsandbytes): about a quarter "
               "of the memory. Needs a CUDA GPU and the optional extra: pip install 'trainconsole[qlora]'.")


@dataclass(frozen=True)
class LoraConfig:
    """The LoRA adapter being trained."""

    r: int = _f(8, "Adapter rank.", lo=1, hi=1024)
    alpha: int = _f(16, "LoRA scaling numerator (the update is scaled by alpha / r).", lo=1, hi=4096)
    dropout: float = _f(0.05, "Dropout on the adapter's input.", lo=0, hi=0.9)
    target_modules: str | list[str] = _f(
        ["q_proj", "v_proj"], 'Modules that get adapters: a list of module names, or "all-linear" (a '
        "string, not a list) for every linear layer but the output head.", nonempty=True)
    use_rslora: bool = _f(False, "Rank-stabilised scaling: alpha / sqrt(r) instead of alpha / r (steadier at "
                                 "high ranks).")
    use_dora: bool = _f(False, "DoRA: a learnt magnitude per output on top of LoRA's direction (often a little "
                               "better, slower per step).")
    modules_to_save: list[str] = _f(
        [], "Modules trained in full and saved with the adapter, e.g. lm_head or embed_tokens after adding "
            "tokens; [] = none.")


@dataclass(frozen=True)
class TrainingConfig:
    """The optimiser and the schedule."""

    learning_rate: float = _f(2e-4, "Peak learning rate.", lo=1e-6, hi=1e-2, case_low=37, case_high=38)
    batch_size: int = _f(4, "Examples per device per step (the micro-batch).", lo=1, case_low=35,
                         case_high=36)
    gradient_accumulation: int = _f(
        1, "Micro-batches per optimiser step; the effective batch is batch_size * gradient_accumulation.",
        lo=1)
    epochs: int = _f(1, "Passes over the data.", lo=0, hi=10000, note="0 = use max_steps")
    max_steps: int = _f(0, "Optimiser steps to run.", lo=0, note="0 = from epochs; overrides epochs when set")
    max_length: int = _f(1024, "Longest example in tokens; longer ones follow data.long_examples.",
                         lo=128, hi=32768, case_low=33, case_high=34)
    warmup_steps: float = _f(0.0, "Learning-rate warm-up.", lo=0,
                             note="below 1 it is a share of all steps, from 1 on a number of steps")
    lr_scheduler: str = _f("linear", "Learning-rate schedule after warm-up.",
                           choices=("linear", "cosine", "constant"))
    weight_decay: float = _f(0.0, "AdamW weight decay.", lo=0, hi=1)
    max_grad_norm: float = _f(1.0, "Gradient clipping norm.", lo=0, lo_open=True)
    seed: int = _f(42, "Random seed (data order, adapter initialisation).", lo=0, hi=2**32 - 1)
    save_steps: int = _f(50, "Steps between checkpoints.", lo=1)
    eval_steps: int = _f(50, "Steps between evaluations on the held-out share.", lo=1)
    logging_steps: int = _f(1, "Steps between logged metrics.", lo=1)
    eval_fraction: float = _f(0.1, "Share of each file held out for evaluation.", lo=0, hi=0.5)
    gradient_checkpointing: bool = _f(
        False, "Trade compute for memory from the start (the OOM ladder also turns it on when needed).")
    precision: str = _f("auto", "Number format for training: auto is bf16 on a GPU that has it, fp16 with a "
                                "loss scaler on older GPUs (T4, V100), fp32 on the CPU.",
                        choices=("auto", "bf16", "fp16", "fp32"))
    packing: bool = _f(False, "Padding-free batches: a micro-batch's examples are laid end to end in one row, "
                              "each attending only to itself, so no compute goes to padding.")
    group_by_length: bool = _f(False, "Batch examples of similar length together (less padding, cheaper than "
                                      "packing; the order is still seeded).")


@dataclass(frozen=True)
class DataConfig:
    """How training files are read and judged."""

    max_line_bytes: int = _f(16777216, "Longest accepted line in a .jsonl file, in bytes.",
                             lo=1024, hi=1073741824)
    max_invalid_fraction: float = _f(
        0.1, "A file with a larger share of bad records is rejected as a whole.", lo=0, hi=1)
    long_examples: str = _f("truncate", "What happens to an example longer than training.max_length.",
                            choices=("truncate", "drop"))
    max_problems: int = _f(50, "Problems listed in a validation report.", lo=1, hi=100000)
    chat_template: str = _f(
        "", "A chat template for training in place of the model's own (for templates without "
            "{% generation %} markers that are not prefix-stable): a .jinja file (relative to this file), or "
            "the name of a TRL training template such as \"qwen3\" or \"llama3\" (pip install "
            "'trainconsole[templates]'); \"\" = the model's own.")
    eval_file: str = _f(
        "", "A held-out .jsonl file every job is evaluated on, in place of training.eval_fraction of its own "
            "file (relative to this file); \"\" = hold out a share of each file.")


@dataclass(frozen=True)
class QueueConfig:
    """The job queue and its retry policy."""

    max_attempts: int = _f(3, "Attempts before a job that keeps failing is moved to failed/.", lo=1, hi=100)
    backoff_s: float = _f(30.0, "First retry delay in seconds; it doubles each time, with jitter.", lo=0,
                          hi=86400)
    backoff_max_s: float = _f(3600.0, "Longest retry delay in seconds.", lo=0, hi=604800)
    aging_s: float = _f(600.0, "Seconds of waiting that raise a job's effective priority by one level.",
                        lo=1, hi=31536000)
    poll_s: float = _f(1.0, "Seconds between looks at the inbox and the workers.", lo=0.1, hi=60)
    stable_s: float = _f(1.0, "A new file must be unchanged this many seconds before it is taken.",
                         lo=0, hi=3600)
    dedupe: bool = _f(True, "The same content added twice makes one job.")
    preempt: bool = _f(False, "A higher-priority job that cannot start makes a running lower-priority job "
                              "checkpoint at its next step and wait (not charged an attempt); it resumes "
                              "from that checkpoint later.")


@dataclass(frozen=True)
class HardwareConfig:
    """Devices and the resource floors the engine keeps."""

    device: str = _f("auto", "auto uses a GPU when one works, else the CPU.", choices=("auto", "cuda", "cpu"))
    gpus: str | list[int] = _f("all", 'Which GPUs: "all" or a list of indices such as [0, 1].')
    min_free_ram_mb: int = _f(1024, "New jobs wait while less host memory than this is free (MB).",
                              lo=0, hi=2**40)
    min_free_disk_mb: int = _f(1024, "New jobs wait while less disk than this is free (MB).", lo=0, hi=2**40)
    max_swap_mb_s: float = _f(50.0, "Swap-in rate (MB/s) counted as thrashing.", lo=0, lo_open=True)


@dataclass(frozen=True)
class GuardsConfig:
    """The watchdogs around a running job."""

    nan_retries: int = _f(2, "Learning-rate rollbacks after NaN/inf loss before the job is diverged.",
                          lo=0, hi=100)
    nan_lr_factor: float = _f(0.5, "Each rollback multiplies the learning rate by this.", lo=0, hi=1,
                              lo_open=True)
    plateau_window: int = _f(50, "Steps over which the loss must improve.", lo=1)
    plateau_min_delta: float = _f(0.001, "Smallest relative improvement that counts.", lo=0, hi=1)
    plateau_patience: int = _f(3, "Windows in a row without that improvement before the plateau alert.",
                               lo=1)
    early_stop_patience: int = _f(3, "Evaluations without improvement before stopping early.", lo=1)
    think_tag_max_share: float = _f(0.95, "Largest share of <think> text in generations before alerting.",
                                    lo=0, hi=1)
    min_accuracy: float = _f(0.01, "Lowest evaluation accuracy before alerting.", lo=0, hi=1)
    eval_samples: int = _f(8, "Generations sampled per evaluation.", lo=0, hi=10000)
    hang_floor_s: float = _f(120.0, "A step is never called hung before this many seconds.", lo=1)
    hang_multiple: float = _f(20.0, "A step is hung after this many times the recent step time.", lo=1)
    first_step_grace_s: float = _f(900.0, "Seconds allowed for loading and the first step.", lo=1)
    alert_command: list[str] = _f([], "Program and arguments run for each alert, JSON on stdin, no shell; "
                                      "[] = none.")
    alert_min_severity: str = _f("critical", "Least severe alert that runs alert_command.",
                                 choices=("info", "warning", "critical"))


@dataclass(frozen=True)
class PathsConfig:
    """Where the engine keeps its files (relative to this file's folder; ~ is expanded)."""

    queue: str = _f("queue", "Inbox, job copies, done/ and failed/, the job database.", nonempty=True)
    runs: str = _f("runs", "One folder per job: events, checkpoints, reports.", nonempty=True)
    adapters: str = _f("adapters", "Finished adapters.", nonempty=True)
    cache: str = _f(".cache", "Built-in model and token caches.", nonempty=True)


# Slurm's own syntaxes (sbatch(1)): --mem "<size>[K|M|G|T]", --time "minutes", "MM:SS", "HH:MM:SS",
# "D-HH", "D-HH:MM" or "D-HH:MM:SS". Checked here so a typo is a config error, not a failed sbatch.
SLURM_MEM: Final = r"[0-9]+[KMGT]?"
SLURM_TIME: Final = r"[0-9]+(:[0-9]{1,2}){0,2}|[0-9]+-[0-9]{1,2}(:[0-9]{1,2}){0,2}"


@dataclass(frozen=True)
class LauncherConfig:
    """Where workers run: this machine, or a Slurm cluster (docs/cluster.md)."""

    kind: str = _f("local", "local starts each worker on this machine; slurm submits it with sbatch "
                            "(the run folders must be on a filesystem the nodes share).",
                   choices=("local", "slurm"))
    partition: str = _f("", "Slurm partition (sbatch --partition); empty means the cluster's default.")
    account: str = _f("", "Slurm account to charge (sbatch --account); empty means your default.")
    qos: str = _f("", "Slurm quality of service (sbatch --qos); empty means the default.")
    gpus_per_job: int = _f(1, "GPUs per Slurm job; above 1 the worker runs under torchrun in the "
                              "allocation. 0 asks for no GPU (CPU training).", lo=0, hi=64)
    cpus_per_job: int = _f(4, "CPU cores per Slurm job (sbatch --cpus-per-task).", lo=1, hi=1024)
    mem: str = _f("", 'Host memory per Slurm job in sbatch --mem syntax ("64G", "500M"); empty means '
                      "the partition's default.", pattern=SLURM_MEM, note='such as "64G"')
    time_limit: str = _f("", 'Slurm time limit per job in sbatch --time syntax ("90", "4:00:00", '
                             '"1-00:00:00"); empty means the partition\'s. A job reaching it checkpoints '
                             "and is resubmitted to resume.", pattern=SLURM_TIME,
                         note='minutes, "HH:MM:SS" or "D-HH:MM:SS"')
    warn_before_limit_s: int = _f(
        300, "Seconds before the time limit at which Slurm sends SIGUSR1, so the worker checkpoints "
             "and exits in time (Slurm may send it up to a minute earlier).", lo=0, hi=65535,
        note="0 = no warning")
    extra_args: list[str] = _f([], 'More sbatch options, one per item, such as ["--constraint=a100"]; '
                                   "passed as arguments, never through a shell.")
    poll_s: float = _f(5.0, "Seconds between looks at the Slurm queue (one squeue call for all jobs).",
                       lo=0.2, hi=600)
    max_parallel: int = _f(1, "Jobs that run at once, never two of one lineage.", lo=1, hi=10000,
                           note='above 1 needs kind = "slurm"')


@dataclass(frozen=True)
class RetentionConfig:
    """What the engine keeps of finished work, so months of jobs fit on the disk."""

    drop_checkpoints: bool = _f(True, "Delete a done job's checkpoints once its adapter is published (the "
                                      "adapter in the adapters folder is kept; a failed job keeps its "
                                      "checkpoints to resume from).")
    log_days: float = _f(30.0, "Days a finished job's run folder (its log, report and any checkpoints) "
                               "is kept after it ended.", lo=0, hi=36500, note="0 = forever")
    events_max_mb: float = _f(64.0, "Size at which the queue's events.jsonl is rotated to events.jsonl.1 "
                                    "(one older file is kept).", lo=0.01, hi=1048576)
    every_s: float = _f(60.0, "Seconds between retention sweeps (and the job database's upkeep).",
                        lo=0.1, hi=86400)


REPORTERS: Final = ("tensorboard", "wandb", "trackio")


@dataclass(frozen=True)
class ReportConfig:
    """Where each job's metrics are mirrored besides the engine's own event log."""

    to: list[str] = _f(
        [], "Libraries that receive each job's loss, learning rate and evaluations through the Trainer's "
            "report_to, one run per job named <job>-<lineage>: \"tensorboard\" (event files in "
            "<runs>/tensorboard/<job>-<lineage>), \"wandb\" (offline into the job's run folder unless "
            "WANDB_MODE says otherwise), \"trackio\" (a local project named trainconsole). Each needs its "
            "package, e.g. pip install 'trainconsole[tensorboard]'; [] = none.",
        choices=REPORTERS)


SECTIONS: Final[dict[str, type]] = {
    "model": ModelConfig,
    "lora": LoraConfig,
    "training": TrainingConfig,
    "data": DataConfig,
    "queue": QueueConfig,
    "hardware": HardwareConfig,
    "guards": GuardsConfig,
    "report": ReportConfig,
    "paths": PathsConfig,
    "launcher": LauncherConfig,
    "retention": RetentionConfig,
}


@dataclass(frozen=True)
class Key:
    """One key of the schema, flattened for validation and documentation."""

    section: str
    name: str
    kind: str  # int, float, bool, str, list[str], gpus, modules
    default: Any
    spec: Spec

    @property
    def dotted(self) -> str:
        return f"{self.section}.{self.name}"


_KINDS: Final[dict[Any, str]] = {
    int: "int", float: "float", bool: "bool", str: "str", list[str]: "list[str]",
    str | list[int]: "gpus", str | list[str]: "modules",
}


def _default(f: Field[Any]) -> Any:
    if f.default is not MISSING:
        return f.default
    assert f.default_factory is not MISSING
    return f.default_factory()


def _keys() -> dict[str, dict[str, Key]]:
    out: dict[str, dict[str, Key]] = {}
    for section, cls in SECTIONS.items():
        hints = typing.get_type_hints(cls)
        out[section] = {
            f.name: Key(section, f.name, _KINDS[hints[f.name]], _default(f), f.metadata["spec"])
            for f in fields(cls)
        }
    return out


KEYS: Final = _keys()


def _num(x: float) -> str:
    if isinstance(x, int) or x == int(x) and abs(x) < 1e15:
        return str(int(x))
    return f"{x:g}"


def allowed_text(key: Key) -> str:
    """What a value of this key may be, in words (used in error messages and the shipped file)."""
    s = key.spec
    if key.kind == "bool":
        base = "true or false"
    elif key.kind == "gpus":
        base = '"all" or a list of GPU indices (integers >= 0)'
    elif key.kind == "list[str]" and s.choices:
        base = "a list of " + ", ".join(f'"{c}"' for c in s.choices) + " (each at most once)"
    elif key.kind == "modules":
        base = '"all-linear" or a non-empty list of module names'
    elif key.kind == "list[str]":
        base = "a non-empty list of strings" if s.nonempty else "a list of strings"
    elif s.choices:
        base = "one of " + ", ".join(f'"{c}"' for c in s.choices)
    elif key.kind == "str":
        base = "a non-empty string" if s.nonempty else "a string"
    else:
        noun = "an integer" if key.kind == "int" else "a number"
        if s.lo is not None and s.hi is not None and not s.lo_open:
            base = f"{noun} from {_num(s.lo)} to {_num(s.hi)}"
        elif s.lo is not None and s.hi is not None:
            base = f"{noun} > {_num(s.lo)} and <= {_num(s.hi)}"
        elif s.lo is not None:
            base = f"{noun} {'>' if s.lo_open else '>='} {_num(s.lo)}"
        else:
            base = noun
    return f"{base} ({s.note})" if s.note else base


def is_finite_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and (
        isinstance(value, int) or math.isfinite(value))
