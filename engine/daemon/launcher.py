"""The launcher seam: how a worker process is started (``start_worker``), and nothing else.

Supervision, retries and the watchdog see only a ``WorkerProcess`` (pid, start time, poll, signal
its group), so a cluster launcher (Slurm's ``srun``) can be added here later without touching them.
Two launchers today: one local process, and ``torch.distributed.run`` (torchrun) for several
devices (DDP through the HF Trainer; on CPU the gloo backend, which is how tests cover it).

Every worker starts in its own session (its own process group: a signal to the group reaches
torchrun's children too), inheriting only the run folder's lock (``trainconsole.engine.lock.lock_run_folder``,
held for the worker's life so a `trainconsole train` of the same job id is refused; the engine lock
stays ours), and
``PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True`` against fragmentation (case 29).
"""

from __future__ import annotations

import fnmatch
import os
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Protocol

import psutil

from trainconsole.engine.config.schema import HardwareConfig
from trainconsole.engine.procid import identity
from trainconsole.engine.runfiles import JobSpec
from trainconsole.engine.signals import STACKS_SIGNAL
from trainconsole.engine.sysmon import Sample

WORKER_MODULE = "trainconsole.engine.train.worker"
ALLOC_CONF = "expandable_segments:True"
# Tests force several CPU processes (the torchrun path) on a machine without GPUs.
NPROC_ENV = "TRAINCONSOLE_NPROC"
# Fault injection is for tests only: with TRAINCONSOLE_FAULT_JOBS="GLOB", only jobs whose file name
# matches get TRAINCONSOLE_FAULT, so poison jobs can sit among healthy ones; "GLOB=FAULT;GLOB=FAULT"
# gives each group its own fault.
FAULT_ENV = "TRAINCONSOLE_FAULT"
FAULT_JOBS_ENV = "TRAINCONSOLE_FAULT_JOBS"


@dataclass(frozen=True)
class DevicePlan:
    device: str  # "cuda" or "cpu"
    nproc: int
    visible: str | None  # CUDA_VISIBLE_DEVICES, None = leave as is
    hold: str | None = None  # why no worker may start, and what to do (the engine holds its queue)
    warning: str | None = None
    case: int | None = None


def plan_devices(device: str, gpus: str | list[int], gpu_state: str, gpu_indices: list[int],
                 env: Mapping[str, str] | None = None) -> DevicePlan:
    """Which devices the next worker gets (cases 26, 27)."""
    env = os.environ if env is None else env
    forced = env.get(NPROC_ENV, "").strip()
    cpu_nproc = int(forced) if forced.isdigit() and int(forced) > 0 else 1
    if device == "cpu":
        return DevicePlan("cpu", cpu_nproc, "")
    if not gpu_indices:
        why = {"no_nvml": "the NVIDIA driver library (NVML) is not available",
               "no_gpu": "no GPU was found", "error": "GPU detection failed"}.get(gpu_state, "no GPU was found")
        if device == "cuda":
            return DevicePlan("cuda", 0, None, hold=(
                f'hardware.device is "cuda" but {why}; wait for a GPU to come back, or set '
                f'hardware.device to "auto" or "cpu"'), case=26)
        return DevicePlan("cpu", cpu_nproc, "", warning=f"{why}: training on the CPU (slow)", case=26)
    if isinstance(gpus, str):
        chosen = list(gpu_indices)
    else:
        missing = [i for i in gpus if i not in gpu_indices]
        if missing:
            return DevicePlan("cuda", 0, None, hold=(
                f"hardware.gpus asks for GPU {missing} but this machine has {gpu_indices}; "
                "name GPUs that exist"), case=27)
        chosen = list(dict.fromkeys(gpus))
    return DevicePlan("cuda", len(chosen), ",".join(str(i) for i in chosen))


