"""A job whose run folder is held by a foreground run does not block the queue: it waits,
uncharged, with its reason in ``status``, the jobs behind it run, and it starts once the folder is
free. The holder is a real process holding the folder's lock as `trainconsole train` does."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.daemon.harness import ROOT, Harness, drop
from tests.helpers import run_cli

HOLDER = """
import sys, time
from pathlib import Path
from trainconsole.engine.lock import lock_run_folder
fd = lock_run_folder(Path(sys.argv[1]))
print("held", flush=True)
time.sleep(600)
"""


@pytest.mark.edge(48)
def test_a_busy_run_folder_lets_the_jobs_behind_it_run(workspace: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_STEPS", "3")
    h = Harness(workspace)
    run_dir = h.layout.run_dir("j0001")
    run_dir.mkdir(parents=True)
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(run_dir)], cwd=ROOT, stdout=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        h.store.set_paused(True)  # all three queued before any starts: j0001 is first in line
        for name in ("a.jsonl", "b.jsonl", "c.jsonl"):
            drop(workspace, name)
        h.run_until(lambda: len(h.jobs()) == 3)
        h.store.set_paused(False)
        h.run_until(lambda: [j.status for j in h.jobs()] == ["queued", "done", "done"])
        first = h.jobs()[0]
        assert first.id == "j0001" and first.attempts == 0 and first.error_class is None

        # Its reason, as an operator reads it, and one alert saying why (not one per look).
        doc = json.loads(run_cli("--config", str(workspace / "config.toml"), "status", "--json").stdout)
        (row,) = [j for j in doc["jobs"] if j["id"] == "j0001"]
        assert row["reason"].startswith("waiting: run folder busy:") and str(run_dir) in row["reason"], row
        busy = [a for a in h.alerts() if a.get("key") == "run-busy:j0001"]
        assert len(busy) == 1 and "the jobs behind it run meanwhile" in busy[0]["message"]

        holder.kill()
        holder.wait(10)
        h.run_until(lambda: [j.status for j in h.jobs()] == ["done", "done", "done"], timeout=60)
        assert h.jobs()[0].attempts == 1
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait(10)
        h.close()

