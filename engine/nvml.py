"""NVML, once per process: the session every ``Sysmon`` shares, its device readings as
``GpuSample`` and the per-process GPU memory. Every query is wrapped, so a failing one costs one
field (None), never the sample; a field a device does not support is probed once and remembered.
A machine without NVML or without GPUs is a state ("no_nvml", "no_gpu"), never an exception."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

MB: Final = 1024 * 1024

@dataclass(frozen=True)
class GpuSample:
    index: int
    name: str | None
    util_pct: float | None
    mem_used_mb: float | None
    mem_total_mb: float | None
    temp_c: float | None
    power_w: float | None
    job_mem_mb: float | None = None  # GPU memory of the watched job's processes on this device


class NvmlSession:
    """One NVML session per process, shared by every Sysmon in it."""

    def __init__(self) -> None:
        self.state = "no_nvml"
        self.detail = ""
        self.module: Any = None
        self.handles: list[tuple[int, Any]] = []
        self.names: dict[int, str | None] = {}
        self.unsupported: set[tuple[int, str]] = set()
        self._start()

    def _start(self) -> None:
        try:
            import pynvml
        except ImportError as exc:  # the package is a dependency, but a broken install is a state too
            self.detail = f"pynvml not importable: {exc}"
            return
        self.module = pynvml
        try:
            pynvml.nvmlInit()
        except pynvml.NVMLError as exc:
            # No library or no driver is a CPU machine; anything else is a broken GPU stack.
            absent = (
                pynvml.NVMLError_LibraryNotFound,
                pynvml.NVMLError_DriverNotLoaded,
                pynvml.NVMLError_FunctionNotFound,
            )
            self.state = "no_nvml" if isinstance(exc, absent) else "error"
            self.detail = f"NVML init failed: {exc}"
            return
        except OSError as exc:
            self.detail = f"NVML init failed: {exc}"
            return
        try:
            count = int(pynvml.nvmlDeviceGetCount())
            for index in range(count):
                self.handles.append((index, pynvml.nvmlDeviceGetHandleByIndex(index)))
        except pynvml.NVMLError as exc:
            self.state = "error"
            self.detail = f"NVML device enumeration failed: {exc}"
            return
        self.state = "ok" if self.handles else "no_gpu"

    def query(self, index: int, field_name: str, func: str, *args: Any) -> Any:
        """One NVML call: NotSupported is remembered per device and field; other errors cost
        this field this time only (a transient error must not blank a gauge for good)."""
        if (index, field_name) in self.unsupported:
            return None
        nv = self.module
        try:
            return getattr(nv, func)(*args)
        except nv.NVMLError as exc:
            if isinstance(exc, nv.NVMLError_NotSupported):
                self.unsupported.add((index, field_name))
            return None
        except Exception:  # noqa: BLE001 - a malformed reply from a driver is one missing field
            return None

    def sample(self, wanted: Sequence[int] | None) -> tuple[str, list[GpuSample]]:
        if self.state != "ok":
            return self.state, []
        nv = self.module
        out: list[GpuSample] = []
        for index, handle in self.handles:
            if wanted is not None and index not in wanted:
                continue
            if index not in self.names:
                raw = self.query(index, "name", "nvmlDeviceGetName", handle)
                self.names[index] = raw.decode() if isinstance(raw, bytes) else raw
            util = self.query(index, "util", "nvmlDeviceGetUtilizationRates", handle)
            mem = self.query(index, "mem", "nvmlDeviceGetMemoryInfo", handle)
            temp = self.query(index, "temp", "nvmlDeviceGetTemperature", handle, nv.NVML_TEMPERATURE_GPU)
            power = self.query(index, "power", "nvmlDeviceGetPowerUsage", handle)
            out.append(GpuSample(
                index=index,
                name=self.names[index],
                util_pct=_num(getattr(util, "gpu", None)),
                mem_used_mb=_scaled(getattr(mem, "used", None), MB),
                mem_total_mb=_scaled(getattr(mem, "total", None), MB),
                temp_c=_num(temp),
                power_w=_scaled(power, 1000),  # NVML reports milliwatts
            ))
        return "ok", out

    def processes(self, wanted: Sequence[int] | None) -> dict[int, dict[int, float | None]]:
        """GPU index -> {pid: MB used, None where NVML cannot say}; compute processes only (a
        training job). A device that cannot list them is left out."""
        if self.state != "ok":
            return {}
        out: dict[int, dict[int, float | None]] = {}
        for index, handle in self.handles:
            if wanted is not None and index not in wanted:
                continue
            procs = self.query(index, "procs", "nvmlDeviceGetComputeRunningProcesses", handle)
            if procs is None:
                continue
            out[index] = {int(p.pid): _scaled(getattr(p, "usedGpuMemory", None), MB) for p in procs
                          if isinstance(getattr(p, "pid", None), int)}
        return out


def _num(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def _scaled(value: Any, divisor: float) -> float | None:
    number = _num(value)
    return None if number is None else number / divisor


_nvml: NvmlSession | None = None
_nvml_lock = threading.Lock()


def nvml_session() -> NvmlSession:
    global _nvml
    with _nvml_lock:
        if _nvml is None:
            _nvml = NvmlSession()
        return _nvml


def reset_nvml() -> None:
    """Forget the process's NVML session (tests fake NVML and need a fresh probe)."""
    global _nvml
    with _nvml_lock:
        _nvml = None