def worker_env(plan: DevicePlan, job_name: str, base: Mapping[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ if base is None else base)
    current = env.get("PYTORCH_CUDA_ALLOC_CONF", "")
    if "expandable_segments" not in current:
        env["PYTORCH_CUDA_ALLOC_CONF"] = f"{current},{ALLOC_CONF}" if current else ALLOC_CONF
    if plan.visible is not None:
        env["CUDA_VISIBLE_DEVICES"] = plan.visible
    env["PYTHONUNBUFFERED"] = "1"
    only = env.pop(FAULT_JOBS_ENV, None)
    if only is not None:
        fault = env.pop(FAULT_ENV, None)
        for item in only.split(";"):
            glob, _, own = item.partition("=")
            if glob and fnmatch.fnmatchcase(job_name, glob) and (own or fault):
                env[FAULT_ENV] = own or str(fault)
                break
    return env


def catches_signal(pid: int, sig: int) -> bool:
    """Whether a process installed a handler for ``sig`` (SigCgt in /proc): the stacks signal would
    kill a worker that did not register its stack dumper, losing the very stacks we want."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("SigCgt:"):
                return bool(int(line.split()[1], 16) & (1 << (sig - 1)))
    except (OSError, ValueError, IndexError):
        pass
    return False


class WorkerProcess:
    """A started worker (or torchrun and its workers), always in its own process group."""

    def __init__(self, popen: subprocess.Popen[bytes], log_path: Path) -> None:
        self.popen = popen
        self.pid = popen.pid
        self.log_path = log_path
        self.launched_mono = time.monotonic()
        # None when it already died: nothing is recorded that a later process could match.
        self.pid_start: str | None = identity(self.pid)

    def poll(self) -> int | None:
        """The exit status once it ended (reaped: no zombie, case 49), else None."""
        return self.popen.poll()

    def wait(self, timeout: float) -> int | None:
        try:
            return self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def signal_group(self, sig: int) -> None:
        try:
            os.killpg(self.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass

    def worker_pids(self) -> list[int]:
        """The processes running the worker module (the process itself, or torchrun's ranks)."""
        try:
            root = psutil.Process(self.pid)
            procs = [root, *root.children(recursive=True)]
        except psutil.Error:
            return []
        pids = []
        for proc in procs:
            try:
                cmd = proc.cmdline()
            except psutil.Error:
                continue
            if "torch.distributed.run" in cmd:
                continue
            if proc is root or WORKER_MODULE in cmd:  # torchrun's ranks, not helper children
                pids.append(proc.pid)
        return pids

    def request_stacks(self) -> int:
        """Ask each worker to dump its Python stacks (faulthandler on ``STACKS_SIGNAL``). Returns
        how many were asked; only processes that catch the signal are sent it."""
        asked = 0
        for pid in self.worker_pids():
            if catches_signal(pid, STACKS_SIGNAL):
                try:
                    os.kill(pid, STACKS_SIGNAL)
                    asked += 1
                except ProcessLookupError:
                    pass
        return asked


class Launcher(Protocol):
    name: str

    def command(self, spec: Path) -> list[str]: ...

    def launch(self, spec: Path, env: Mapping[str, str], log_path: Path, *,
               keep_fds: tuple[int, ...] = ()) -> WorkerProcess: ...


class LocalLauncher:
    """One worker process on this machine."""

    name = "local"

    def command(self, spec: Path) -> list[str]:
        return [sys.executable, "-m", WORKER_MODULE, str(spec)]

    def launch(self, spec: Path, env: Mapping[str, str], log_path: Path, *,
               keep_fds: tuple[int, ...] = ()) -> WorkerProcess:
        """``keep_fds``: descriptors the worker inherits (the run folder's lock), nothing else."""
        log_path.parent.mkdir(parents=True, exist_ok=True)
        log: IO[bytes]
        with open(log_path, "ab") as log:
            popen = subprocess.Popen(
                self.command(spec), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                env=dict(env), start_new_session=True, close_fds=True, pass_fds=keep_fds,
            )
        return WorkerProcess(popen, log_path)


class TorchrunLauncher(LocalLauncher):
    """Several processes on this machine under torchrun (one per device)."""

    name = "torchrun"

    def __init__(self, nproc: int) -> None:
        self.nproc = nproc

    def command(self, spec: Path) -> list[str]:
        return [sys.executable, "-m", "torch.distributed.run", "--standalone",
                f"--nproc_per_node={self.nproc}", "-m", WORKER_MODULE, str(spec)]


def launcher_for(plan: DevicePlan) -> Launcher:
    return TorchrunLauncher(plan.nproc) if plan.nproc > 1 else LocalLauncher()


def device_plan(hardware: HardwareConfig, sample: Sample | None) -> DevicePlan:
    """The devices for the next worker, from ``hardware.device``/``hardware.gpus`` and what a
    resource sample saw (no sample yet: as if no GPU were found)."""
    state = sample.gpu_state if sample is not None else "no_nvml"
    indices = [g.index for g in sample.gpus] if sample is not None and state == "ok" else []
    return plan_devices(hardware.device, hardware.gpus, state, indices)


def start_worker(spec: JobSpec, plan: DevicePlan, *, job_name: str, keep_fds: tuple[int, ...] = (),
                 factory: Callable[[DevicePlan], Launcher] = launcher_for) -> tuple[Launcher, WorkerProcess]:
    """The one way a worker starts, for the engine and for `trainconsole train` alike: on the
    planned devices, under torchrun for several processes, with the allocator setting (case 29),
    its output in the run folder's worker log. ``job_name`` selects test-only fault injection."""
    launcher = factory(plan)
    worker = launcher.launch(spec.folder.spec, worker_env(plan, job_name), spec.folder.worker_log,
                             keep_fds=keep_fds)
    return launcher, worker
