"""A real lost mount (case 45): the queue's jobs folder is a tmpfs, lazily unmounted while a job
trains (as a network share drops: the mount point stays, empty), then mounted again. The engine
backs off with one alert, its back-off grows for as long as the folder stays away (no phase that
still works resets it), no attempt is charged, and once the mount is back the finished job is
filed and the next one runs."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.daemon.harness import Harness, drop


def _mount(*args: str) -> None:
    done = subprocess.run(["mount", *args], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount here (mount {' '.join(args)}): {done.stderr.strip()}")


@pytest.fixture
def share(tmp_path: Path) -> Iterator[Path]:
    """A tmpfs that outlives being unmounted from where the engine sees it: it stays mounted at
    ``share`` and is bind-mounted onto the jobs folder, so a lazy unmount of the bind drops it
    from the engine's view and a new bind brings the same files back."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    path = tmp_path / "share"
    path.mkdir()
    _mount("-t", "tmpfs", "-o", "size=16m", "tmpfs", str(path))
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


@pytest.mark.edge(45)
def test_a_jobs_folder_lost_mid_job_backs_off_then_resumes_when_mounted_again(
        workspace: Path, share: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_STEPS", "30")
    monkeypatch.setenv("FAKE_STEP_S", "0.1")
    jobs = workspace / "queue" / "jobs"
    jobs.mkdir(parents=True)
    _mount("--bind", str(share), str(jobs))
    h = Harness(workspace)
    try:
        drop(workspace, "a.jsonl")
        drop(workspace, "b.jsonl")
        h.run_until(lambda: h.sup.current is not None and len(h.jobs()) == 2)
        first = h.sup.current.job.id
        assert (share / h.jobs()[0].path.name).is_file()  # the copies really live on the share
        subprocess.run(["umount", "-l", str(jobs)], check=True)
        assert not any(jobs.iterdir())  # the mount point is left behind, empty
        # The job ends while the share is away: its file cannot be filed, the next cannot start.
        delays: list[float] = []
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and (h.sup.current is not None or len(delays) < 6):
            h.sup.tick()
            if h.sup.io_failures and (not delays or h.sup.io_retry_at - time.monotonic() > 0):
                delays.append(h.sup.io_failures)
            time.sleep(0.05)
        assert h.sup.current is None
        failures = h.sup.io_failures
        assert failures >= 2, failures
        # The back-off only grew while the folder was away: never reset by phases that worked.
        assert delays == sorted(delays) and delays[-1] == failures, delays
        lost = [a for a in h.alerts() if a["case"] == 45]
        assert len(lost) == 1 and "is mounted" in lost[0]["message"], lost  # one alert, not one a tick
        waiting = next(j for j in h.jobs() if j.id != first)
        assert waiting.status == "queued" and waiting.attempts == 0, waiting
        _mount("--bind", str(share), str(jobs))  # the share is back
        h.run_until(lambda: all(j.status == "done" for j in h.jobs()), timeout=120)
        for job in h.jobs():
            assert job.attempts == 1, job  # the outage cost no attempt
            assert job.path.is_file() and job.path.parent == h.layout.done
        assert h.sup.io_failures == 0
        assert any("usable again" in a["message"] for a in h.alerts())
    finally:
        h.close()
        subprocess.run(["umount", "-l", str(jobs)], capture_output=True)
