"""``trainconsole doctor`` with ``launcher.kind = "slurm"``: the client commands, an answering
controller, the partition, and run folders the nodes can see.

Each check is one ``(check, verdict, detail)`` line; the verdict words are doctor's own
(``ok``/``warn``/``FAIL``). What cannot be checked from here (the Python environment on the nodes)
is said in docs/cluster.md rather than guessed at.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

from trainconsole.engine.config.schema import LauncherConfig
from trainconsole.engine.daemon.slurm.commands import PROGRAMS, SlurmCommands, missing_programs
from trainconsole.engine.daemon.slurm.state import SlurmError, node_names_of, parse_sinfo, partitions_of

OK, WARN, FAIL = "ok", "warn", "FAIL"
# Filesystems that several machines mount at once (st_dev alone cannot tell).
SHARED_FS = ("nfs", "nfs4", "lustre", "gpfs", "beegfs", "cephfs", "ceph", "glusterfs", "fuse.glusterfs",
             "cifs", "smb3", "panfs", "wekafs", "fuse.juicefs", "fuse.sshfs", "9p", "virtiofs")
Line = tuple[str, str, str]


def filesystem_of(path: Path, mounts: Path = Path("/proc/mounts")) -> tuple[str, str]:
    """(mount point, filesystem type) of the mount holding ``path`` (the longest matching one)."""
    target = os.path.realpath(path)
    best = ("/", "unknown")
    try:
        lines = mounts.read_text().splitlines()
    except OSError:
        return best
    for line in lines:
        parts = line.split()
        if len(parts) < 3:
            continue
        point = parts[1].replace("\\040", " ")
        inside = target == point or target.startswith(point.rstrip("/") + "/")
        if inside and len(point) >= len(best[0]):
            best = (point, parts[2])
    return best


def _only_this_machine(nodes: list[str]) -> bool:
    here = {socket.gethostname(), socket.gethostname().split(".")[0], "localhost"}
    return bool(nodes) and all(n in here for n in nodes)


def check_shared(paths: dict[str, Path], nodes: list[str], mounts: Path = Path("/proc/mounts")) -> list[Line]:
    out: list[Line] = []
    for key, path in paths.items():
        point, fstype = filesystem_of(path, mounts)  # a folder not made yet: its mount still decides
        if fstype in SHARED_FS:
            out.append(("shared fs", OK, f"{key} = {path} is on {fstype} ({point}), shared with the nodes"))
        elif _only_this_machine(nodes):
            out.append(("shared fs", OK, f"{key} = {path} is on {fstype}, local, and the cluster's only node "
                                         "is this machine"))
        else:
            out.append(("shared fs", FAIL, f"{key} = {path} is on {fstype} ({point}), a local filesystem: "
                                           "workers on other nodes cannot see it; put it on a filesystem "
                                           "every node mounts at the same path"))
    return out


def checks(lc: LauncherConfig, paths: dict[str, Path], commands: SlurmCommands | None = None) -> list[Line]:
    missing = missing_programs()
    if missing:
        return [("slurm", FAIL, f'launcher.kind = "slurm" but {", ".join(missing)} not found on PATH '
                                f"(the Slurm client commands {', '.join(PROGRAMS)} are needed)")]
    commands = commands or SlurmCommands()
    try:
        text = commands.sinfo()
        summary, sinfo_nodes, partitions = parse_sinfo(text), node_names_of(text), partitions_of(text)
    except SlurmError as exc:
        return [("slurm", FAIL, exc.message)]
    out: list[Line] = [("slurm", OK, f"the controller answers: {summary.line()}")]
    if lc.partition and lc.partition not in partitions:
        out.append(("partition", FAIL, f"launcher.partition = {lc.partition!r} is not a partition of this "
                                       f"cluster (partitions: {', '.join(sorted(partitions)) or 'none'})"))
    else:
        out.append(("partition", OK, repr(lc.partition) if lc.partition else "the cluster's default"))
    if lc.gpus_per_job and not summary.gpus:
        out.append(("gpus", WARN, f"launcher.gpus_per_job = {lc.gpus_per_job} but no node declares a GPU "
                                  "(gres): jobs will wait forever; set gpus_per_job = 0 for CPU training"))
    return out + check_shared(paths, sinfo_nodes)
