"""A real one-node Slurm cluster for the tests: written, started, waited for and stopped by pid.

The cluster is private to one test session: its own ``slurm.conf`` (``SLURM_CONF`` points every
client at it, so a system Slurm is never touched), state and spool under a temp folder, free
ports above 1024, ``AuthType=auth/none`` (no munge), ``select/cons_tres``, ``proctrack/linuxproc``.
The node's CPUs, sockets and memory come from ``slurmd -C``, i.e. from this machine.

Two settings make a 2-core box behave like a small GPU node for our purposes:
- the partition is ``OverSubscribe=FORCE:4``, so three one-CPU jobs can run at once on two cores;
- ``DefMemPerNode`` is small, so a job without ``--mem`` does not reserve the whole node.

``task/cgroup`` (memory constrained, cgroup v1 or v2) is tried first, so that a job over its
``--mem`` ends as Slurm's real ``OUT_OF_MEMORY``; where cgroups cannot be used (a container
without a writable cgroup tree) the cluster starts with ``task/none`` and ``oom_enforced`` is
False (the test that needs it skips and says so).

Job ids start at a random base: the cgroup paths Slurm creates (``.../slurm/uid_0/job_N``) are
per machine, and two sessions on one machine must not share them.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trainconsole.engine import fsio

DAEMONS = ("slurmctld", "slurmd")
CLIENTS = ("sbatch", "squeue", "scontrol", "scancel", "sinfo")
PACKAGES = "slurmctld slurmd slurm-client"
START_TIMEOUT_S = 60.0
PARTITION = "tc"


class SlurmUnavailable(Exception):
    """Why this machine cannot run the test cluster (the tests skip with this text)."""


def _which(name: str) -> str | None:
    return shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin:/usr/local/sbin")


def find_programs() -> dict[str, str]:
    missing = [n for n in DAEMONS + CLIENTS if _which(n) is None]
    if missing:
        raise SlurmUnavailable(f"Slurm is not installed ({', '.join(missing)} not found); as root: "
                               f"apt-get install -y {PACKAGES}")
    if os.geteuid() != 0:
        raise SlurmUnavailable("a test Slurm cluster needs root (slurmd starts jobs as their user)")
    return {n: str(_which(n)) for n in DAEMONS + CLIENTS}


def free_ports(count: int) -> list[int]:
    """Ports above 1024 that nothing listens on now (held open together, so they differ)."""
    socks = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        ports = [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()
    assert all(p > 1024 for p in ports)
    return ports


def node_hardware(slurmd: str) -> dict[str, str]:
    """``slurmd -C``: this machine as Slurm sees it (NodeName, CPUs, sockets, RealMemory...)."""
    out = subprocess.run([slurmd, "-C"], capture_output=True, text=True, timeout=30, check=False)
    first = out.stdout.splitlines()[0] if out.stdout else ""
    fields = dict(item.split("=", 1) for item in first.split() if "=" in item)
    if out.returncode != 0 or "NodeName" not in fields or "CPUs" not in fields:
        raise SlurmUnavailable(f"`slurmd -C` did not describe this machine: {out.stderr.strip() or first!r}")
    return fields


def cgroup_conf() -> str | None:
    """A cgroup.conf for memory enforcement on this machine, or None where none can work."""
    root = Path("/sys/fs/cgroup")
    if (root / "cgroup.controllers").is_file():
        if "memory" not in (root / "cgroup.controllers").read_text().split():
            return None
        plugin = "cgroup/v2"
    elif (root / "memory").is_dir():
        plugin = "cgroup/v1"
    else:
        return None
    if not os.access(root, os.W_OK) and not os.access(root / "memory", os.W_OK):
        return None
    return (f"CgroupPlugin={plugin}\nCgroupMountpoint=/sys/fs/cgroup\nConstrainRAMSpace=yes\n"
            "ConstrainSwapSpace=no\nConstrainCores=no\nConstrainDevices=no\n")


def slurm_conf(base: Path, hw: dict[str, str], ports: list[int], *, cgroups: bool, first_job_id: int) -> str:
    node = hw["NodeName"]
    # Leave room for what the OS holds, else slurmd registers with "Low RealMemory" and drains.
    memory = max(512, int(int(hw.get("RealMemory", "2048")) * 0.9))
    shape = " ".join(f"{k}={hw[k]}" for k in ("CPUs", "Boards", "SocketsPerBoard", "CoresPerSocket",
                                               "ThreadsPerCore") if k in hw)
    lines = [
        "ClusterName=tctest",
        f"SlurmctldHost={node}(127.0.0.1)",
        f"SlurmctldPort={ports[0]}",
        f"SlurmdPort={ports[1]}",
        "AuthType=auth/none",
        "CredType=cred/none",
        "SlurmUser=root",
        "SlurmdUser=root",
        f"StateSaveLocation={base / 'state'}",
        f"SlurmdSpoolDir={base / 'spool'}",
        f"SlurmctldPidFile={base / 'slurmctld.pid'}",
        f"SlurmdPidFile={base / 'slurmd.pid'}",
        f"SlurmctldLogFile={base / 'log' / 'slurmctld.log'}",
        f"SlurmdLogFile={base / 'log' / 'slurmd.log'}",
        "MailProg=/bin/true",
        "SchedulerType=sched/backfill",
        "SelectType=select/cons_tres",
        "SelectTypeParameters=CR_Core_Memory",
        "ProctrackType=proctrack/linuxproc",
        f"TaskPlugin={'task/cgroup' if cgroups else 'task/none'}",
        "JobAcctGatherType=jobacct_gather/none",
        "AccountingStorageType=accounting_storage/none",
        "MpiDefault=none",
        "ReturnToService=2",
        "MinJobAge=300",
        "KillWait=5",
        f"FirstJobId={first_job_id}",
        "DefMemPerNode=256",
        f"NodeName={node} NodeAddr=127.0.0.1 {shape} RealMemory={memory} State=UNKNOWN",
        f"PartitionName={PARTITION} Nodes={node} Default=YES MaxTime=INFINITE State=UP OverSubscribe=FORCE:4",
    ]
    return "\n".join(lines) + "\n"


@dataclass
class Cluster:
    base: Path
    conf: Path
    node: str
    programs: dict[str, str]
    oom_enforced: bool
    env: dict[str, str] = field(default_factory=dict)

    @property
    def partition(self) -> str:
        return PARTITION

    def run(self, *argv: str, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
        prog = self.programs.get(argv[0], argv[0])
        return subprocess.run([prog, *argv[1:]], capture_output=True, text=True, timeout=timeout,
                              env={**os.environ, **self.env}, check=False)

    def pid(self, daemon: str) -> int | None:
        try:
            return int((self.base / f"{daemon}.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def start(self, daemon: str) -> None:
        log = self.base / "log" / f"{daemon}.start.log"
        with open(log, "ab") as fh:
            proc = subprocess.run([self.programs[daemon], "-f", str(self.conf)], stdout=fh,
                                  stderr=subprocess.STDOUT, env={**os.environ, **self.env}, timeout=60,
                                  check=False)
        if proc.returncode != 0:
            raise SlurmUnavailable(f"{daemon} did not start (exit {proc.returncode}); "
                                   f"see {self.base / 'log'}: {self.log_tail(daemon)}")

    def stop(self, daemon: str, *, timeout: float = 20.0) -> None:
        pid = self.pid(daemon)
        if pid is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and fsio.writer_alive(pid):
            time.sleep(0.1)
        if fsio.writer_alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    def restart_controller(self) -> None:
        self.stop("slurmctld")
        self.start("slurmctld")
        self.wait_responding()

    def log_tail(self, daemon: str, lines: int = 5) -> str:
        try:
            text = (self.base / "log" / f"{daemon}.log").read_text(errors="replace")
        except OSError:
            return "(no log)"
        wanted = [ln for ln in text.splitlines() if "error" in ln or "fatal" in ln]
        return " | ".join(wanted[-lines:]) or "(no errors logged)"

    def sinfo(self) -> dict[str, Any]:
        out = self.run("sinfo", "--json")
        if out.returncode != 0:
            return {}
        try:
            data = json.loads(out.stdout)
        except ValueError:
            return {}
        return data if isinstance(data, dict) else {}

    def node_state(self) -> str:
        for node in self.sinfo().get("nodes", []):
            if node.get("name") == self.node:
                return str(node.get("state", ""))
        return ""

    def wait_responding(self, timeout: float = START_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.run("squeue", "--json").returncode == 0 and self.node_state():
                return
            time.sleep(0.2)
        raise SlurmUnavailable(f"slurmctld did not answer within {timeout:.0f}s: {self.log_tail('slurmctld')}")

    def wait_idle(self, timeout: float = START_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout
        state = ""
        while time.monotonic() < deadline:
            state = self.node_state()
            if state == "idle":
                return
            time.sleep(0.2)
        raise SlurmUnavailable(f"node {self.node} did not become idle within {timeout:.0f}s (state "
                               f"{state or 'unknown'}): {self.log_tail('slurmd')}")

    def jobs(self) -> list[dict[str, Any]]:
        out = self.run("squeue", "--json")
        data = json.loads(out.stdout) if out.returncode == 0 else {}
        return [j for j in data.get("jobs", []) if isinstance(j, dict)]

    def active_jobs(self) -> list[dict[str, Any]]:
        return [j for j in self.jobs() if j.get("job_state") in ("PENDING", "RUNNING", "CONFIGURING",
                                                                    "COMPLETING", "SUSPENDED", "REQUEUED")]

    def cancel_all(self, timeout: float = 30.0) -> None:
        """Every job of this private cluster is a test's; none outlives the test that made it."""
        self.run("scancel", "--user", "root")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.active_jobs():
            time.sleep(0.2)

    def shutdown(self) -> None:
        with contextlib.suppress(Exception):
            self.cancel_all()
        for daemon in reversed(DAEMONS):
            self.stop(daemon)


