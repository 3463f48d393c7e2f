"""The run folder (``runs/<job>/``): the files that cross the wall between whoever launches a worker
(the engine, or ``trainconsole train``) and the worker, named here and only here, and typed.

    spec.json        JobSpec    written before the worker starts; the worker's only argument
    heartbeat.json   Heartbeat  rewritten by the worker each step (atomic, not fsynced); the watchdog's
    report.json      Report     written by the worker last; read by the engine, `train`, the console
    events.jsonl     the job's event log (``trainconsole.engine.events``)
    worker.log       the worker's stdout and stderr
    stacks.txt       Python stacks dumped on SIGUSR1 (``stacks-rank<N>.txt`` for the other ranks)
    checkpoints/     ``trainconsole.engine.checkpoints``
    trainer/         the HF Trainer's own output folder (nothing of ours is read from it)
    train.lock       the run folder's lock (``trainconsole.engine.lock.lock_run_folder``)
    slurm-job.sh     the batch script of a job submitted to Slurm (``engine/daemon/slurm``)

Every JSON file carries ``"schema": 1`` (a heartbeat without one is read as schema 1). ``read``
raises ``RunFileError``, one line naming the file and what is wrong with it, for a file that is
unreadable, not JSON, not an object, of another schema, or lacking a field; readers that must
never raise (the daemon judging an ended worker, the console) use ``read_report`` and
``read_heartbeat``, which answer None instead. Writes go through ``trainconsole.engine.fsio``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Final, TypeVar

import orjson

from trainconsole.engine import fsio
from trainconsole.engine.errors import ConfigError, ErrorClass

SCHEMA: Final = 1
SPEC: Final = "spec.json"
HEARTBEAT: Final = "heartbeat.json"
REPORT: Final = "report.json"
EVENTS: Final = "events.jsonl"
WORKER_LOG: Final = "worker.log"
STACKS: Final = "stacks.txt"
CHECKPOINTS: Final = "checkpoints"
TRAINER: Final = "trainer"
LOCK: Final = "train.lock"
SLURM_SCRIPT: Final = "slurm-job.sh"
# Room the worker holds from its start and gives back just before the report, so a disk that filled
# during training still takes the report that says so.
REPORT_RESERVE: Final = "report.reserve"
REPORT_RESERVE_BYTES: Final = 256 * 1024
# What one attempt leaves that the next must not mistake for its own.
ATTEMPT_FILES: Final = (REPORT, HEARTBEAT, STACKS)
LAUNCHED_BY: Final = ("engine", "train")
STATUSES: Final = ("done", "interrupted", "failed")


class RunFileError(ConfigError):
    """A run-folder file that cannot be used: unreadable, torn, foreign or incomplete."""


@dataclass(frozen=True)
class RunFolder:
    """The paths of one run folder."""

    path: Path

    @property
    def spec(self) -> Path:
        return self.path / SPEC

    @property
    def heartbeat(self) -> Path:
        return self.path / HEARTBEAT

    @property
    def report(self) -> Path:
        return self.path / REPORT

    @property
    def events(self) -> Path:
        return self.path / EVENTS

    @property
    def worker_log(self) -> Path:
        return self.path / WORKER_LOG

    @property
    def checkpoints(self) -> Path:
        return self.path / CHECKPOINTS

    @property
    def trainer(self) -> Path:
        return self.path / TRAINER

    @property
    def lock(self) -> Path:
        return self.path / LOCK

    @property
    def report_reserve(self) -> Path:
        return self.path / REPORT_RESERVE

    @property
    def slurm_script(self) -> Path:
        return self.path / SLURM_SCRIPT

    def stacks(self, rank: int = 0) -> Path:
        return self.path / (STACKS if rank == 0 else f"stacks-rank{rank}.txt")

    def attempt_files(self) -> list[Path]:
        return [self.path / name for name in ATTEMPT_FILES]


def _load(path: Path, what: str) -> dict[str, Any]:
    try:
        raw = orjson.loads(path.read_bytes())
    except FileNotFoundError:
        raise RunFileError(f"{path}: no {what} (the file is missing)") from None
    except OSError as exc:
        raise RunFileError(f"{path}: unreadable {what} ({exc.strerror or exc})") from None
    except orjson.JSONDecodeError as exc:
        raise RunFileError(f"{path}: unreadable {what} (not JSON: {exc}); a torn or hand-edited file") from None
    if not isinstance(raw, dict):
        raise RunFileError(f"{path}: not a {what} (a JSON {type(raw).__name__}, not an object)")
    schema = raw.get("schema", SCHEMA if what == "heartbeat" else None)
    if schema != SCHEMA:
        raise RunFileError(f"{path}: not a schema-{SCHEMA} {what} (schema {schema!r}: written by another "
                           "version of trainconsole, or another tool)")
    return raw


def _need(raw: dict[str, Any], path: Path, what: str, keys: tuple[str, ...]) -> None:
    missing = [k for k in keys if raw.get(k) in (None, "")]
    if missing:
        raise RunFileError(f"{path}: {what} lacks {', '.join(missing)}")


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


_T = TypeVar("_T")


def _or_none(read: Callable[[Path], _T], path: Path) -> _T | None:
    try:
        return read(path)
    except RunFileError:
        return None


# ---------------------------------------------------------------------------------------------
# spec.json


@dataclass(frozen=True)
class JobSpec:
    """What a worker is to do. ``launched_by`` says whose worker it is: ``"train"`` (an operator's
    foreground run, with that command's pid and process identity, ``trainconsole.engine.procid``,
    so the engine can tell a live one, which it leaves alone, from an orphan) or ``"engine"``."""

    job_id: str
    data_file: Path
    config: Path
    run_dir: Path
    adapters_dir: Path | None = None
    overrides: dict[str, Any] = field(default_factory=dict)
    lineage: str = "main"  # which adapter lineage the job continues and publishes into
    settings: dict[str, Any] = field(default_factory=dict)  # the job's own config overlay, fixed when queued
    start_from: str | None = None  # None: the lineage's newest adapter; "base"; or an adapter's path
    launched_by: str = "engine"
    launcher_pid: int | None = None
    launcher_identity: str | None = None

    what: ClassVar[str] = "job spec"

    @property
    def folder(self) -> RunFolder:
        return RunFolder(self.run_dir)

    def to_json(self) -> dict[str, Any]:
        return {"schema": SCHEMA, "job_id": self.job_id, "data_file": str(self.data_file),
                "config": str(self.config), "run_dir": str(self.run_dir), "overrides": self.overrides,
                "adapters_dir": None if self.adapters_dir is None else str(self.adapters_dir),
                "lineage": self.lineage, "settings": self.settings, "start_from": self.start_from,
                "launched_by": self.launched_by, "launcher_pid": self.launcher_pid,
                "launcher_identity": self.launcher_identity}

    def write(self) -> Path:
        """Written durably into its run folder; returns the path the worker is launched with."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        fsio.write_json(self.folder.spec, self.to_json())
        return self.folder.spec

    @classmethod
    def read(cls, path: Path) -> JobSpec:
        raw = _load(path, cls.what)
        _need(raw, path, cls.what, ("job_id", "data_file", "config", "run_dir"))
        overrides = raw.get("overrides") or {}
        by = raw.get("launched_by", "engine")
        settings = raw.get("settings") or {}
        start_from = raw.get("start_from")
        for key, ok in (("overrides", isinstance(overrides, dict)), ("settings", isinstance(settings, dict)),
                        ("launched_by", by in LAUNCHED_BY),
                        ("start_from", start_from is None or isinstance(start_from, str))):
            if not ok:
                raise RunFileError(f"{path}: {cls.what} has a malformed {key}")
        ident = raw.get("launcher_identity")
        return cls(job_id=str(raw["job_id"]), data_file=Path(raw["data_file"]), config=Path(raw["config"]),
                   run_dir=Path(raw["run_dir"]), overrides=overrides,
                   adapters_dir=Path(raw["adapters_dir"]) if raw.get("adapters_dir") else None,
                   lineage=str(raw.get("lineage") or "main"), settings=settings, start_from=start_from or None,
                   launched_by=by, launcher_pid=_int(raw.get("launcher_pid")),
                   launcher_identity=ident if isinstance(ident, str) else None)


