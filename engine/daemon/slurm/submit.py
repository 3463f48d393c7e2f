"""What is handed to ``sbatch``: an argv list and a small generated batch script.

No shell ever sees text an operator or a file name chose: the options are separate argv items
(``launcher.extra_args`` included), and the script's only variable parts (the run folder, the
Python interpreter, the spec path) are quoted with ``shlex.quote``. The worker command is the
local launcher's own (``LocalLauncher.command`` / ``TorchrunLauncher.command``), so a job runs the
same code wherever it lands.

The script:
- ignores SIGUSR2 in the shell, so a stack request never ends the job by mistake (the worker
  installs its own handler; an exec'd worker that has not yet done so ignores it too);
- one process: ``exec``s the worker, so Slurm's time-limit warning (``--signal=B:USR1@N``, sent to
  the batch shell only) reaches the worker itself;
- several GPUs: runs torchrun in the allocation and turns the warning into SIGTERM for it (torchrun
  passes SIGTERM to every rank; it has no handler for SIGUSR1), then waits for its real status.

Slurm never requeues our jobs itself (``--no-requeue``): after a node failure, a preemption or a
time limit, the daemon decides, resubmitting at once from the last checkpoint, whereas Slurm holds
a requeued job for about two minutes (``BeginTime``) before it may run again.
"""

from __future__ import annotations

import hashlib
import os
import shlex
from collections.abc import Mapping
from pathlib import Path

from trainconsole.engine.config.schema import LauncherConfig
from trainconsole.engine.daemon.launcher import NPROC_ENV, DevicePlan, LocalLauncher, TorchrunLauncher
from trainconsole.engine.signals import TIME_LIMIT_SIGNAL

NAME_PREFIX = "trainconsole"


def queue_tag(queue: Path) -> str:
    """Eight hex digits naming a queue folder: two queues submitting as one user never mistake
    each other's Slurm jobs for their own."""
    return hashlib.sha256(os.fsencode(Path(queue).absolute())).hexdigest()[:8]


def job_name(tag: str, job_id: str) -> str:
    return f"{NAME_PREFIX}-{tag}-{job_id}"


def job_id_from_name(name: str, tag: str) -> str | None:
    """Our job id in a Slurm job name of this queue, else None."""
    head = f"{NAME_PREFIX}-{tag}-"
    if not name.startswith(head) or len(name) == len(head):
        return None
    return name[len(head):]


def slurm_plan(device: str, gpus_per_job: int, env: Mapping[str, str] | None = None) -> DevicePlan:
    """What each Slurm job asks for. The GPUs are the node's, not this machine's, so nothing here
    looks at local devices; Slurm sets CUDA_VISIBLE_DEVICES in the allocation."""
    env = os.environ if env is None else env
    if device == "cpu" or gpus_per_job == 0:
        forced = env.get(NPROC_ENV, "").strip()
        nproc = int(forced) if forced.isdigit() and int(forced) > 0 else 1
        return DevicePlan("cpu", nproc, "")
    return DevicePlan("cuda", gpus_per_job, None)


def worker_command(spec: Path, nproc: int) -> list[str]:
    return TorchrunLauncher(nproc).command(spec) if nproc > 1 else LocalLauncher().command(spec)


def batch_script(command: list[str], run_dir: Path, *, forward: bool) -> str:
    """``forward``: the command is a launcher of several processes (torchrun), run as a child of
    the shell that turns the time-limit warning into SIGTERM for it; else the shell execs it."""
    q = shlex.quote
    argv = " ".join(q(a) for a in command)
    lines = [
        "#!/bin/bash",
        "# Written by trainconsole for one attempt of one job; the quoted paths are its only variable parts.",
        "trap '' USR2",
        f"cd {q(str(run_dir))} || exit 14",
    ]
    if not forward:
        lines.append(f"exec {argv}")
    else:
        lines += [
            f"{argv} &",
            "child=$!",
            "trap 'forwarded=1; kill -TERM \"$child\" 2>/dev/null' USR1 TERM",
            "while :; do forwarded=0; wait \"$child\"; rc=$?; [ \"$forwarded\" = 1 ] || break; done",
            "exit \"$rc\"",
        ]
    return "\n".join(lines) + "\n"


def sbatch_argv(lc: LauncherConfig, plan: DevicePlan, *, name: str, script: Path, run_dir: Path,
                log_path: Path) -> list[str]:
    # --output expands %j, %u...: a literal % in a folder name must be doubled.
    argv = ["sbatch", "--parsable", f"--job-name={name}", f"--output={str(log_path).replace('%', '%%')}",
            "--open-mode=append", f"--chdir={run_dir}", "--no-requeue", "--nodes=1", "--ntasks=1",
            f"--cpus-per-task={lc.cpus_per_job}", "--export=ALL"]
    if lc.warn_before_limit_s:
        argv.append(f"--signal=B:{TIME_LIMIT_SIGNAL}@{lc.warn_before_limit_s}")
    if plan.device == "cuda" and plan.nproc:
        argv.append(f"--gres=gpu:{plan.nproc}")
    for option, value in (("--partition", lc.partition), ("--account", lc.account), ("--qos", lc.qos),
                          ("--mem", lc.mem), ("--time", lc.time_limit)):
        if value:
            argv.append(f"{option}={value}")
    argv += list(lc.extra_args)
    argv.append(str(script))
    return argv
