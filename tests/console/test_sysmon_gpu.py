"""engine/sysmon.py against a real GPU and driver: the job's own memory comes from NVML's list of
processes on the device, as nvitop reads it. Skips, saying why, on a machine without a CUDA build
of torch and an NVIDIA driver (this one); on a GPU machine it runs as is."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator

import pytest

from trainconsole.engine import sysmon
from trainconsole.engine.sysmon import Sysmon

ALLOC = """
import sys, time, torch
block = torch.empty(1 << 30, dtype=torch.uint8, device="cuda")  # 1 GiB, plainly allocated
torch.cuda.synchronize()
print("ready", flush=True)
sys.stdin.read()
"""


def _gpu_ready() -> str:
    try:
        import torch
    except ImportError:
        return "torch is not installed"
    if not torch.cuda.is_available():
        return "no CUDA device (a CPU build of torch, or no driver)"
    sysmon.reset_nvml()
    if Sysmon().sample().gpu_state != "ok":
        return "NVML cannot read the devices"
    return ""


@pytest.fixture
def gpu_process() -> Iterator[int]:
    why = _gpu_ready()
    if why:
        pytest.skip(f"needs a GPU: {why}")
    proc = subprocess.Popen([sys.executable, "-c", ALLOC], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    yield proc.pid
    proc.kill()
    proc.wait()
    sysmon.reset_nvml()


@pytest.mark.edge(27)
def test_a_jobs_own_gpu_memory_is_read_from_nvml(gpu_process: int) -> None:
    mon = Sysmon()
    sample = mon.sample(pids=[gpu_process])
    assert sample.gpu_state == "ok" and sample.gpus
    mine = [g.job_mem_mb for g in sample.gpus if g.job_mem_mb]
    # 1 GiB asked for, plus the CUDA context's own few hundred MB.
    assert len(mine) == 1 and mine[0] >= 1024, [(g.index, g.job_mem_mb, g.mem_used_mb) for g in sample.gpus]
    assert all(g.mem_used_mb is not None and g.mem_used_mb >= (g.job_mem_mb or 0) for g in sample.gpus)
    assert mon.sample().worker is None
