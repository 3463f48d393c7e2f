"""``trainconsole doctor`` with the Slurm launcher: against the real test cluster through the CLI,
and the shared-filesystem judgement against mount tables written for the purpose."""

from __future__ import annotations

import json
from pathlib import Path

from tests.helpers import run_cli
from tests.slurm.cluster import Cluster
from trainconsole.engine.config import set_value
from trainconsole.engine.daemon.slurm.doctor import FAIL, OK, check_shared, filesystem_of


def _doctor(workspace: Path, **values: object) -> dict[str, list[tuple[str, str]]]:
    config = workspace / "config.toml"
    for key, value in {"launcher.kind": "slurm", **values}.items():
        set_value(config, key, value)
    proc = run_cli("--config", str(config), "doctor", "--json")
    checks: dict[str, list[tuple[str, str]]] = {}
    for c in json.loads(proc.stdout)["checks"]:
        checks.setdefault(c["check"], []).append((c["verdict"], c["detail"]))
    return checks


def test_doctor_checks_the_cluster_and_the_partition(slurm: Cluster, workspace: Path) -> None:
    checks = _doctor(workspace, **{"launcher.partition": slurm.partition, "launcher.gpus_per_job": 0})
    assert checks["slurm"][0][0] == OK and "1 node, 1 idle" in checks["slurm"][0][1]
    assert checks["partition"] == [(OK, repr(slurm.partition))]
    # The test cluster's only node is this machine, so a local run folder is fine.
    assert all(v == OK for v, _ in checks["shared fs"]) and "gpu" not in checks
    bad = _doctor(workspace, **{"launcher.partition": "nosuch", "launcher.gpus_per_job": 1})
    assert bad["partition"][0][0] == FAIL and slurm.partition in bad["partition"][0][1]
    assert bad["gpus"][0][0] == "warn"  # gpus_per_job = 1 on a cluster without GPUs waits forever


def test_doctor_without_a_controller_says_so_in_one_line(slurm: Cluster, workspace: Path, tmp_path: Path) -> None:
    conf = tmp_path / "slurm.conf"
    conf.write_text(slurm.conf.read_text().replace(f"SlurmctldPort={slurm_port(slurm)}", "SlurmctldPort=1"))
    config = workspace / "config.toml"
    set_value(config, "launcher.kind", "slurm")
    proc = run_cli("--config", str(config), "doctor", env={"SLURM_CONF": str(conf)}, timeout=180)
    assert proc.returncode == 1 and "Traceback" not in proc.stdout + proc.stderr
    line = next(ln for ln in proc.stdout.splitlines() if " slurm " in ln)
    assert "FAIL" in line and "sinfo" in line


def slurm_port(slurm: Cluster) -> str:
    return next(ln.split("=", 1)[1] for ln in slurm.conf.read_text().splitlines()
                if ln.startswith("SlurmctldPort="))


MOUNTS = """/dev/vda / ext4 rw 0 0
tmpfs /tmp tmpfs rw 0 0
fs1:/export/home /shared nfs4 rw 0 0
fs1:/export/my\\040data /my\\040data nfs rw 0 0
"""


def test_the_shared_filesystem_is_judged_from_the_mount_table(tmp_path: Path) -> None:
    mounts = tmp_path / "mounts"
    mounts.write_text(MOUNTS)
    assert filesystem_of(Path("/shared/runs/j1"), mounts) == ("/shared", "nfs4")
    assert filesystem_of(Path("/my data/x"), mounts) == ("/my data", "nfs")
    assert filesystem_of(Path("/sharedx"), mounts) == ("/", "ext4")
    local = check_shared({"paths.runs": Path("/var/runs")}, ["gpu-01", "gpu-02"], mounts)
    assert local[0][1] == FAIL and "every node mounts" in local[0][2]
    shared = check_shared({"paths.runs": Path("/shared/runs")}, ["gpu-01", "gpu-02"], mounts)
    assert shared[0][1] == OK
