"""Process identity (engine/procid.py) against real processes: a pid plus what the kernel keeps
for the life of a process, so a reused pid is someone else and a zombie is nobody."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import psutil
import pytest

from trainconsole.engine.procid import LEGACY, from_stored, identity, my_identity, same_process

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc identity is Linux only")


def test_a_process_has_one_identity_for_its_life_and_another_process_another() -> None:
    me = my_identity()
    assert identity(os.getpid()) == me and same_process(os.getpid(), me)
    other = subprocess.Popen(["sleep", "30"])
    try:
        theirs = identity(other.pid)
        assert theirs is not None and theirs != me
        # The pid of one process with the identity of another is not that process (a reused pid).
        assert not same_process(other.pid, me) and not same_process(os.getpid(), theirs)
    finally:
        other.kill()
        other.wait()
    assert identity(other.pid) is None and not same_process(other.pid, theirs)


def test_a_zombie_has_no_identity() -> None:
    child = subprocess.Popen(["true"])
    deadline = time.monotonic() + 30
    while psutil.Process(child.pid).status() != psutil.STATUS_ZOMBIE and time.monotonic() < deadline:
        time.sleep(0.01)
    assert psutil.Process(child.pid).status() == psutil.STATUS_ZOMBIE  # exited, not yet reaped
    assert identity(child.pid) is None
    child.wait()


@linux_only
def test_linux_identity_is_boot_id_and_start_ticks_even_with_parentheses_in_the_name() -> None:
    # A command name may hold spaces and parentheses: the stat line is parsed from its last ')'.
    code = "import sys, time; open('/proc/self/comm', 'w').write(') x ( 1 2'); print(1, flush=True); time.sleep(30)"
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE)
    try:
        assert child.stdout is not None and child.stdout.readline()
        assert psutil.Process(child.pid).name() == ") x ( 1 2"
        token = identity(child.pid)
        assert token is not None
        kind, boot_id, ticks = token.split(":")
        assert kind == "linux" and boot_id == open("/proc/sys/kernel/random/boot_id").read().strip()
        since_boot = int(ticks) / os.sysconf("SC_CLK_TCK")
        assert abs(since_boot + psutil.boot_time() - psutil.Process(child.pid).create_time()) < 0.02
    finally:
        child.kill()
        child.wait()


def test_what_an_earlier_version_stored_is_still_recognised_by_the_old_rule() -> None:
    """Before identities, the PID file and the store kept psutil's create_time (a float). Such a
    record still names its live process (within the old 0.05 s), and no other."""
    created = psutil.Process().create_time()
    legacy = from_stored(created)
    assert legacy is not None and legacy.startswith(LEGACY)
    assert same_process(os.getpid(), legacy)
    assert not same_process(os.getpid(), from_stored(created + 1.0))
    assert from_stored(None) is None and from_stored(True) is None and from_stored("") is None
    assert from_stored("linux:x:1") == "linux:x:1"
    assert not same_process(os.getpid(), "legacy:not-a-number")
    assert not same_process(None, my_identity()) and not same_process(0, my_identity())
