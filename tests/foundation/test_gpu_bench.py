"""bench/gpu.py on a machine without a GPU: it says so in one line and exits 0, writing nothing
(the GPU paths themselves run only where a GPU is)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_gpu_check_without_a_gpu_says_so_and_exits_0() -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: `make gpu-check` runs the real thing")
    result = ROOT / "bench" / "results" / "gpu.json"
    before = result.read_bytes() if result.exists() else None
    done = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu.py"), "--quick"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().count("\n") == 0 and "no CUDA GPU on this machine" in done.stdout
    assert "Traceback" not in done.stderr
    assert (result.read_bytes() if result.exists() else None) == before
