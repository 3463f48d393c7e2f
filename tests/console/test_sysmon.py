"""engine/sysmon.py: NVML states and per-field failures, cgroup-aware RAM, swap-in rate, disk.

NVML cannot exist on this machine (no GPU, no driver), so the GPU tests fake it at the pynvml
boundary: the module's functions are replaced and raise the real ``pynvml.NVMLError`` subclasses
the library raises. RAM limits come from a fake cgroup folder tree (the real one is the host's).
"""

from __future__ import annotations

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
    """Two devices; device 1 has no temperature sensor; power fails transiently on device 0."""

    def __init__(self, count: int = 2) -> None:
        self.count = count
        self.calls: dict[str, int] = {}
        self.power_fails = True

    def install(self, mp: pytest.MonkeyPatch) -> None:
        for name in ("nvmlInit", "nvmlDeviceGetCount", "nvmlDeviceGetHandleByIndex", "nvmlDeviceGetName",
                     "nvmlDeviceGetUtilizationRates", "nvmlDeviceGetMemoryInfo",
                     "nvmlDeviceGetTemperature", "nvmlDeviceGetPowerUsage"):
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
        return SimpleNamespace(gpu=40 + h[1], memory=10)

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
    mon = Sysmon()
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
