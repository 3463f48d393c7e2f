"""The sbatch argv and the generated batch script, run by a real bash (no Slurm needed): quoting
holds against hostile folder names, and the torchrun form turns the time-limit warning into
SIGTERM for its child and exits with the child's own status."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from trainconsole.engine.config.schema import LauncherConfig
from trainconsole.engine.daemon.launcher import DevicePlan
from trainconsole.engine.daemon.slurm.submit import (
    batch_script,
    job_id_from_name,
    job_name,
    queue_tag,
    sbatch_argv,
    slurm_plan,
    worker_command,
)
from trainconsole.engine.errors import EXIT_CODES, ErrorClass

HOSTILE = "a b'$(touch PWNED)\"`touch PWNED2`;x%j"


def test_argv_carries_every_setting_as_its_own_item(tmp_path: Path) -> None:
    lc = LauncherConfig(kind="slurm", partition="gpu", account="ml", qos="high", gpus_per_job=2,
                        cpus_per_job=8, mem="64G", time_limit="4:00:00", warn_before_limit_s=120,
                        extra_args=["--constraint=a100 && rm -rf /", "--exclusive"])
    run = tmp_path / HOSTILE
    argv = sbatch_argv(lc, slurm_plan("auto", 2, env={}), name="trainconsole-x-j0001", script=run / "s.sh",
                       run_dir=run, log_path=run / "worker.log")
    assert argv[0] == "sbatch" and "--parsable" in argv and "--no-requeue" in argv
    for item in ("--partition=gpu", "--account=ml", "--qos=high", "--gres=gpu:2", "--cpus-per-task=8",
                 "--mem=64G", "--time=4:00:00", "--signal=B:USR1@120", "--constraint=a100 && rm -rf /",
                 "--exclusive", f"--chdir={run}"):
        assert item in argv
    assert f"--output={run}/worker.log".replace("%j", "%%j") in argv  # Slurm's %j stays literal
    assert argv[-1] == str(run / "s.sh")


def test_empty_settings_are_left_to_the_cluster(tmp_path: Path) -> None:
    argv = sbatch_argv(LauncherConfig(kind="slurm", gpus_per_job=0, warn_before_limit_s=0),
                       slurm_plan("auto", 0, env={}), name="n", script=tmp_path / "s", run_dir=tmp_path,
                       log_path=tmp_path / "l")
    assert not [a for a in argv if a.split("=")[0] in ("--partition", "--account", "--qos", "--mem", "--time",
                                                        "--gres", "--signal")]


def test_plans() -> None:
    assert slurm_plan("cpu", 4, env={}) == DevicePlan("cpu", 1, "")
    assert slurm_plan("auto", 0, env={"TRAINCONSOLE_NPROC": "2"}) == DevicePlan("cpu", 2, "")
    assert slurm_plan("cuda", 4, env={}) == DevicePlan("cuda", 4, None)
    spec = Path("/r/j1/spec.json")
    assert worker_command(spec, 1)[1:] == ["-m", "trainconsole.engine.train.worker", str(spec)]
    assert "--nproc_per_node=4" in worker_command(spec, 4)


def test_names_tell_our_jobs_apart(tmp_path: Path) -> None:
    tag = queue_tag(tmp_path / "queue")
    assert tag != queue_tag(tmp_path / "other") and len(tag) == 8
    assert job_id_from_name(job_name(tag, "j0042"), tag) == "j0042"
    assert job_id_from_name(job_name(queue_tag(tmp_path / "other"), "j0042"), tag) is None
    assert job_id_from_name(f"trainconsole-{tag}-", tag) is None


def _script(tmp_path: Path, command: list[str], *, forward: bool) -> tuple[Path, Path]:
    run = tmp_path / HOSTILE
    run.mkdir()
    script = tmp_path / "job.sh"
    script.write_text(batch_script(command, run, forward=forward))
    return run, script


@pytest.mark.parametrize("forward", [False, True])
def test_hostile_folder_names_are_only_ever_data(tmp_path: Path, forward: bool) -> None:
    probe = "import os,sys; print(os.getcwd()); sys.exit(7)"
    run, script = _script(tmp_path, [sys.executable, "-c", probe], forward=forward)
    proc = subprocess.run(["bash", str(script)], capture_output=True, text=True, cwd=tmp_path, timeout=60)
    assert proc.returncode == 7, proc.stderr
    assert proc.stdout.strip() == str(run)
    assert not list(tmp_path.rglob("PWNED*"))


CHILD = """
import signal, sys, time
got = []
signal.signal(signal.SIGTERM, lambda s, f: got.append(s))
signal.signal(signal.SIGUSR1, lambda s, f: got.append(s))
open("ready", "w").close()
while not got:
    time.sleep(0.05)
open("got", "w").write(signal.Signals(got[0]).name)
sys.exit(18)
"""


def _run_until_ready(script: Path, run: Path) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(["bash", str(script)], cwd=run, start_new_session=True)
    deadline = time.monotonic() + 60
    while not (run / "ready").exists():
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.05)
    return proc


def test_the_forwarding_shell_turns_the_warning_into_sigterm_and_keeps_the_status(tmp_path: Path) -> None:
    run, script = _script(tmp_path, [sys.executable, "-c", CHILD], forward=True)
    proc = _run_until_ready(script, run)
    os.kill(proc.pid, signal.SIGUSR2)  # a stack request to the shell is ignored there
    os.kill(proc.pid, signal.SIGUSR1)  # Slurm's B:USR1 goes to the batch shell only
    assert proc.wait(60) == EXIT_CODES[ErrorClass.INTERRUPTED]
    assert (run / "got").read_text() == "SIGTERM"


def test_the_exec_form_hands_the_warning_to_the_worker_itself(tmp_path: Path) -> None:
    run, script = _script(tmp_path, [sys.executable, "-c", CHILD], forward=False)
    proc = _run_until_ready(script, run)
    os.kill(proc.pid, signal.SIGUSR1)
    assert proc.wait(60) == EXIT_CODES[ErrorClass.INTERRUPTED]
    assert (run / "got").read_text() == "SIGUSR1"