# ---------------------------------------------------------------------------------------------
# heartbeat.json


@dataclass(frozen=True)
class Heartbeat:
    """One beat: the worker's pid, its last step, the monotonic time of that step (CLOCK_MONOTONIC,
    the same clock in every process on one boot) and how long the step took."""

    pid: int | None
    step: int
    mono: float
    step_time_s: float | None = None

    what: ClassVar[str] = "heartbeat"

    def to_bytes(self) -> bytes:
        step_time = None if self.step_time_s is None else round(self.step_time_s, 4)
        return orjson.dumps({"schema": SCHEMA, "pid": self.pid, "step": self.step,
                             "mono": round(self.mono, 3), "step_time_s": step_time})

    def write(self, path: Path) -> None:
        fsio.write_bytes(path, self.to_bytes(), durable=False)  # four times a second: atomic is enough

    @classmethod
    def read(cls, path: Path) -> Heartbeat:
        raw = _load(path, cls.what)
        try:
            step_time = raw.get("step_time_s")
            return cls(pid=int(raw["pid"]) if raw.get("pid") is not None else None,
                       step=int(raw.get("step", 0)), mono=float(raw["mono"]),
                       step_time_s=float(step_time) if isinstance(step_time, int | float) else None)
        except (KeyError, TypeError, ValueError):
            raise RunFileError(f"{path}: {cls.what} lacks a numeric mono, step or pid") from None


