"""engine/sysmon.py: NVML states and per-field failures, cgroup-aware RAM, swap-in rate, disk.

NVML cannot exist on this machine (no GPU, no driver), so the GPU tests fake it at the pynvml
boundary: the module's functions are replaced and raise the real ``pynvml.NVMLError`` subclasses
the library raises. RAM limits come from a fake cgroup folder tree (the real one is the host's).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections import namedtuple
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pynvml
import pytest

from trainconsole.engine import sysmon
from trainconsole.engine.sysmon import Sysmon, cgroup_memory

MB = 1024 * 1024


@pytest.fixture(autouse=True)
def fresh_nvml() -> Iterator[None]:
    sysmon.reset_nvml()
    yield
    sysmon.reset_nvml()


class FakeNvml:
    """Two devices; device 1 has no temperature sensor and cannot list its processes; power fails
    transiently on device 0, whose process list is ``procs`` (pid -> bytes, None: not known)."""

    def __init__(self, count: int = 2) -> None:
        self.count = count
        self.calls: dict[str, int] = {}
        self.power_fails = True
        self.procs: dict[int, int | None] = {}

    def install(self, mp: pytest.MonkeyPatch) -> None:
        for name in ("nvmlInit", "nvmlDeviceGetCount", "nvmlDeviceGetHandleByIndex", "nvmlDeviceGetName",
                     "nvmlDeviceGetUtilizationRates", "nvmlDeviceGetMemoryInfo",
                     "nvmlDeviceGetTemperature", "nvmlDeviceGetPowerUsage",
                     "nvmlDeviceGetComputeRunningProcesses"):
            mp.setattr(pynvml, name, getattr(self, name))

    def _count(self, name: str) -> None:
        self.calls[name] = self.calls.get(name, 0) + 1

    def nvmlInit(self) -> None:
        self._count("init")

    def nvmlDeviceGetCount(self) -> int:
        return self.count

    def nvmlDeviceGetHandleByIndex(self, i: int) -> Any:
        return ("handle", i)

    def nvmlDeviceGetName(self, h: Any) -> str:
        return f"Fake GPU {h[1]}"

    def nvmlDeviceGetUtilizationRates(self, h: Any) -> Any:
        self._count("util")
        return SimpleNamespace(gpu=40 + h[1], memory=10)

    def nvmlDeviceGetComputeRunningProcesses(self, h: Any) -> list[Any]:
        self._count(f"procs{h[1]}")
        if h[1] == 1:
            raise pynvml.NVMLError_NotSupported()
        # As pynvml builds them: usedGpuMemory None when NVML_VALUE_NOT_AVAILABLE.
        return [SimpleNamespace(pid=pid, usedGpuMemory=used, gpuInstanceId=0xFFFFFFFF,
                                computeInstanceId=0xFFFFFFFF) for pid, used in self.procs.items()]

    def nvmlDeviceGetMemoryInfo(self, h: Any) -> Any:
        return SimpleNamespace(used=1024 * MB, total=16384 * MB, free=15360 * MB)

    def nvmlDeviceGetTemperature(self, h: Any, sensor: int) -> int:
        self._count(f"temp{h[1]}")
        if h[1] == 1:
            raise pynvml.NVMLError_NotSupported()
        return 61

    def nvmlDeviceGetPowerUsage(self, h: Any) -> int:
        if h[1] == 0 and self.power_fails:
            raise pynvml.NVMLError_GpuIsLost()
        return 150_000


@pytest.mark.edge(26)
def test_no_nvml_library_is_a_state_not_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    def missing() -> None:
        raise pynvml.NVMLError_LibraryNotFound()

    monkeypatch.setattr(pynvml, "nvmlInit", missing)
    sample = Sysmon().sample()
    assert sample.gpu_state == "no_nvml"
    assert sample.gpus == []
    assert sample.ram_total_mb > 0


@pytest.mark.edge(26)
def test_driver_not_loaded_is_no_nvml_and_other_init_errors_are_error(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_driver() -> None:
        raise pynvml.NVMLError_DriverNotLoaded()

    monkeypatch.setattr(pynvml, "nvmlInit", no_driver)
    assert Sysmon().sample().gpu_state == "no_nvml"

    sysmon.reset_nvml()

    def mismatch() -> None:
        raise pynvml.NVMLError_LibRmVersionMismatch()

    monkeypatch.setattr(pynvml, "nvmlInit", mismatch)
    mon = Sysmon()
    assert mon.sample().gpu_state == "error"
    assert "NVML" in mon.gpu_detail


@pytest.mark.edge(26)
def test_zero_devices_is_no_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    FakeNvml(count=0).install(monkeypatch)
    assert Sysmon().sample().gpu_state == "no_gpu"


@pytest.mark.edge(27)
def test_each_failing_query_costs_one_field_and_unsupported_is_probed_once(
        monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeNvml()
    fake.install(monkeypatch)
    mon = Sysmon(clock=Ticks(1.0))  # a second between samples: each one reads the devices
    first = mon.sample()
    assert first.gpu_state == "ok"
    g0, g1 = first.gpus
    assert (g0.index, g0.name, g0.util_pct, g0.mem_used_mb, g0.mem_total_mb, g0.temp_c) == (
        0, "Fake GPU 0", 40.0, 1024.0, 16384.0, 61.0)
    assert g0.power_w is None  # transient failure: this field only
    assert g1.temp_c is None and g1.power_w == 150.0 and g1.util_pct == 41.0
    fake.power_fails = False
    for _ in range(3):
        later = mon.sample()
    assert later.gpus[0].power_w == 150.0  # a transient error is not remembered
    assert fake.calls["temp1"] == 1  # NotSupported is remembered
    assert fake.calls["temp0"] == 4
    # NVML is initialised once per process, however many samplers exist.
    Sysmon().sample()
    assert fake.calls["init"] == 1


class Ticks:
    """A monotonic clock that moves ``step`` seconds at each reading."""

    def __init__(self, step: float) -> None:
        self.now, self.step = 1000.0, step

    def __call__(self) -> float:
        self.now += self.step
        return self.now


@pytest.mark.edge(27)
def test_devices_are_read_once_a_second_and_processes_every_two(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeNvml()
    fake.install(monkeypatch)
    clock = Ticks(0.0)
    mon = Sysmon(clock=clock)
    me = os.getpid()
    for _ in range(5):  # a console polling fast after a few keys
        mon.sample(pids=[me])
    assert fake.calls["util"] == 2 and fake.calls["procs0"] == 1  # one reading of each device
    clock.now += 1.0
    mon.sample(pids=[me])
    assert fake.calls["util"] == 4 and fake.calls["procs0"] == 1
    clock.now += 1.0
    mon.sample(pids=[me])
    assert fake.calls["util"] == 6 and fake.calls["procs0"] == 2
    assert fake.calls["procs1"] == 1  # NotSupported: remembered, never asked again


@pytest.fixture
def worker_tree() -> Iterator[tuple[int, int]]:
    """A real worker-like process tree: a parent (as torchrun) and one child (a rank)."""
    code = ("import subprocess, sys, time\n"
            "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)'])\n"
            "print(child.pid, flush=True)\n"
            "time.sleep(120)\n")
    parent = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert parent.stdout is not None
    child = int(parent.stdout.readline())
    yield parent.pid, child
    subprocess.run(["kill", str(child)], check=False)
    parent.kill()
    parent.wait()


@pytest.mark.edge(27)
def test_the_jobs_own_gpu_memory_is_summed_over_its_process_tree(
        monkeypatch: pytest.MonkeyPatch, worker_tree: tuple[int, int]) -> None:
    parent, child = worker_tree
    fake = FakeNvml()
    fake.procs = {child: 2048 * MB, parent: 512 * MB, 999_999: 9000 * MB}  # the last: someone else
    fake.install(monkeypatch)
    sample = Sysmon(clock=Ticks(2.0)).sample(pids=[parent])
    g0, g1 = sample.gpus
    assert g0.job_mem_mb == 2560.0  # the rank and its launcher, not the other user
    assert g0.mem_used_mb == 1024.0  # the device's own reading is unchanged
    assert g1.job_mem_mb is None  # this device cannot list processes: unknown, not zero
    assert sample.worker is not None and set(sample.worker.pids) == {parent, child}
    fake.procs[child] = None  # NVML cannot tell this process's memory (some containers)
    assert Sysmon(clock=Ticks(2.0)).sample(pids=[parent]).gpus[0].job_mem_mb is None
    assert Sysmon(clock=Ticks(2.0)).sample().worker is None  # no job running: nothing to watch


def test_a_cpu_job_has_its_cpu_and_memory_measured(tmp_path: Path) -> None:
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        mon = Sysmon()
        first = mon.sample(pids=[busy.pid]).worker
        assert first is not None and first.cpu_pct is None  # psutil measures between two looks
        time.sleep(0.5)
        later = mon.sample(pids=[busy.pid]).worker
        assert later is not None and later.pids == (busy.pid,)
        assert later.cpu_pct is not None and later.cpu_pct > 0 and (later.rss_mb or 0) > 1
        assert later.cpu_fraction is not None and 0 < later.cpu_fraction <= 1.0
    finally:
        busy.kill()
        busy.wait()
    assert mon.sample(pids=[busy.pid]).worker is not None  # a job that just ended costs no error


@pytest.mark.edge(27)
def test_configured_gpu_indices_select_devices(monkeypatch: pytest.MonkeyPatch) -> None:
    FakeNvml().install(monkeypatch)
    assert [g.index for g in Sysmon(gpus=[1]).sample().gpus] == [1]


@pytest.mark.edge(24)
def test_cgroup_v2_limit_caps_ram(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "cg"
    (root / "job").mkdir(parents=True)
    (root / "job" / "memory.max").write_text(f"{512 * MB}\n")
    (root / "job" / "memory.current").write_text(f"{300 * MB}\n")
    (root / "job" / "memory.stat").write_text(f"anon 1\ninactive_file {100 * MB}\nactive_file 5\n")
    proc = tmp_path / "cgroup"
    proc.write_text("0::/job\n")
    assert cgroup_memory(root, proc) == (512 * MB, 200 * MB)
    total, used, avail = Sysmon(cgroup_root=root, proc_cgroup=proc).ram()
    assert total == 512
    assert avail <= 312  # limit minus what the cgroup really holds
    assert used == pytest.approx(total - avail)


@pytest.mark.edge(24)
def test_cgroup_v2_max_means_host_limits(tmp_path: Path) -> None:
    root = tmp_path / "cg"
    root.mkdir()
    (root / "memory.max").write_text("max\n")
    (root / "memory.current").write_text("123\n")
    proc = tmp_path / "cgroup"
    proc.write_text("0::/\n")
    assert cgroup_memory(root, proc) is None


@pytest.mark.edge(24)
def test_cgroup_v1_fallback_to_namespace_root(tmp_path: Path) -> None:
    root = tmp_path / "cg"
    mem = root / "memory"
    mem.mkdir(parents=True)
    (mem / "memory.limit_in_bytes").write_text(f"{1024 * MB}\n")
    (mem / "memory.usage_in_bytes").write_text(f"{600 * MB}\n")
    (mem / "memory.stat").write_text(f"inactive_file 1\ntotal_inactive_file {200 * MB}\n")
    proc = tmp_path / "cgroup"
    # The host path /proc shows does not exist inside the container: the root is used.
    proc.write_text("4:memory:/host/slice/abc\n0::/\n")
    assert cgroup_memory(root, proc) == (1024 * MB, 400 * MB)
    (mem / "memory.limit_in_bytes").write_text("9223372036854771712\n")
    assert cgroup_memory(root, proc) is None


def test_real_machine_sample_is_sane(tmp_path: Path) -> None:
    sample = Sysmon().sample([tmp_path, tmp_path / "not" / "made" / "yet"])
    assert 0 < sample.ram_available_mb <= sample.ram_total_mb
    assert sample.ram_used_mb == pytest.approx(sample.ram_total_mb - sample.ram_available_mb)
    assert set(sample.disk_free_mb) == {str(tmp_path), str(tmp_path / "not" / "made" / "yet")}
    assert all(v > 0 for v in sample.disk_free_mb.values())
    assert sample.gpu_state in sysmon.GPU_STATES
    fields = sample.event_fields()
    assert fields["gpu_state"] == sample.gpu_state and "ram_used_mb" in fields


@pytest.mark.edge(30)
def test_swap_in_rate_from_counter_deltas(monkeypatch: pytest.MonkeyPatch) -> None:
    # Thrashing cannot be caused safely here; psutil's counter is replaced with a scripted one.
    Swap = namedtuple("Swap", "total used free percent sin sout")
    counters = iter([0, 0, 100 * MB, 100 * MB])
    clock = iter([10.0, 12.0, 13.0])
    monkeypatch.setattr(sysmon.psutil, "swap_memory", lambda: Swap(1, 64 * MB, 0, 0, next(counters), 0))
    monkeypatch.setattr(sysmon.time, "monotonic", lambda: next(clock))
    mon = Sysmon()
    assert mon.swap() == (64.0, 0.0)  # first call: no rate yet
    assert mon.swap() == (64.0, 0.0)
    used, rate = mon.swap()
    assert used == 64.0 and rate == pytest.approx(100.0)
