"""A real full disk (case 25): the runs folder on a tmpfs larger than the engine's "nearly full"
threshold (hardware.min_free_disk_mb), so the job starts with room to spare and the pause comes
from the worker meeting ENOSPC, not from a disk too small to begin with. The disk is filled from
outside so the second checkpoint of a real training run does not fit."""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.daemon.harness import TINY, Harness, drop
from tests.daemon.realrun import REAL
from trainconsole.engine import checkpoints as ckpt

NEARLY_FULL_MB = 16  # hardware.min_free_disk_mb in the test
DISK_MB = 3 * NEARLY_FULL_MB


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mount = tmp_path / "small-disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={DISK_MB}m", "tmpfs", str(mount)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def _fill_leaving(filler: Path, room: int) -> None:
    """Fill the disk to ENOSPC (the worker writes meanwhile, so a size measured first can be
    stale), then give back ``room`` bytes: less than any save needs."""
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    try:
        while True:
            os.write(fd, b"\0" * 65536)
    except OSError as exc:
        assert exc.errno == errno.ENOSPC, exc
    try:
        while True:
            os.write(fd, b"\0" * 512)
    except OSError as exc:
        assert exc.errno == errno.ENOSPC, exc
    finally:
        os.close(fd)
    os.truncate(filler, max(0, filler.stat().st_size - room))


@pytest.mark.edge(25)
def test_disk_full_during_a_save_pauses_without_charging_and_resumes(workspace: Path, tiny_model: Path,
                                                                      small_disk: Path) -> None:
    from trainconsole.engine.daemon.launcher import launcher_for

    h = Harness(workspace, {**TINY, **REAL, "training.max_steps": 4, "paths.runs": str(small_disk / "runs"),
                            "paths.adapters": str(small_disk / "adapters"),
                            "hardware.min_free_disk_mb": NEARLY_FULL_MB}, launcher_factory=launcher_for)
    try:
        drop(workspace, "a.jsonl")
        h.run_until(lambda: h.sup.current is not None, timeout=60)
        # Room to spare when it started: nothing below is the guard's "nearly full" threshold.
        assert shutil.disk_usage(small_disk).free > 2 * NEARLY_FULL_MB * 2**20
        assert not [a for a in h.alerts() if a["case"] == 25]
        ckpts = h.layout.run_dir(h.jobs()[0].id) / "checkpoints"
        # Once the first checkpoint exists, fill the disk from outside, leaving less than a save needs.
        h.run_until(lambda: bool(ckpt.list_checkpoints(ckpts)), timeout=240)
        filler = small_disk / "filler"
        _fill_leaving(filler, 4 * 1024)
        h.run_until(lambda: h.store.paused() or h.jobs()[0].status != "running", timeout=240)
        job = h.jobs()[0]
        assert h.store.paused() and job.status == "queued", (job.status, job.error)
        assert job.error_class == "disk_full" and job.attempts == 0  # not charged
        assert "treated as a full disk" not in (job.error or "")  # detected, not inferred from free space
        # The worker itself knew: torch's writer hides ENOSPC in a RuntimeError, read as disk full.
        report = json.loads((h.layout.run_dir(job.id) / "report.json").read_text())
        assert report["error_class"] == "disk_full", report
        assert any(a["case"] == 25 and "paused" in a["message"] for a in h.alerts())
        # The checkpoint saved before the disk filled is intact.
        for _, path in ckpt.list_checkpoints(ckpts):
            assert isinstance(ckpt.verify(path, fingerprint=None), ckpt.Checkpoint)
        filler.unlink()  # space comes back: the engine resumes by itself
        h.sup.guard._last_mono = None
        h.run_until(lambda: h.jobs()[0].status == "done", timeout=240)
        assert not h.store.paused()
    finally:
        h.close()
