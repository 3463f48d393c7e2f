"""``trainconsole train FILE``: one guarded job in the foreground, outside the queue.

For an operator debugging a file, and for tests that come before the daemon. The job runs in a
real worker process started by the engine's launcher (``trainconsole.engine.daemon.launcher``),
exactly as the daemon starts one: the configured devices, torchrun for several, the allocator
setting. This command only writes its spec, follows its events with a progress bar, and reads its
report. It never imports torch. Ctrl-C asks the worker to checkpoint and stop (a second Ctrl-C
kills it).
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import sys
import time
from pathlib import Path
from typing import Any, TextIO

from trainconsole.console.commands.validate import check_data_path
from trainconsole.console.common import load_layout
from trainconsole.engine.config import Config
from trainconsole.engine.daemon.launcher import WorkerProcess, device_plan, start_worker
from trainconsole.engine.errors import ConfigError, TrainconsoleError, UsageError
from trainconsole.engine.events import EventTail
from trainconsole.engine.lock import RunFolderBusy, lock_run_folder
from trainconsole.engine.procid import my_identity
from trainconsole.engine.runfiles import JobSpec, Report, RunFileError, RunFolder

JOB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


def build(parser: argparse.ArgumentParser, name: str) -> None:
    parser.add_argument("file", metavar="FILE", help="a chat-format .jsonl file")
    parser.add_argument("--job-id", default=None,
                        help="name of the run folder under paths.runs (default: fg-<time>); reuse one to resume")


def _bar(done: int, total: int, width: int = 28) -> str:
    filled = int(width * done / total) if total else 0
    return "[" + "#" * filled + "." * (width - filled) + "]"


class Progress:
    """A one-line bar on a terminal; plain lines (every tenth of the run) otherwise."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.tty = out.isatty()
        self.last_tenth = -1
        self.open_line = False

    def step(self, event: dict[str, Any]) -> None:
        step, total = int(event.get("step") or 0), int(event.get("max_steps") or 0)
        loss = event.get("loss")
        text = f"step {step}/{total} loss {loss} lr {event.get('lr', 0):.2e} {event.get('tokens_per_s', 0)} tok/s"
        if self.tty:
            self._write(f"\r{_bar(step, total)} {text}\x1b[K")
            self.open_line = True
        else:
            tenth = 10 * step // total if total else step
            if tenth == self.last_tenth:
                return
            self.last_tenth = tenth
            self._write(text + "\n")

    def line(self, text: str) -> None:
        if self.open_line:
            self._write("\n")
            self.open_line = False
        self._write(text + "\n")

    def _write(self, text: str) -> None:
        try:
            self.out.write(text)
            self.out.flush()
        except OSError:  # the terminal hung up: keep following the worker to its end, silently
            self.out = open(os.devnull, "w")  # noqa: SIM115
            self.tty = False


def _show(events: list[dict[str, Any]], progress: Progress) -> None:
    for event in events:
        kind = event["type"]
        if kind == "step":
            progress.step(event)
        elif kind == "eval":
            extra = "".join(f", {k} {event[k]:.2f}" for k in ("accuracy", "think_share") if k in event)
            progress.line(f"eval at step {event['step']}: loss {event['eval_loss']:.4f}{extra}")
        elif kind == "alert":
            case = f"case {event['case']}" if event.get("case") else "alert"
            progress.line(f"{event['severity']} ({case}): {event['message']}")
        elif kind == "log":
            progress.line(event["message"])


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _lock_run(run_dir: Path) -> int:
    try:
        return lock_run_folder(run_dir)
    except RunFolderBusy as exc:
        raise TrainconsoleError(f"{exc.message}; wait for it to finish, or choose another --job-id") from None


def _start(cfg: Config, spec: JobSpec, lock_fd: int, progress: Progress) -> WorkerProcess:
    """Through the launcher, as the engine starts its workers: the configured devices, torchrun
    for several, the allocator setting. The worker inherits the run folder's lock, so it stays
    held for as long as the worker lives, even if this process is killed."""
    from trainconsole.engine.sysmon import Sysmon

    plan = device_plan(cfg.hardware, Sysmon().sample())
    if plan.hold:
        raise ConfigError(f"cannot start the worker: {plan.hold}", case=plan.case)
    if plan.warning:
        progress.line(f"warning (case {plan.case}): {plan.warning}")
    _, worker = start_worker(spec, plan, job_name=spec.data_file.name, keep_fds=(lock_fd,))
    return worker


def run(args: argparse.Namespace) -> int:
    cfg, layout = load_layout(args)
    data = Path(args.file).expanduser()
    why = check_data_path(str(data))
    if why:
        raise UsageError(why)
    if args.job_id and not JOB_ID.fullmatch(args.job_id):
        # The id names folders under paths.runs and paths.adapters: "../x" or "a/b" would escape them.
        raise UsageError(f"--job-id {args.job_id!r}: use letters, digits, '.', '_' or '-' "
                         "(up to 64, starting with a letter or digit)")
    job_id = args.job_id or time.strftime("fg-%Y%m%d-%H%M%S")
    folder = layout.run_folder(job_id)
    try:
        folder.path.mkdir(parents=True, exist_ok=True)
        lock_fd = _lock_run(folder.path)
        spec = JobSpec(job_id=job_id, data_file=data.resolve(), config=cfg.source, run_dir=folder.path,
                       adapters_dir=layout.adapters, launched_by="train", launcher_pid=os.getpid(),
                       launcher_identity=my_identity())
        spec.write()
        folder.report.unlink(missing_ok=True)
    except OSError as exc:
        raise ConfigError(f"{folder.path}: cannot prepare the run folder ({exc.strerror or exc}); check "
                          f"the permissions and free space of paths.runs ({layout.runs})") from None
    progress = Progress(sys.stderr)
    progress.line(f"training {data} as {job_id} (log: {folder.worker_log})")
    tail = EventTail(folder.events, folder.events.stat().st_size if folder.events.exists() else 0)
    # A closed terminal (SIGHUP) or a plain kill stops the worker the way Ctrl-C does, rather than
    # leaving it to run on unwatched.
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _interrupt)
    try:
        worker = _start(cfg, spec, lock_fd, progress)
    finally:
        os.close(lock_fd)
    interrupts = 0
    while True:
        try:
            while worker.poll() is None:
                _show(tail.read_new(), progress)
                time.sleep(0.2)
            break
        except KeyboardInterrupt:
            interrupts += 1
            if interrupts == 1:
                progress.line("stopping: the worker checkpoints at the next step (Ctrl-C again to kill it)")
                worker.signal_group(signal.SIGTERM)
            else:
                worker.signal_group(signal.SIGKILL)
    _show(tail.read_new(), progress)
    return _verdict(worker.poll(), folder, job_id, progress)


def _verdict(code: int | None, folder: RunFolder, job_id: str, progress: Progress) -> int:
    try:
        report = Report.read(folder.report)
    except RunFileError as exc:
        progress.line(f"the worker ended with exit code {code} and no usable report ({exc.message}); "
                      f"see {folder.worker_log}")
        return 1
    if report.status == "done":
        progress.line(f"done at step {report.global_step}: adapter {report.adapter}")
        return 0
    if report.status == "interrupted":
        progress.line(f"stopped at step {report.global_step} after a checkpoint; run again with "
                      f"--job-id {job_id} to resume")
        return 1
    case = f", case {report.case}" if report.case else ""
    progress.line(f"failed ({report.error_class}{case}): {report.message}")
    if report.traceback and report.error_class == "bug":
        progress.line(f"traceback in {folder.report}")
    return 1
