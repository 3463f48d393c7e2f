"""Which process is this: an identity that a wall-clock step cannot move (cases 41-43, 48).

A pid alone is not a process: the kernel hands a dead process's pid to the next one. The PID file,
recovery's orphan check, the store's intents and the launcher's worker record therefore keep a pid
*and* an identity, and believe the pid only while the identity still matches.

psutil's ``create_time`` is no such identity on Linux: it is the boot time plus the start in clock
ticks, and the kernel recomputes the boot time from the wall clock, so an NTP step or a resumed VM
moves the create time of every live process by the size of the step. A live daemon then reads as
stale and a live worker as someone else. On Linux the identity is therefore what the kernel itself
keeps: the start time in clock ticks since boot (``/proc/PID/stat`` field 22), which never changes
for the life of a process, plus the boot id (``/proc/sys/kernel/random/boot_id``), which tells one
boot's tick count from the next. Elsewhere it is psutil's create time, which those systems read
from the process record itself, not from a boot time.

Identities are text tokens compared exactly:

- ``linux:<boot id>:<start ticks>``
- ``psutil:<create time>`` where ``/proc`` is absent
- ``legacy:<create time>``: a float that an earlier version stored (PID file ``start_time``, the
  job database's ``pid_start`` before schema 2). It is compared the way that version did (psutil's
  create time within 0.05 s), so a daemon or worker started before an upgrade is still recognised;
  every identity recorded from now on is one of the two above.
"""

from __future__ import annotations

import functools
import os
import sys
from pathlib import Path

import psutil

LINUX = "linux:"
PSUTIL = "psutil:"
LEGACY = "legacy:"
# What an earlier version allowed between two create times of one process (float through JSON).
LEGACY_TOLERANCE_S = 0.05
_STARTTIME_FIELD = 22  # /proc/PID/stat, counting from 1 (proc(5))
_STATE_FIELD = 3


@functools.cache
def _boot_id() -> str | None:
    """This boot's id, or None where the kernel has no such file (not Linux). It cannot change
    while this process lives, so it is read once."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip() or None
    except OSError:
        return None


def _linux_token(pid: int, boot_id: str) -> str | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:  # gone (ENOENT, ESRCH) or not ours to see: either way, not a live match
        return None
    # The command name (field 2) is in parentheses and may itself hold spaces and parentheses.
    fields = raw[raw.rfind(b")") + 2:].split()
    try:
        state = fields[_STATE_FIELD - 3]
        ticks = int(fields[_STARTTIME_FIELD - 3])
    except (IndexError, ValueError):
        return None
    if state in (b"Z", b"X"):  # a zombie writes nothing more and holds nothing: as good as gone
        return None
    return f"{LINUX}{boot_id}:{ticks}"


def _psutil_create_time(pid: int) -> float | None:
    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return None
        return float(proc.create_time())
    except psutil.Error:
        return None


def identity(pid: int) -> str | None:
    """The identity token of the live process ``pid``, or None when there is none (or a zombie)."""
    if pid <= 0:
        return None
    boot_id = _boot_id() if sys.platform.startswith("linux") else None
    if boot_id is not None:
        return _linux_token(pid, boot_id)
    created = _psutil_create_time(pid)
    return None if created is None else f"{PSUTIL}{created!r}"


def my_identity() -> str:
    token = identity(os.getpid())
    if token is None:  # pragma: no cover - a running process always has one
        raise RuntimeError("cannot read this process's own start time")
    return token


def from_stored(value: object) -> str | None:
    """A recorded identity as a token: text as it is, an earlier version's float as ``legacy:``.
    Anything else (None, a bool, garbage) is no identity."""
    if isinstance(value, str):
        return value or None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return f"{LEGACY}{float(value)!r}"
    return None


def same_process(pid: int | None, recorded: str | None) -> bool:
    """True when ``pid`` is alive and is the very process ``recorded`` names."""
    if not pid or pid <= 0 or not recorded:
        return False
    if recorded.startswith(LEGACY):
        try:
            then = float(recorded[len(LEGACY):])
        except ValueError:
            return False
        now = _psutil_create_time(pid)
        return now is not None and abs(now - then) <= LEGACY_TOLERANCE_S
    return identity(pid) == recorded

