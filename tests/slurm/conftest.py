"""The session's Slurm cluster (``tests/slurm/cluster.py``): started once, stopped by pid at the end.

Where Slurm is not installed, not startable or we are not root, every test here skips with the
reason, and the reason is also printed when the fixture first meets it (``-ra`` lists it again
in the summary), so a missing cluster is never a silent pass.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.slurm.cluster import Cluster, SlurmUnavailable, start_cluster

_unavailable: list[str] = []


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Iterator[Cluster]:
    if _unavailable:
        pytest.skip(_unavailable[0])
    base = tmp_path_factory.mktemp("slurm")
    try:
        cluster = start_cluster(base)
    except SlurmUnavailable as exc:
        reason = f"Slurm tests skipped: {exc}"
        _unavailable.append(reason)
        reporter = request.config.pluginmanager.get_plugin("terminalreporter")
        capture = request.config.pluginmanager.get_plugin("capturemanager")
        if reporter is not None and capture is not None:
            with capture.global_and_fixture_disabled():  # past the fd capture, onto the terminal
                reporter.write_line(f"\n{reason}", yellow=True)
        pytest.skip(reason)
    before = os.environ.get("SLURM_CONF")
    os.environ["SLURM_CONF"] = str(cluster.conf)  # every client this session starts uses ours
    try:
        yield cluster
    finally:
        cluster.shutdown()
        if before is None:
            os.environ.pop("SLURM_CONF", None)
        else:
            os.environ["SLURM_CONF"] = before


@pytest.fixture
def slurm(slurm_cluster: Cluster) -> Iterator[Cluster]:
    """The cluster, with no job of an earlier test left on it (before or after)."""
    slurm_cluster.cancel_all()
    yield slurm_cluster
    slurm_cluster.cancel_all()


@pytest.fixture
def slurm_run_dir(tmp_path: Path) -> Path:
    run = tmp_path / "runs" / "j0001"
    run.mkdir(parents=True)
    return run
