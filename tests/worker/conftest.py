"""Fixtures for the worker's tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.chatdata import arithmetic, write_jsonl
from tests.worker.wutil import make_spec, new_workspace, run_inprocess


@pytest.fixture(scope="session")
def finished_run(tmp_path_factory: pytest.TempPathFactory, shared_cache: Path) -> Path:
    """One real 8-step run (checkpoints at 4 and 8, a published adapter), shared read-only: tests
    copy what they damage. Returns the workspace."""
    ws = new_workspace(tmp_path_factory.mktemp("finished") / "ws", shared_cache)
    data = write_jsonl(ws / "data.jsonl", arithmetic(60))
    code, report = run_inprocess(make_spec(ws, "j0001", data))
    assert code == 0, report
    return ws
