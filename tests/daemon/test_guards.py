"""Resource guards, devices, I/O trouble, permissions and clocks around the supervision loop
(fake worker; real files, processes and SQLite). Where the condition cannot be produced on this
machine (swap thrashing, GPUs, the kernel's OOM counter, an EIO), it is faked at the narrowest
boundary and the test says so."""

from __future__ import annotations

import errno
import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pynvml
import pytest

from tests.daemon.cgroups import MemoryCgroup, memory_cgroup
from tests.daemon.harness import FAST, ROOT, FakeLauncher, Harness, configure, drop
from trainconsole.engine import sysmon
from trainconsole.engine.daemon import inbox as ingest
from trainconsole.engine.daemon.launcher import TorchrunLauncher, launcher_for, plan_devices
from trainconsole.engine.errors import ErrorClass
from trainconsole.engine.events import read_all
from trainconsole.engine.sysmon import Sysmon


@pytest.fixture
def fresh_nvml() -> Any:
    sysmon.reset_nvml()
    yield
    sysmon.reset_nvml()


@pytest.fixture
def no_nvml(fresh_nvml: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """No driver library, as on this machine, and made so on a GPU box too (faked at pynvml)."""
    def missing() -> None:
        raise pynvml.NVMLError_LibraryNotFound()

    monkeypatch.setattr(pynvml, "nvmlInit", missing)


def _done(h: Harness, n: int = 1) -> bool:
    return len(h.jobs()) == n and all(j.status == "done" for j in h.jobs())


@pytest.mark.edge(24)
def test_low_memory_stops_new_work_with_one_alert_then_resumes(workspace: Path) -> None:
    # A real sample against a floor above this machine's memory: the guard must hold the queue.
    h = Harness(workspace, {"hardware.min_free_ram_mb": 2**39})
    try:
        drop(workspace, "a.jsonl")
        for _ in range(30):
            h.sup.tick()
            time.sleep(0.05)
        assert h.jobs()[0].status == "queued" and h.sup.current is None
        ram_alerts = [a for a in h.alerts() if a["case"] == 24]
        assert len(ram_alerts) == 1 and "hardware.min_free_ram_mb" in ram_alerts[0]["message"]
        h.sup.guard.min_ram = 0.0  # memory is back
        h.sup.guard._last_mono = None
        h.run_until(lambda: _done(h))
    finally:
        h.close()


class _CgroupLauncher(FakeLauncher):
    """The fake worker, started inside a memory cgroup (the shell moves itself in, then execs)."""

    def __init__(self, group: MemoryCgroup) -> None:
        self.group = group

    def command(self, spec: Path) -> list[str]:
        return self.group.wrap(super().command(spec))


@pytest.mark.edge(24)
def test_a_real_kernel_oom_kill_walks_the_ladder_and_charges_one_attempt_each(
        workspace: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The worker runs in a memory cgroup of 96 MB and takes memory until the kernel's OOM killer
    ends it (SIGKILL, no report): the daemon reads the kernel's count, steps one rung down the
    ladder (half the batch, twice the accumulation) and charges the attempt. A job cured by the
    rung finishes; one that is not uses its last attempt and fails, saying so."""
    monkeypatch.setenv("TRAINCONSOLE_FAULT_JOBS", "cured-*=hog_above_batch:2@2;hopeless-*=hog@2")
    monkeypatch.setenv("FAKE_STEPS", "3")
    with memory_cgroup(96 << 20) as group:
        h = Harness(workspace, {"queue.max_attempts": 2, "training.batch_size": 4,
                                "training.gradient_accumulation": 1},
                    launcher_factory=lambda plan: _CgroupLauncher(group))
        try:
            drop(workspace, "cured-a.jsonl")
            h.run_until(lambda: _done(h), timeout=120)
            assert group.oom_kills() == 1  # the kernel, not us, ended the first worker
            (cured,) = h.jobs()
            assert cured.attempts == 2  # the killed run and the one that finished
            assert cured.overrides["oom_rung"] == 1 and cured.overrides["batch_size"] == 2
            assert cured.overrides["gradient_accumulation"] == 2
            drop(workspace, "hopeless-b.jsonl")
            h.run_until(lambda: any(j.status == "failed" for j in h.jobs()), timeout=120)
            assert group.oom_kills() == 3
            hopeless = next(j for j in h.jobs() if j.name.startswith("hopeless"))
            assert hopeless.attempts == 2 and hopeless.overrides["oom_rung"] == 2
            oom = [a for a in h.alerts() if a["case"] == 24]
            assert [("rung 1" in a["message"], "no attempts are left" in a["message"]) for a in oom] == [
                (True, False), (True, False), (False, True)], oom
            assert all("out-of-memory killer" in a["message"] for a in oom)
        finally:
            h.close()


@pytest.mark.edge(24)
def test_a_kernel_oom_kill_walks_the_ladder_and_is_charged(workspace: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The same path where no memory cgroup can be made: the worker SIGKILLs itself and the
    # kernel's oom_kill counter (/proc/vmstat) is faked to have moved meanwhile.
    counter = iter(range(0, 1000, 1))
    monkeypatch.setattr("trainconsole.engine.daemon.supervisor.oom_kill_count", lambda: next(counter))
    monkeypatch.setenv("TRAINCONSOLE_FAULT", "crash@2")
    h = Harness(workspace, {"queue.max_attempts": 2})
    try:
        drop(workspace, "a.jsonl")
        h.run_until(lambda: h.jobs()[0].status == "failed")
        job = h.jobs()[0]
        # Each kill moved one rung down and used one attempt; the second used the last one.
        assert job.attempts == 2 and job.overrides["oom_rung"] == 2
        assert any(a["case"] == 24 and "rung 1" in a["message"] for a in h.alerts())
        assert any(a["case"] == 24 and "no attempts are left" in a["message"] for a in h.alerts())
    finally:
        h.close()


@pytest.mark.edge(30)
def test_swap_thrashing_stops_new_work(workspace: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Swap activity cannot be caused on demand: psutil's swap counters are faked to climb 1 GB a call.
    sin = iter(range(0, 10**15, 1 << 30))
    monkeypatch.setattr(sysmon.psutil, "swap_memory",
                        lambda: SimpleNamespace(total=1 << 30, used=1 << 29, free=1 << 29, percent=50.0,
                                                sin=next(sin), sout=0))
    h = Harness(workspace)
    try:
        drop(workspace, "a.jsonl")
        for _ in range(30):
            h.sup.tick()
            time.sleep(0.05)
        assert h.jobs()[0].status == "queued"
        assert any(a["case"] == 30 and "swapping" in a["message"] for a in h.alerts())
    finally:
        h.close()


@pytest.mark.edge(26)
def test_no_gpu_with_device_cuda_holds_the_queue(workspace: Path, no_nvml: None) -> None:
    h = Harness(workspace, {"hardware.device": "cuda"})
    try:
        drop(workspace, "a.jsonl")
        for _ in range(20):
            h.sup.tick()
            time.sleep(0.05)
        assert h.jobs()[0].status == "queued" and h.sup.current is None
        held = [a for a in h.alerts() if a["case"] == 26]
        assert len(held) == 1 and "held" in held[0]["message"] and held[0]["severity"] == "critical"
    finally:
        h.close()


@pytest.mark.edge(26)
def test_no_gpu_with_device_auto_trains_on_cpu_with_a_warning(workspace: Path, no_nvml: None) -> None:
    h = Harness(workspace)
    try:
        drop(workspace, "a.jsonl")
        h.run_until(lambda: _done(h))
        env = json.loads((h.layout.run_dir(h.jobs()[0].id) / "env.json").read_text())
        assert env["CUDA_VISIBLE_DEVICES"] == ""
        assert any(a["case"] == 26 and "CPU" in a["message"] and a["severity"] == "warning" for a in h.alerts())
    finally:
        h.close()


class _TwoGpus:
    """NVML with two devices, faked at the pynvml boundary (no GPU here)."""

    def install(self, mp: pytest.MonkeyPatch) -> None:
        mp.setattr(pynvml, "nvmlInit", lambda: None)
        mp.setattr(pynvml, "nvmlDeviceGetCount", lambda: 2)
        mp.setattr(pynvml, "nvmlDeviceGetHandleByIndex", lambda i: ("h", i))
        mp.setattr(pynvml, "nvmlDeviceGetName", lambda h: f"Fake GPU {h[1]}")

        def unsupported(*args: Any) -> Any:
            raise pynvml.NVMLError_NotSupported()

        for name in ("nvmlDeviceGetUtilizationRates", "nvmlDeviceGetMemoryInfo", "nvmlDeviceGetTemperature",
                     "nvmlDeviceGetPowerUsage"):
            mp.setattr(pynvml, name, unsupported)


@pytest.mark.edge(27)
def test_several_gpus_are_chosen_by_config_and_run_under_torchrun(monkeypatch: pytest.MonkeyPatch,
                                                                  fresh_nvml: Any) -> None:
    _TwoGpus().install(monkeypatch)
    sample = Sysmon().sample()
    indices = [g.index for g in sample.gpus]
    assert sample.gpu_state == "ok" and indices == [0, 1]
    every = plan_devices("auto", "all", sample.gpu_state, indices, env={})
    assert (every.device, every.nproc, every.visible) == ("cuda", 2, "0,1")
    runner = launcher_for(every)
    assert isinstance(runner, TorchrunLauncher)
    assert "--nproc_per_node=2" in runner.command(Path("spec.json"))
    one = plan_devices("cuda", [1], sample.gpu_state, indices, env={})
    assert (one.nproc, one.visible, one.hold) == (1, "1", None)
    missing = plan_devices("cuda", [0, 5], sample.gpu_state, indices, env={})
    assert missing.hold and "hardware.gpus" in missing.hold and missing.case == 27


@pytest.mark.edge(44)
def test_io_errors_back_off_and_never_stop_the_engine(workspace: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # EIO cannot be produced without a failing device: the inbox scan raises the real OSError.
    real_scan = ingest.scan
    failures = {"left": 3}

    def flaky(*args: Any, **kw: Any) -> Any:
        if failures["left"]:
            failures["left"] -= 1
            raise OSError(errno.EIO, "Input/output error", "queue/incoming")
        return real_scan(*args, **kw)

    monkeypatch.setattr(ingest, "scan", flaky)
    h = Harness(workspace)
    try:
        drop(workspace, "a.jsonl")
        h.run_until(lambda: _done(h), timeout=60)
        io = [a for a in h.alerts() if a["case"] == 44]
        assert len(io) == 1 and "retrying" in io[0]["message"]  # one alert for the burst
    finally:
        h.close()


@pytest.mark.edge(45)
def test_a_vanished_queue_folder_is_transient(workspace: Path) -> None:
    """The jobs folder disappears (an unmounted network share) while a job waits, then returns."""
    h = Harness(workspace, {"queue.stable_s": 0.0})
    try:
        drop(workspace, "a.jsonl")
        h.run_until(lambda: _done(h))  # the first job goes through normally
        drop(workspace, "b.jsonl")
        h.store.set_paused(True)
        h.run_until(lambda: len(h.jobs()) == 2)
        aside = workspace / "jobs-unmounted"
        h.layout.jobs.rename(aside)
        h.store.set_paused(False)
        for _ in range(10):
            h.sup.tick()
            time.sleep(0.05)
        assert any(a["case"] == 45 for a in h.alerts())
        assert [j.status for j in h.jobs()] == ["done", "queued"]
        aside.rename(h.layout.jobs)
        h.sup.io_retry_at = 0.0  # skip the rest of the back-off
        h.run_until(lambda: _done(h, 2))
    finally:
        h.close()


@pytest.mark.edge(51)
def test_a_job_copy_removed_by_hand_fails_at_once_saying_how_to_re_add_it(workspace: Path) -> None:
    h = Harness(workspace, {"queue.max_attempts": 3})
    try:
        h.store.set_paused(True)
        drop(workspace, "a.jsonl")
        h.run_until(lambda: len(h.jobs()) == 1)
        h.jobs()[0].path.unlink()  # the queue folder is fine: only the job's own copy is gone
        h.store.set_paused(False)
        h.run_until(lambda: h.jobs()[0].status == "failed", timeout=30)
        job = h.jobs()[0]
        assert job.error_class == ErrorClass.DATA and job.attempts == 0, job
        assert "removed by hand" in (job.error or "") and "trainconsole add" in (job.error or "")
        assert [a["case"] for a in h.alerts() if a["case"] in (45, 51)] == [51]
        assert h.sup.io_failures == 0  # not taken for a vanished mount: no back-off, no retries
    finally:
        h.close()


@pytest.mark.edge(45)
def test_a_jobs_folder_left_empty_by_a_lost_mount_is_transient(workspace: Path) -> None:
    """An unmounted share leaves its mount point behind, empty: the job's copy and its sidecar are
    both missing, which is the mount's fault, not the job's."""
    h = Harness(workspace)
    try:
        h.store.set_paused(True)
        drop(workspace, "a.jsonl")
        h.run_until(lambda: len(h.jobs()) == 1)
        aside = workspace / "jobs-unmounted"
        h.layout.jobs.rename(aside)
        h.layout.jobs.mkdir()
        h.store.set_paused(False)
        for _ in range(10):
            h.sup.tick()
            time.sleep(0.05)
        assert any(a["case"] == 45 and "gone or empty" in a["message"] for a in h.alerts())
        job = h.jobs()[0]
        assert job.status == "queued" and job.attempts == 0, job
        h.layout.jobs.rmdir()
        aside.rename(h.layout.jobs)
        h.sup.io_retry_at = 0.0  # skip the rest of the back-off
        h.run_until(lambda: _done(h))
        assert h.jobs()[0].status == "done"
    finally:
        h.close()


@pytest.mark.edge(47)
def test_wall_clock_jumps_do_not_fool_the_watchdog(workspace: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The wall clock cannot be changed on a shared machine: time.time is shifted by a day in this
    # process. The watchdog and back-offs use time.monotonic, which a clock change never moves.
    real_time = time.time
    monkeypatch.setenv("FAKE_STEPS", "6")
    monkeypatch.setattr(time, "time", lambda: real_time() + 86400.0)
    h = Harness(workspace, {"guards.hang_floor_s": 1.0, "guards.hang_multiple": 10.0})
    try:
        drop(workspace, "a.jsonl")
        h.run_until(lambda: h.sup.current is not None)
        monkeypatch.setattr(time, "time", lambda: real_time() - 86400.0)  # and back, past the start
        h.run_until(lambda: _done(h))
        assert not [a for a in h.alerts() if a["case"] == 70]
    finally:
        h.close()


def _chattr(flag: str, path: Path) -> bool:
    return shutil.which("chattr") is not None and subprocess.run(
        ["chattr", flag, str(path)], capture_output=True).returncode == 0


@pytest.mark.edge(50)
def test_a_file_that_cannot_be_moved_leaves_a_clear_state_and_is_retried(workspace: Path) -> None:
    h = Harness(workspace)
    try:
        h.store.set_paused(True)
        drop(workspace, "a.jsonl")
        h.run_until(lambda: len(h.jobs()) == 1)
        data = h.jobs()[0].path
        if os.geteuid() != 0 or not _chattr("+i", data):
            pytest.skip("needs root and chattr +i on this filesystem to make a file immovable")
        try:
            h.store.set_paused(False)
            h.run_until(lambda: h.jobs()[0].status == "done")
            for _ in range(10):
                h.sup.tick()
                time.sleep(0.05)
            assert data.exists() and h.sup.needs_repair  # never half-moved: still whole in jobs/
            assert any(a["case"] == 50 for a in h.alerts())
        finally:
            _chattr("-i", data)
        h.sup.io_retry_at = 0.0
        h.run_until(lambda: not h.sup.needs_repair)
        assert not data.exists() and (h.layout.done / data.name).exists()
    finally:
        h.close()


@pytest.mark.edge(46)
def test_unwritable_folders_are_reported_plainly_at_start(tmp_path: Path) -> None:
    """Root ignores permission bits, so the daemon runs as `nobody` (setpriv) against a runs/ folder
    it may not write."""
    setpriv = shutil.which("setpriv")
    if os.geteuid() != 0 or setpriv is None:
        pytest.skip("needs root and setpriv to drop privileges to nobody")
    base = Path(tempfile.mkdtemp(prefix="tc-perm-"))
    try:
        os.chmod(base, 0o755)
        (base / "config.toml").write_text("")
        configure(base, {**FAST, "paths.cache": str(base / "cache")})
        for name in ("queue", "adapters", "cache"):
            (base / name).mkdir()
            os.chmod(base / name, 0o777)
        (base / "runs").mkdir(mode=0o755)  # owned by root: not writable for nobody
        os.chmod(base / "config.toml", 0o644)
        done = subprocess.run([setpriv, "--reuid=nobody", "--regid=nogroup", "--clear-groups",
                               sys.executable, "-m", "trainconsole.console.cli", "--config", str(base / "config.toml"),
                               "daemon"], cwd=ROOT, capture_output=True, text=True, timeout=60,
                              env={**os.environ, "HOME": str(base)})
        assert done.returncode == 1, done.stderr
        assert "cannot write in" in done.stderr and str(base / "runs") in done.stderr
        assert "nobody" in done.stderr and "Traceback" not in done.stderr
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_alert_command_gets_json_on_stdin_never_blocks_and_bursts_are_deduplicated(workspace: Path) -> None:
    out = workspace / "paged.jsonl"
    hook = [sys.executable, "-c", f"import sys; open({str(out)!r}, 'a').write(sys.stdin.read() + '\\n')"]
    h = Harness(workspace, {"guards.alert_command": hook, "guards.alert_min_severity": "warning"})
    try:
        for _ in range(3):
            h.notifier.alert(25, "disk nearly full", severity="critical", key="disk")
        h.notifier.alert(None, "only logged", severity="info")
        h.notifier.wait(20)
        paged = [json.loads(line) for line in out.read_text().splitlines() if line.strip()]
        assert [p["message"] for p in paged] == ["disk nearly full"] and paged[0]["case"] == 25
    finally:
        h.close()


def test_a_slow_or_failing_alert_command_is_logged_not_waited_for(workspace: Path) -> None:
    slow = [sys.executable, "-c", "import time; time.sleep(30)"]
    h = Harness(workspace, {"guards.alert_command": slow})
    h.notifier.hook_timeout_s = 1.0
    try:
        began = time.monotonic()
        h.notifier.alert(25, "page me", severity="critical")
        assert time.monotonic() - began < 1.0  # returned at once: the hook runs in a thread
        h.notifier.wait(10)
        logs = [e for e in read_all(h.layout.engine_events) if e["type"] == "log"]
        assert any("timed out" in e["message"] for e in logs)
    finally:
        h.close()


def test_folder_modes_do_not_matter_to_this_helper(tmp_path: Path) -> None:
    from trainconsole.engine.daemon.resources import check_writable

    ro = tmp_path / "ro"
    ro.mkdir()
    assert check_writable([ro, tmp_path / "new" / "deep"]) == []
    assert stat.S_ISDIR((tmp_path / "new" / "deep").stat().st_mode)