def read_heartbeat(path: Path) -> Heartbeat | None:
    """The latest beat, or None when there is none yet or it cannot be read (never raises)."""
    return _or_none(Heartbeat.read, path)


# ---------------------------------------------------------------------------------------------
# report.json


@dataclass(frozen=True)
class Report:
    """How the worker ended, in its own words: ``status`` done, interrupted or failed, and for a
    failure its error class (a value of ``ErrorClass``), the memo case and the traceback."""

    status: str
    error_class: str | None = None
    case: int | None = None
    message: str = ""
    traceback: str | None = None
    global_step: int | None = 0
    max_steps: int | None = 0
    adapter: str | None = None
    stop_signal: str | None = None  # the signal that asked an interrupted worker to stop ("SIGTERM")
    elapsed_s: float | None = None
    alerted: bool = False  # the worker alerted this failure itself as it found it: none more is due

    what: ClassVar[str] = "worker report"

    @property
    def done(self) -> bool:
        return self.status == "done"

    def error(self) -> ErrorClass:
        """The failure's class; an unknown one is ours to fix (a bug)."""
        try:
            return ErrorClass(str(self.error_class))
        except ValueError:
            return ErrorClass.BUG

    def to_json(self) -> dict[str, Any]:
        body = {"schema": SCHEMA, **asdict(self)}
        if self.elapsed_s is None:
            del body["elapsed_s"]
        return body

    def write(self, run_dir: Path) -> None:
        fsio.write_json(RunFolder(run_dir).report, self.to_json())

    @classmethod
    def from_json(cls, raw: dict[str, Any], path: Path | str = REPORT) -> Report:
        """From a decoded report: fields of the wrong type are read as absent, a status outside
        done/interrupted/failed is refused."""
        status = raw.get("status")
        if status not in STATUSES:
            raise RunFileError(f"{path}: {cls.what} has no status (done, interrupted or failed), "
                               f"found {status!r}")
        tb, adapter, elapsed = raw.get("traceback"), raw.get("adapter"), raw.get("elapsed_s")
        stop_signal = raw.get("stop_signal")
        cls_value = raw.get("error_class")
        return cls(status=str(status), error_class=str(cls_value) if cls_value is not None else None,
                   case=_int(raw.get("case")), message=str(raw.get("message") or ""),
                   traceback=tb if isinstance(tb, str) else None,
                   global_step=_int(raw.get("global_step")), max_steps=_int(raw.get("max_steps")),
                   adapter=adapter if isinstance(adapter, str) else None,
                   stop_signal=stop_signal if isinstance(stop_signal, str) else None,
                   elapsed_s=float(elapsed) if isinstance(elapsed, int | float) else None,
                   alerted=raw.get("alerted") is True)

    @classmethod
    def read(cls, path: Path) -> Report:
        return cls.from_json(_load(path, cls.what), path)


def read_report(path: Path) -> Report | None:
    """The worker's report, or None when it is missing, torn, foreign or without a status (the
    exit status then tells how the worker ended). Never raises."""
    return _or_none(Report.read, path)


def write_spec(run_dir: Path, *, job_id: str, data_file: Path, config: Path, adapters_dir: Path | None,
               overrides: dict[str, Any] | None = None) -> Path:
    """Write the spec of an engine-launched job; returns the path a worker is launched with."""
    return JobSpec(job_id=job_id, data_file=data_file, config=config, run_dir=run_dir,
                   adapters_dir=adapters_dir, overrides=dict(overrides or {})).write()
