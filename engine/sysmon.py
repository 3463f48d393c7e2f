"""Resource sampling for the daemon's guards and the console's gauges: GPUs through NVML, RAM
(cgroup-aware), swap activity and free disk.

NVML is initialised once per process and every query is wrapped, so a failing query costs one
field (None), never the sample; a field a device does not support is probed once and remembered,
so an old card does not pay for the same failing call every second. A machine without NVML or
without GPUs is a state ("no_nvml", "no_gpu"), never an exception: the console must start on a
laptop, and the daemon must train on CPU (case 26).

RAM is the smaller of what the host and the process's memory cgroup allow: inside a container
the host's free memory is a lie, and the kernel's OOM killer acts on the cgroup's limit (case 24).

Sampling rates, as nvitop's: device readings are taken at most once a second and the list of
processes on each GPU at most every two seconds, however often ``sample`` is called (a console
polls faster after a key, the daemon asks for disk space at will); device handles are looked up
once per process. Given the pids of a running job, a sample also says what that job uses itself:
its GPU memory on each device (NVML's per-process list, summed over the job's process tree) and
its CPU and RAM (``procmon``), the console's gauge when training runs on CPU.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Final

import psutil

from trainconsole.engine.nvml import MB, GpuSample, NvmlSession, nvml_session, reset_nvml
from trainconsole.engine.procmon import ProcWatch, WorkerUsage

__all__ = ["GPU_STATES", "MB", "GpuSample", "Sample", "Sysmon", "cgroup_memory", "reset_nvml"]

DEVICE_EVERY_S: Final = 1.0
PROCESS_EVERY_S: Final = 2.0
GPU_STATES: Final = ("ok", "no_nvml", "no_gpu", "error")
# cgroup v1 reports "no limit" as a page-rounded huge number; anything above this is unlimited.
_UNLIMITED: Final = 1 << 60


@dataclass(frozen=True)
class Sample:
    ram_total_mb: float
    ram_used_mb: float
    ram_available_mb: float
    swap_used_mb: float
    swap_in_mb_s: float
    disk_free_mb: dict[str, float] = field(default_factory=dict)
    gpus: list[GpuSample] = field(default_factory=list)
    gpu_state: str = "no_nvml"
    mono: float = 0.0  # time.monotonic() when taken
    worker: WorkerUsage | None = None  # the watched job's processes, when pids were given

    def event_fields(self) -> dict[str, Any]:
        """The fields of a ``resource`` event (engine/events.py)."""
        return {
            "ram_used_mb": round(self.ram_used_mb, 1),
            "ram_total_mb": round(self.ram_total_mb, 1),
            "ram_available_mb": round(self.ram_available_mb, 1),
            "swap_used_mb": round(self.swap_used_mb, 1),
            "swap_in_mb_s": round(self.swap_in_mb_s, 2),
            "disk_free_mb": {k: round(v, 1) for k, v in self.disk_free_mb.items()},
            "gpu_state": self.gpu_state,
            "gpus": [vars(g).copy() for g in self.gpus],
        }


# --- RAM and cgroups ----------------------------------------------------------------------------

def _read_int(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except (OSError, ValueError):
        return None
    if text == "max":
        return None
    try:
        return int(text)
    except ValueError:
        return None


def _stat_value(path: Path, key: str) -> int:
    try:
        for line in path.read_text().splitlines():
            name, _, value = line.partition(" ")
            if name == key:
                return int(value)
    except (OSError, ValueError):
        pass
    return 0


def _own_cgroup_paths(proc_cgroup: Path) -> tuple[str | None, str | None]:
    """This process's cgroup path for v2 (``0::``) and for v1's memory controller."""
    v2 = v1 = None
    try:
        lines = proc_cgroup.read_text().splitlines()
    except OSError:
        return None, None
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        if parts[0] == "0" and parts[1] == "":
            v2 = parts[2]
        elif "memory" in parts[1].split(","):
            v1 = parts[2]
    return v2, v1


def cgroup_memory(root: Path = Path("/sys/fs/cgroup"),
                  proc_cgroup: Path = Path("/proc/self/cgroup")) -> tuple[int, int] | None:
    """(limit, used) in bytes of the memory cgroup this process lives in, or None when unlimited
    or unreadable. Used excludes inactive page cache, which the kernel reclaims before it kills."""
    v2_path, v1_path = _own_cgroup_paths(proc_cgroup)
    candidates: list[tuple[Path, str, str, str]] = []
    # Inside a container the namespace root is our own cgroup, and /proc shows a host path that
    # does not exist here; so our own path first, then the root.
    for rel in (v2_path, "/"):
        if rel is not None:
            candidates.append((root / rel.lstrip("/"), "memory.max", "memory.current", "inactive_file"))
    for rel in (v1_path, "/"):
        if rel is not None:
            base = root / "memory" / rel.lstrip("/")
            candidates.append((base, "memory.limit_in_bytes", "memory.usage_in_bytes", "total_inactive_file"))
    for base, limit_name, usage_name, inactive_key in candidates:
        if not (base / usage_name).exists():
            continue
        limit = _read_int(base / limit_name)
        usage = _read_int(base / usage_name)
        if limit is None or usage is None or limit >= _UNLIMITED:
            return None
        inactive = _stat_value(base / "memory.stat", inactive_key)
        return limit, max(0, usage - inactive)
    return None


# --- the sampler --------------------------------------------------------------------------------

class Sysmon:
    """Takes resource samples. Cheap to create; NVML is shared per process."""

    def __init__(self, gpus: Sequence[int] | None = None, *,
                 cgroup_root: Path = Path("/sys/fs/cgroup"),
                 proc_cgroup: Path = Path("/proc/self/cgroup"),
                 clock: Callable[[], float] = time.monotonic, host_every_s: float = 0.0) -> None:
        """``host_every_s``: read RAM, swap and disk space at most this often (a console's gauges);
        0, at every sample (the daemon's guards)."""
        self.gpu_indices = list(gpus) if gpus is not None else None
        self.cgroup_root = cgroup_root
        self.proc_cgroup = proc_cgroup
        self.clock = clock
        self._nvml_held: NvmlSession | None = None  # started at first use: nvmlInit can take a while
        self._last_sin: tuple[float, int] | None = None
        self._devices: tuple[float, str, list[GpuSample]] | None = None
        self._procs: tuple[float, dict[int, dict[int, float | None]]] | None = None
        self.workers = ProcWatch(PROCESS_EVERY_S, clock)
        self.host_every_s = host_every_s
        self._host: tuple[float, tuple[str, ...], tuple[Any, ...]] | None = None

    @property
    def _nvml(self) -> NvmlSession:
        if self._nvml_held is None:
            self._nvml_held = nvml_session()
        return self._nvml_held

    @property
    def gpu_detail(self) -> str:
        """Why there is no GPU data, for doctor and the console's panel."""
        return self._nvml.detail

    def ram(self) -> tuple[float, float, float]:
        """(total, used, available) in MB: the tighter of host and cgroup."""
        vm = psutil.virtual_memory()
        total, available = float(vm.total), float(vm.available)
        cg = cgroup_memory(self.cgroup_root, self.proc_cgroup)
        if cg is not None:
            limit, used = cg
            total = min(total, float(limit))
            available = min(available, float(max(0, limit - used)))
        available = min(available, total)
        return total / MB, (total - available) / MB, available / MB

    def swap(self) -> tuple[float, float]:
        """(used MB, swap-in MB/s since the previous call; 0 on the first)."""
        try:
            sw = psutil.swap_memory()
        except (OSError, RuntimeError):
            return 0.0, 0.0
        now = time.monotonic()
        rate = 0.0
        if self._last_sin is not None:
            then, before = self._last_sin
            dt = now - then
            if dt > 0 and sw.sin >= before:
                rate = (sw.sin - before) / MB / dt
        self._last_sin = (now, int(sw.sin))
        return float(sw.used) / MB, rate

    @staticmethod
    def disk_free(paths: Iterable[Path | str]) -> dict[str, float]:
        """Free MB for each path, measured at its nearest existing ancestor (a queue folder not
        made yet lives on its parent's filesystem). A path that cannot be read is left out."""
        out: dict[str, float] = {}
        for given in paths:
            probe = Path(given)
            while not probe.exists() and probe != probe.parent:
                probe = probe.parent
            try:
                out[str(given)] = shutil.disk_usage(probe).free / MB
            except OSError:
                continue
        return out

    def gpus(self) -> tuple[str, list[GpuSample]]:
        """The devices' readings, taken at most once per ``DEVICE_EVERY_S``."""
        now = self.clock()
        if self._devices is None or now - self._devices[0] >= DEVICE_EVERY_S:
            state, gpus = self._nvml.sample(self.gpu_indices)
            self._devices = (now, state, gpus)
        return self._devices[1], self._devices[2]

    def process_table(self) -> dict[int, dict[int, float | None]]:
        """NVML's compute processes per device, {index: {pid: MB or None}}, listed at most once
        per ``PROCESS_EVERY_S``."""
        now = self.clock()
        if self._procs is None or now - self._procs[0] >= PROCESS_EVERY_S:
            self._procs = (now, self._nvml.processes(self.gpu_indices))
        return self._procs[1]

    def gpu_processes(self) -> list[tuple[int, int, float | None]]:
        """(GPU index, pid, GPU memory MB or None) of every compute process NVML reports, as
        nvitop shows them; [] without NVML. A failing query costs that device's rows only."""
        return [(index, pid, mb) for index, procs in self.process_table().items() for pid, mb in procs.items()]

    def sample(self, paths: Iterable[Path | str] = (), pids: Sequence[int] = ()) -> Sample:
        """``pids``: a running job's processes (their children are found here), whose own use
        the sample then carries (``worker`` and each GPU's ``job_mem_mb``)."""
        wanted = tuple(str(p) for p in paths)
        now = self.clock()
        if self._host is None or self._host[1] != wanted or now - self._host[0] >= self.host_every_s:
            self._host = (now, wanted, (*self.ram(), *self.swap(), self.disk_free(wanted)))
        total, used, available, swap_used, swap_in, disk = self._host[2]
        state, gpus = self.gpus()
        worker = self.workers.usage(pids)
        if worker is not None and state == "ok":
            per_gpu = self.process_table()
            tree = set(worker.pids)
            marked = []
            for gpu in gpus:
                listed = per_gpu.get(gpu.index)
                mine = [mb for pid, mb in (listed or {}).items() if pid in tree]
                # Not listed, or NVML cannot tell a process's memory (some containers): unknown.
                known = listed is not None and all(mb is not None for mb in mine)
                marked.append(replace(gpu, job_mem_mb=sum(mb or 0.0 for mb in mine) if known else None))
            gpus = marked
        return Sample(
            ram_total_mb=total,
            ram_used_mb=used,
            ram_available_mb=available,
            swap_used_mb=swap_used,
            swap_in_mb_s=swap_in,
            disk_free_mb=dict(disk),
            gpus=gpus,
            gpu_state=state,
            mono=time.monotonic(),
            worker=worker,
        )


def _main() -> int:
    """``python -m trainconsole.engine.sysmon``: one sample, for a quick look at what the engine sees."""
    import json

    mon = Sysmon()
    time.sleep(0.2)
    sample = mon.sample([os.getcwd()])
    print(json.dumps(sample.event_fields(), indent=2))
    if mon.gpu_detail:
        print(mon.gpu_detail)
    return 0


if __name__ == "__main__":
    raise SystemExit(_main())
