"""A memory cgroup with a low limit, for a real kernel OOM kill of one worker (case 24).

cgroup v1 (``/sys/fs/cgroup/memory/NAME/memory.limit_in_bytes``) where the memory controller is
mounted that way, else v2 (``memory.max``). Needs root. Where the machine cannot provide one,
``memory_cgroup`` skips the test and says why. Swap is switched off for the group (v1
``memory.swappiness``/``memsw``, v2 ``memory.swap.max``) so the limit means an OOM kill, not
paging."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

V1 = Path("/sys/fs/cgroup/memory")
V2 = Path("/sys/fs/cgroup")


@dataclass(frozen=True)
class MemoryCgroup:
    path: Path
    version: int

    @property
    def procs(self) -> Path:
        return self.path / "cgroup.procs"

    def oom_kills(self) -> int:
        """The kernel's own count of OOM kills in this group."""
        name = "memory.oom_control" if self.version == 1 else "memory.events"
        for line in (self.path / name).read_text().splitlines():
            key, _, value = line.partition(" ")
            if key == "oom_kill":
                return int(value)
        raise AssertionError(f"no oom_kill counter in {self.path / name} (kernel older than 4.13)")

    def wrap(self, argv: list[str]) -> list[str]:
        """``argv`` run inside this group: a shell moves itself in, then execs (same pid)."""
        return ["sh", "-c", 'echo $$ > "$0" && exec "$@"', str(self.procs), *argv]


def _write(path: Path, value: str) -> None:
    path.write_text(value)


def _v1(limit: int) -> MemoryCgroup | str:
    if not (V1 / "memory.limit_in_bytes").exists():
        return "no cgroup v1 memory controller at /sys/fs/cgroup/memory"
    path = V1 / f"trainconsole-test-{os.getpid()}-{time.monotonic_ns()}"
    try:
        path.mkdir()
    except OSError as exc:
        return f"cannot create a memory cgroup under {V1} ({exc.strerror})"
    try:
        _write(path / "memory.limit_in_bytes", str(limit))
        with contextlib.suppress(OSError):  # absent without swap accounting
            _write(path / "memory.memsw.limit_in_bytes", str(limit))
        with contextlib.suppress(OSError):
            _write(path / "memory.swappiness", "0")
    except OSError as exc:
        path.rmdir()
        return f"cannot set a memory limit in {path} ({exc.strerror})"
    return MemoryCgroup(path, 1)


def _v2(limit: int) -> MemoryCgroup | str:
    controllers = V2 / "cgroup.controllers"
    if not controllers.exists() or "memory" not in controllers.read_text().split():
        return "no cgroup v2 memory controller at /sys/fs/cgroup"
    try:
        _write(V2 / "cgroup.subtree_control", "+memory")
    except OSError as exc:
        return f"cannot enable the memory controller for child cgroups ({exc.strerror})"
    path = V2 / f"trainconsole-test-{os.getpid()}-{time.monotonic_ns()}"
    try:
        path.mkdir()
        _write(path / "memory.max", str(limit))
        with contextlib.suppress(OSError):
            _write(path / "memory.swap.max", "0")
    except OSError as exc:
        with contextlib.suppress(OSError):
            path.rmdir()
        return f"cannot create a memory cgroup under {V2} ({exc.strerror})"
    return MemoryCgroup(path, 2)


def _remove(group: MemoryCgroup) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        pids = [int(p) for p in group.procs.read_text().split()]
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        try:
            group.path.rmdir()
            return
        except OSError:
            time.sleep(0.05)
    group.path.rmdir()


@contextlib.contextmanager
def memory_cgroup(limit_bytes: int) -> Iterator[MemoryCgroup]:
    """A fresh memory cgroup limited to ``limit_bytes``; skips the test where none can be made."""
    if not sys.platform.startswith("linux"):
        pytest.skip("memory cgroups are Linux only")
    if os.geteuid() != 0:
        pytest.skip("a memory cgroup needs root (run the suite as root for a real kernel OOM kill)")
    reasons = []
    group: MemoryCgroup | None = None
    for make in (_v1, _v2):
        made = make(limit_bytes)
        if isinstance(made, MemoryCgroup):
            group = made
            break
        reasons.append(made)
    if group is None:
        pytest.skip("no memory cgroup on this machine: " + "; ".join(reasons))
    try:
        yield group
    finally:
        _remove(group)