def _attempt(base: Path, programs: dict[str, str], hw: dict[str, str], *, cgroups: bool) -> Cluster:
    for sub in ("state", "spool", "log"):
        (base / sub).mkdir(parents=True, exist_ok=True)
    conf = base / "slurm.conf"
    conf.write_text(slurm_conf(base, hw, free_ports(2), cgroups=cgroups,
                               first_job_id=random.randrange(100_000, 50_000_000, 1000)))
    cg = cgroup_conf()
    if cgroups and cg is not None:
        (base / "cgroup.conf").write_text(cg)
    cluster = Cluster(base, conf, hw["NodeName"], programs, oom_enforced=cgroups,
                      env={"SLURM_CONF": str(conf)})
    try:
        cluster.start("slurmctld")
        cluster.wait_responding()
        cluster.start("slurmd")
        cluster.wait_idle()
    except BaseException:
        cluster.shutdown()
        raise
    return cluster


def start_cluster(base: Path) -> Cluster:
    """A started cluster whose node is idle, or SlurmUnavailable saying why not."""
    programs = find_programs()
    hw = node_hardware(programs["slurmd"])
    if cgroup_conf() is not None:
        try:
            return _attempt(base / "cgroup", programs, hw, cgroups=True)
        except SlurmUnavailable:
            pass  # memory enforcement is a bonus; the plain cluster below is what the tests need
    return _attempt(base / "plain", programs, hw, cgroups=False)
