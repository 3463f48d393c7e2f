"""Run a module as if the wall clock had been stepped by SECONDS since boot.

``python -m tests.daemon.clockstep SECONDS MODULE [ARGS...]``

On Linux, psutil computes every process's ``create_time`` as the boot time plus its start in clock
ticks, and reads the boot time from ``/proc/stat``, which the kernel derives from the wall clock:
an NTP step or a resumed VM moves it. Stepping the real clock would disturb everything else on the
machine, so this shifts psutil's view of the boot time, the one value a step changes, in this
process only, then runs MODULE as ``__main__``."""

from __future__ import annotations

import runpy
import sys

import psutil

if not sys.platform.startswith("linux"):
    raise SystemExit("clockstep: psutil derives create_time from the boot time only on Linux")

from psutil import _pslinux  # noqa: E402 - the platform module exists only on Linux

_real_boot_time = _pslinux.boot_time
_shift = float(sys.argv[1])
_pslinux.boot_time = lambda: _real_boot_time() + _shift  # type: ignore[attr-defined]
assert abs(psutil.boot_time() - _real_boot_time() - _shift) < 1e-6
sys.argv = sys.argv[2:]
runpy.run_module(sys.argv[0], run_name="__main__", alter_sys=True)
