"""The catalogue of the memo's 80 failure cases: for each, how we detect it, what we do, how loud we
are about it. The one source of truth for alert severities (``trainconsole.engine.events``), for
``docs/edge-cases.md`` and for the test-coverage report.

Data and its rendering only: ``trainconsole.engine.edge_coverage`` (the test scan and the command
line that writes the document and the report) stands on it, never the other way round.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final, Literal

Severity = Literal["info", "warning", "critical"]

DATA: Final = "Data"
MODEL: Final = "Model/Checkpoint"
GPU: Final = "GPU/Memory"
CONFIG: Final = "Configuration"
PROCESS: Final = "Process/System"
QUEUE: Final = "Queue/File Management"
FLOW: Final = "Training Flow"
CODE: Final = "Code/Variable"

# The memo's eight categories, in its order, each owning ten consecutive numbers.
CATEGORIES: Final[tuple[str, ...]] = (DATA, MODEL, GPU, CONFIG, PROCESS, QUEUE, FLOW, CODE)


def category_of(number: int) -> str:
    return CATEGORIES[(number - 1) // 10]


@dataclass(frozen=True)
class Case:
    number: int
    title: str  # the memo's words, adapted where ours differ (config.toml, base_model)
    severity: Severity  # of the alert it raises; also the default for any alert with this case
    alert: bool  # whether an operator alert is raised (else it is a report line or a CLI message)
    detection: str
    behaviour: str

    @property
    def category(self) -> str:
        return category_of(self.number)


def _case(n: int, title: str, severity: Severity, alert: bool, detection: str, behaviour: str) -> Case:
    return Case(n, title, severity, alert, detection, behaviour)


_ALL: Final[tuple[Case, ...]] = (
    # Data: streamed line by line from the engine's own copy; problems carry line numbers.
    _case(1, "Empty training file (0 examples)", "warning", True,
          "the streaming validator counts no example at all (empty or whitespace only); a file "
          "whose every record is bad is rejected with the case of its most common fault (4-9)",
          "The file is rejected as a permanent data error (never retried) and moved to queue/failed/ "
          "with a report saying it holds no usable example."),
    _case(2, "Single example file (< batch_size examples)", "info", False,
          "example count compared with the effective batch when total steps are computed",
          "The job trains: total steps round up, so a lone example is one smaller batch, never zero "
          "steps; the count is shown in the validation report."),
    _case(3, "Extremely long sequences (> max_length, require truncation)", "info", True,
          "token length of each rendered example against training.max_length",
          "Over-long examples are truncated or dropped per data.long_examples, counted, and noted in "
          "one alert per job; one left with no assistant token is dropped, never trained on."),
    _case(4, "Malformed JSON (syntax errors, missing fields)", "warning", True,
          "each line parsed on its own with orjson; a whole-file JSON array is recognised",
          "The bad line is skipped and reported by line number and reason; past "
          "data.max_invalid_fraction the whole file is rejected as a permanent data error."),
    _case(5, "Missing 'messages' field", "warning", True,
          "record schema check (ShareGPT 'conversations' is mapped, not missing)",
          "The record is skipped as invalid with its line number; the file is rejected only past "
          "the invalid-fraction limit."),
    _case(6, "Empty 'messages' array", "warning", True,
          "record schema check: messages must be a non-empty list with an assistant turn",
          "The record is skipped as invalid (empty, or nothing to learn); a file in which no record "
          "is usable is rejected as a permanent data error with this case when it is the most "
          "common fault (case 1 is a file with no record at all)."),
    _case(7, "Wrong role names (not 'user' or 'assistant')", "warning", True,
          "roles checked against system, user, assistant, tool and a table of known aliases",
          "Known aliases (human, gpt, ...) are mapped; any other role makes the record invalid, "
          "with the offending role named in the report."),
    _case(8, "Non-string content (numbers, objects, arrays)", "warning", True,
          "content type check per message",
          "OpenAI-style text parts are joined into one string; numbers, objects, null and non-text "
          "parts make the record invalid with a reason naming the type."),
    _case(9, "Emoji/Unicode in data (UTF-8 encoding issues)", "info", False,
          "bytes decoded strictly per line; split on \\n only, never on U+2028",
          "Emoji and any valid UTF-8 train normally, BOM and CRLF are tolerated; invalid UTF-8, NUL "
          "bytes and lone surrogates make that record invalid with its own reason."),
    _case(10, "Extremely large files (>1GB, memory issues)", "info", False,
          "never read whole: streamed with a bounded line size; peak memory measured in tests",
          "Memory stays bounded for a file of any size: records are streamed and the token cache is "
          "written to disk and memory-mapped."),
    # Model and checkpoints: nothing is trusted until checked; checkpoints carry a manifest.
    _case(11, "No base model exists (path doesn't exist)", "critical", True,
          "check-config rejects a path-like base_model that does not exist; the worker re-checks "
          "before the job consumes anything",
          "Permanent config error naming the key and the path; the job fails without a retry and the "
          "queue is not burned through."),
    _case(12, "Corrupted model files (incomplete download)", "critical", True,
          "config.json parsed, safetensors headers and index sizes checked before loading",
          "Permanent config error naming the damaged file; torch files load with weights_only and "
          "remote code never runs unless model.trust_remote_code says so."),
    _case(13, "Mismatched adapter/base (adapter trained on different base)", "critical", True,
          "each adapter carries its base fingerprint (name, revision, config hash, layers, hidden and "
          "vocab size), compared before loading",
          "The adapter is refused with an alert and never attached, even where PEFT would load it "
          "silently."),
    _case(14, "No checkpoints exist (fresh start)", "info", False,
          "resume scan finds no verified checkpoint for the job",
          "The job starts from step 0, continuing the latest published adapter when there is one."),
    _case(15, "Checkpoint directory exists but empty", "warning", True,
          "a checkpoint is used only when its manifest (written last) verifies",
          "The empty folder is quarantined (never deleted) with an alert and the newest good "
          "checkpoint is used instead."),
    _case(16, "Trainer_state.json missing (no global_step info)", "warning", True,
          "manifest lists every file with size and hash; a missing file fails verification",
          "The checkpoint is quarantined with an alert and the newest good one is used; we never "
          "resume with a fresh optimizer or schedule by accident."),
    _case(17, "Trainer_state.json corrupted (invalid JSON)", "warning", True,
          "manifest hash mismatch, or trainer_state.json failing to parse",
          "The checkpoint is quarantined with an alert and the newest good one is used."),
    _case(18, "Checkpoint from different model (incompatible)", "warning", True,
          "the manifest's base fingerprint compared with the configured base",
          "The foreign checkpoint is quarantined with an alert, never loaded; resume falls back to "
          "the newest matching one."),
    _case(19, "Very old checkpoint (outdated format)", "warning", True,
          "manifest format version checked",
          "A checkpoint of an unknown format version is quarantined with an alert and skipped."),
    _case(20, "Checkpoint mid-step (partial save)", "warning", True,
          "checkpoints are staged, fsynced, given a manifest last, then renamed into place",
          "A partial save never looks like a checkpoint: leftover staging folders are swept at start "
          "and a folder without a verifying manifest is quarantined."),
    # GPU and memory: a worker process per job is the memory guardrail.
    _case(21, "GPU OOM during model load", "warning", True,
          "torch.OutOfMemoryError caught in the worker, reported as class oom",
          "Retried down the OOM ladder (half micro-batch with double accumulation, then gradient "
          "checkpointing), then a clear failure; each rung is recorded on the job."),
    _case(22, "GPU OOM during tokenization", "warning", True,
          "tokenization runs on the CPU in streamed batches; the worker knows its phase, and an "
          "out-of-memory (torch's or Python's MemoryError) while the token cache is built is case 22",
          "Tokenizing cannot take GPU memory; host memory stays bounded by streaming to the on-disk "
          "token cache, and an OOM anyway walks the same ladder as case 23."),
    _case(23, "GPU OOM during training", "warning", True,
          "torch.OutOfMemoryError caught at the step, reported as class oom",
          "Resume from the last good checkpoint with half the micro-batch and twice the accumulation "
          "(same effective batch), then with gradient checkpointing, then fail clearly."),
    _case(24, "System RAM OOM", "critical", True,
          "a worker SIGKILLed without a report while the kernel's OOM-kill counter moved; available "
          "RAM sampled (cgroup-aware)",
          "Counted as an attempt and retried down the OOM ladder; below hardware.min_free_ram_mb the "
          "daemon starts no new work and alerts."),
    _case(25, "Disk full (can't save checkpoints)", "critical", True,
          "ENOSPC classified as disk_full; free disk sampled against hardware.min_free_disk_mb",
          "The previous checkpoint stays intact (saves are staged), the queue pauses without "
          "charging the job an attempt, and resumes when space returns."),
    _case(26, "No GPU available (CUDA not found)", "warning", True,
          "device probe at worker start; NVML absence is a state in the sampler",
          "hardware.device = auto trains on the CPU with a warning; cuda holds the queue with an "
          "alert instead of failing jobs."),
    _case(27, "Multiple GPUs (need to specify which one)", "info", False,
          "hardware.gpus (indices or \"all\") validated against the devices present",
          "The chosen GPUs are set through CUDA_VISIBLE_DEVICES; more than one runs the worker under "
          "torchrun (DDP through the HF Trainer)."),
    _case(28, "GPU crash mid-training", "critical", True,
          "CUDA/device errors classified as device in the worker's report",
          "Retried after a delay from the last good checkpoint; repeated device faults pause the "
          "queue with an alert."),
    _case(29, "Memory fragmentation (many small allocations)", "info", False,
          "none needed: the worker process ends with its job",
          "Every job runs in its own process, so fragmentation dies with it; workers get "
          "PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True; an OOM anyway is case 23."),
    _case(30, "Swap thrashing (system using swap heavily)", "warning", True,
          "swap-in rate sampled against hardware.max_swap_mb_s",
          "While swap is thrashing the daemon starts no new work and raises an alert."),
    # Configuration: one typed, validated, frozen object loaded from config.toml.
    _case(31, "Missing config.toml (the memo's config.json; ours is TOML)", "critical", False,
          "config lookup: --config, else $TRAINCONSOLE_CONFIG, else ./config.toml",
          "Every command stops with one line naming the path it looked for and how to create one "
          "(trainconsole init); exit 1, no traceback."),
    _case(32, "Invalid TOML in config (the memo's invalid JSON)", "critical", False,
          "tomlkit parse error, with line and column",
          "One line naming the file, line and column; exit 1. Wrong types, NaN/inf and unknown keys "
          "(with a did-you-mean) are rejected the same way."),
    _case(33, "max_length too small (< shortest example)", "warning", True,
          "training.max_length range 128..32768; token lengths counted against it",
          "Examples over it are truncated or dropped and counted (case 3); if none is left with an "
          "assistant token the file is rejected as a data error."),
    _case(34, "max_length too large (> GPU memory)", "warning", True,
          "checked against the model's context length before training",
          "A max_length past the model's context is a permanent config error; memory it costs on "
          "the GPU is handled by the OOM ladder (case 23)."),
    _case(35, "batch_size = 0", "critical", False,
          "config validation: training.batch_size >= 1 (bools and strings are not ints)",
          "Rejected at load with the file, key and allowed range; training code never sees it."),
    _case(36, "batch_size too large (GPU OOM)", "warning", False,
          "check-config warns when a legal batch size is risky",
          "check-config prints a warning (exit 0); at run time an OOM halves it down the ladder, "
          "keeping the effective batch."),
    _case(37, "learning_rate = 0", "critical", False,
          "config validation: training.learning_rate in 1e-6..1e-2",
          "Rejected at load with the file, key and allowed range."),
    _case(38, "learning_rate too high (divergence)", "warning", False,
          "check-config warns when a legal learning rate is risky",
          "check-config prints a warning (exit 0); at run time a divergence is caught by the NaN/inf "
          "guard (cases 64, 65), which lowers it."),
    _case(39, "Invalid base_model (the memo's model_name not in database)", "critical", True,
          "a path-like base_model must exist (check-config); a model id must resolve offline "
          "(worker pre-flight)",
          "Permanent config error naming model.base_model and what was looked for; nothing is "
          "downloaded behind the operator's back."),
    _case(40, "Mismatched tokenizer/model", "critical", True,
          "tokenizer vocabulary against the embedding rows; chat template present",
          "Permanent config error before training, saying which of the two does not fit."),
    # Process and system: one daemon per queue, a worker per job, recovery at start.
    _case(41, "Daemon killed mid-training (SIGKILL)", "warning", True,
          "at start: jobs left running in the store, orphaned workers by pid and start time",
          "Orphaned workers are ended, jobs left running are requeued and resume from their newest "
          "good checkpoint, staging folders are swept."),
    _case(42, "Power loss mid-training", "warning", True,
          "as case 41; checkpoints are fsynced and the store uses synchronous=FULL",
          "Recovery as case 41: at most one checkpoint interval of steps is lost, nothing is "
          "half-written."),
    _case(43, "System reboot mid-training", "warning", True,
          "as case 41; a recorded pid is trusted only if its start time matches",
          "Recovery as case 41; a pid reused after the reboot is never mistaken for our worker."),
    _case(44, "Disk I/O errors", "warning", True,
          "EIO and other OSErrors classified as transient",
          "Retried with exponential backoff up to queue.max_attempts; never a hang."),
    _case(45, "Network mount disconnected (if data on network)", "warning", True,
          "vanished or unreadable paths classified as transient",
          "The job trains from the engine's own copy in queue/jobs; a vanished output path is "
          "retried with backoff."),
    _case(46, "Permission errors (can't write checkpoints)", "critical", True,
          "every folder checked for writability at daemon start; EACCES/EPERM at run time",
          "A plain message naming the folder and what to fix; the daemon does not start on folders "
          "it cannot write."),
    _case(47, "Clock skew (timestamps inconsistent)", "info", False,
          "a stored retry time further ahead than queue.backoff_max_s",
          "Durations, timeouts and heartbeat ages use the monotonic clock; retry times (which must "
          "survive a restart) are wall-clock, clamped so a clock set back never stalls a job."),
    _case(48, "Multiple daemons running (PID file stale)", "info", False,
          "filelock on queue/engine.lock plus a PID file holding pid and start time",
          "A second daemon exits at once with 'already running (pid N, since T)'; a stale PID file, "
          "even one whose pid now belongs to another process, never blocks a start."),
    _case(49, "Zombie processes (defunct but not cleaned)", "info", False,
          "the daemon waits on every worker it starts",
          "Workers are reaped and their exit classified; orphans of a killed daemon are ended at "
          "start."),
    _case(50, "File locks (can't delete/move files)", "warning", True,
          "EBUSY/EPERM on moves and deletes in the queue folders",
          "The job is left in a clear state and the move retried later, never half-moved."),
    # Queue: the engine works from its own copy of every accepted file.
    _case(51, "File deleted mid-queue (race condition)", "info", False,
          "ingest moves or copies each accepted file into queue/jobs/ atomically",
          "Deleting the original after ingest changes nothing; a file that vanishes before ingest is "
          "simply not queued."),
    _case(52, "File moved mid-processing", "info", False,
          "as case 51",
          "The job reads only the engine's copy, so moving the original changes nothing."),
    _case(53, "Duplicate files in queue (same name)", "info", True,
          "content hash (sha256) recorded per job",
          "Same name twice makes two jobs; same content twice makes one, with a notice, unless "
          "forced."),
    _case(54, "Circular symlinks", "warning", True,
          "incoming entries examined with lstat; links resolved only inside the queue root",
          "Symlink loops and links out of the queue folder are rejected with a notice; FIFOs, "
          "sockets and devices are ignored without blocking."),
    _case(55, "Files with special characters (spaces, quotes)", "info", False,
          "none needed: no shell ever sees a file name",
          "Any name works (spaces, quotes, newlines, unicode, a leading dash): argv lists and paths "
          "only."),
    _case(56, "Files with no extension (not .jsonl)", "warning", True,
          "ingest accepts *.jsonl only",
          "Other files are left in place with one notice per file, not one per scan."),
    _case(57, "Empty failed queue (no files to retry)", "info", False,
          "retry --all-failed counts the failed jobs",
          "Answers plainly that there is nothing to retry, exit 0."),
    _case(58, "Queue metadata corrupted", "warning", True,
          "PRAGMA integrity_check when the store opens",
          "The database is moved aside (kept, never deleted) and rebuilt from the queue folders."),
    _case(59, "Priority inversion (low priority starves high)", "info", False,
          "waiting time per job; priorities high, normal, low",
          "Waiting queue.aging_s raises a job's effective priority one level, so every job's wait "
          "is bounded; FIFO within a level. With queue.preempt, a high-priority arrival stops a "
          "running lower-priority job at a checkpoint (requeued uncharged, resumed later)."),
    _case(60, "Infinite retry loop (file keeps failing)", "warning", True,
          "attempts counted durably before each start",
          "Bounded by queue.max_attempts with exponential backoff and jitter; permanent errors are "
          "not retried; then queue/failed/ with a readable report."),
    # Training flow: the memo's own bug class, then the guards on a running job.
    _case(61, "Zero training steps (dataset too small)", "warning", True,
          "total steps computed as ints from examples, batch, accumulation and world size before "
          "TrainingArguments exist",
          "Zero steps is reported as a permanent data error; None never reaches the Trainer. Data "
          "alone cannot get here: a file left with no example stops earlier as case 1 (or 33/3 "
          "when max_length removed them all), the held-out split always keeps one training "
          "example, and step counts round up; epochs = max_steps = 0 is refused by the config "
          "check. 61 is the step plan's own guard."),
    _case(62, "Negative global_step (corrupted state)", "warning", True,
          "the manifest's global step checked when a checkpoint is verified",
          "The checkpoint is quarantined with an alert; resume uses the newest good one."),
    _case(63, "global_step > max_steps (already trained)", "info", True,
          "resume step compared with the job's max steps",
          "The job completes without training, publishing the adapter from that checkpoint, with an "
          "info alert."),
    _case(64, "Loss is NaN (training diverged)", "critical", True,
          "loss and grad norm checked finite every step (logging_nan_inf_filter off)",
          "Stop at once and save nothing; roll back to the last good checkpoint and retry with "
          "learning rate times guards.nan_lr_factor, guards.nan_retries times, then fail as diverged."),
    _case(65, "Loss is inf (numerical overflow)", "critical", True,
          "as case 64",
          "As case 64; tensors are also checked finite before any checkpoint or adapter is "
          "published."),
    _case(66, "Loss doesn't decrease (stuck in plateau)", "warning", True,
          "mean loss per guards.plateau_window steps against the best mean so far: "
          "guards.plateau_patience windows without a guards.plateau_min_delta improvement begin a "
          "plateau, a window twice that far below the best ends it",
          "One standing alert per plateau (key plateau-JOB), settled by an info alert when the loss "
          "improves again; training goes on (early stopping is decided on validation loss, case 67)."),
    _case(67, "Validation loss increases (overfitting)", "warning", True,
          "eval loss at each evaluation, with guards.early_stop_patience",
          "Early stop after the patience runs out; the best checkpoint is published, not the last."),
    _case(68, "Think tag percentage = 100% (model not learning)", "warning", True,
          "share of held-out generations that are only a think tag, at each evaluation",
          "An alert when the share passes guards.think_tag_max_share."),
    _case(69, "Accuracy = 0% (model completely broken)", "warning", True,
          "accuracy on a held-out sample by generation, at each evaluation",
          "An alert when accuracy falls below guards.min_accuracy."),
    _case(70, "Training speed = 0 (hang/freeze)", "critical", True,
          "heartbeat age (monotonic) against max(guards.hang_floor_s, guards.hang_multiple x recent "
          "step time), with a first-step grace",
          "The watchdog dumps the worker's Python stacks to the job log, sends SIGTERM then SIGKILL, "
          "and the job resumes from its last good checkpoint."),
    # Code: ruff and mypy keep these out; a worker that still dies of one is a reported bug.
    _case(71, "UnboundLocalError (variable used before defined)", "critical", True,
          "ruff F821 and mypy used-before-def / possibly-undefined in make test and CI",
          "The build fails before it ships; a worker dying of it anyway is reported as a bug with "
          "its traceback, not retried, and the daemon goes on."),
    _case(72, "NameError (variable doesn't exist)", "critical", True,
          "ruff F821 (undefined name) and mypy name-defined",
          "The build fails before it ships; at run time, as case 71."),
    _case(73, "AttributeError (object has no attribute)", "critical", True,
          "mypy attr-defined (strict on the torch-free engine)",
          "The build fails before it ships; at run time, as case 71."),
    _case(74, "KeyError (dictionary key missing)", "critical", True,
          "mypy typeddict-item on typed dicts; config is typed dataclasses, not dicts",
          "External JSON (trainer state, reports) is read with defaults and checks; a KeyError "
          "anyway is a reported bug, as case 71."),
    _case(75, "IndexError (list index out of range)", "critical", True,
          "mypy on fixed-size tuples; empty data is caught before training (cases 1, 61)",
          "A reported bug with its traceback, not retried, as case 71."),
    _case(76, "TypeError (wrong type for operation)", "critical", True,
          "mypy operator (e.g. None > 0); every config field has a default, so none is None",
          "epochs and max_steps never reach training code as None; at run time, as case 71."),
    _case(77, "ValueError (value out of acceptable range)", "critical", True,
          "config ranges validated at load; a data integer too long to convert is found per line; no "
          "static tool catches the rest",
          "Out-of-range settings are config errors and such a data line an invalid record; a "
          "ValueError from our code is a reported bug, as case 71."),
    _case(78, "ZeroDivisionError (divide by zero)", "critical", True,
          "divisors come from validated config (batch_size, gradient_accumulation >= 1)",
          "A ZeroDivisionError anyway is a reported bug, as case 71."),
    _case(79, "RecursionError (infinite recursion)", "warning", True,
          "JSON nesting depth bounded by the parser",
          "A record nested deep enough to recurse is an invalid record with its own reason, never "
          "an exception out of the validator; elsewhere, as case 71."),
    _case(80, "MemoryError (Python out of memory)", "warning", True,
          "line size capped by data.max_line_bytes; MemoryError caught at the worker's top",
          "A line past the cap is skipped as invalid, read in bounded memory; a MemoryError in a "
          "worker is classified as OOM and walks the OOM ladder (case 23)."),
)

CASES: Final[dict[int, Case]] = {case.number: case for case in _ALL}
NUMBERS: Final = range(1, 81)


def check_edge_args(args: Sequence[object], kwargs: dict[str, object]) -> str | None:
    """Why ``pytest.mark.edge(*args, **kwargs)`` is malformed, or None when it is fine."""
    if kwargs:
        return f"edge() takes case numbers only, not keywords {sorted(kwargs)}"
    if not args:
        return "edge() needs at least one case number"
    for arg in args:
        # bool is an int subclass; edge(True) is a typo, not case 1.
        if isinstance(arg, bool) or not isinstance(arg, int) or arg not in CASES:
            return f"edge() case numbers are ints in 1..80, got {arg!r}"
    return None


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render_markdown() -> str:
    """docs/edge-cases.md. Depends on the catalogue only, so adding a test never makes it stale."""
    lines = [
        "# The 80 edge cases",
        "",
        "<!-- Generated from engine/catalog.py by `make docs`; edit the catalogue, not this file. -->",
        "",
        "The numbered failure cases of the original memo (its \"comprehensive edge cases\" list), "
        "each with how trainconsole detects it and the behaviour we chose. Severity is the default "
        "for alerts carrying the case's number; where the outcome differs, the alert says so (a "
        "job that will be retried is a warning, the same job out of attempts is critical). "
        "`guards.alert_min_severity` decides which alerts also run `guards.alert_command`. "
        "Alert \"no\" means the case is answered on the command line or in a validation report "
        "instead.",
        "",
        "Tests covering a case are marked `@pytest.mark.edge(N)`; `make edge-report` lists them, "
        "and the cases still without one.",
        "",
        "| # | Case | Category | Severity | Alert | Detection | What we do |",
        "| ---: | --- | --- | --- | --- | --- | --- |",
    ]
    for case in CASES.values():
        cells = [str(case.number), case.title, case.category, case.severity,
                 "yes" if case.alert else "no", case.detection, case.behaviour]
        lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    return "\n".join(lines) + "\n"
