"""A job database written by schema 1 (worker create times as floats, intents without their
owner's identity) is migrated when opened, and a worker started before the upgrade is still
recognised (case 43: recovery must end it, not leave it training beside a second worker)."""

from __future__ import annotations

import sqlite3
import subprocess
from pathlib import Path

import psutil
import pytest

from tests.queue.conftest import add, make_layout
from trainconsole.engine.daemon.recovery import find_orphans
from trainconsole.engine.procid import LEGACY, same_process
from trainconsole.engine.store import SCHEMA_VERSION, Store
from trainconsole.engine.store.schema import DDL


def _schema_1(path: Path) -> sqlite3.Connection:
    ddl = DDL.replace("pid_start TEXT", "pid_start REAL").replace(",\n    owner_start TEXT", "")
    ddl = ddl.replace(",\n    experiment TEXT NOT NULL DEFAULT '{}',\n    last_loss REAL,\n    eval_loss REAL,"
                      "\n    adapter TEXT", "")
    ddl = ddl.replace(",\n    slurm_id INTEGER,\n    node TEXT,\n    slurm_reason TEXT", "")
    ddl = ddl.replace(",\n    experiment TEXT NOT NULL DEFAULT '{}'", "")
    assert ddl != DDL and "owner_start" not in ddl and "slurm_id" not in ddl and "experiment" not in ddl
    conn = sqlite3.connect(path, isolation_level=None)
    conn.executescript(ddl)
    conn.execute("PRAGMA user_version=1")
    conn.execute("INSERT INTO meta(key, value) VALUES ('next_seq', '1'), ('paused', '0')")
    return conn


@pytest.mark.edge(43)
def test_a_schema_1_database_is_migrated_and_its_running_worker_still_found(tmp_path: Path) -> None:
    layout = make_layout(tmp_path)
    worker = subprocess.Popen(["sleep", "60"])
    try:
        with Store.open(layout) as store:
            job_id = add(store, tmp_path, "a.jsonl")
        # The same rows in a schema-1 file: the worker's psutil create time as a REAL.
        old = sqlite3.connect(layout.state_db)
        names = [d[0] for d in old.execute("SELECT * FROM jobs").description
                 if d[0] not in ("slurm_id", "node", "slurm_reason",  # schema 3's
                                 "experiment", "last_loss", "eval_loss", "adapter")]  # 4's and 5's
        rows = old.execute(f"SELECT {','.join(names)} FROM jobs").fetchall()
        old.close()
        layout.state_db.unlink()
        conn = _schema_1(layout.state_db)
        conn.executemany(f"INSERT INTO jobs({','.join(names)}) VALUES ({','.join('?' * len(names))})", rows)
        created = psutil.Process(worker.pid).create_time()
        conn.execute("UPDATE jobs SET status='running', pid=?, pid_start=? WHERE id=?",
                     (worker.pid, created, job_id))
        conn.execute("UPDATE meta SET value='2' WHERE key='next_seq'")
        conn.close()

        with Store.open(layout, repair=False) as store:
            (job,) = store.jobs()
        assert job.pid == worker.pid and job.pid_start is not None and job.pid_start.startswith(LEGACY)
        assert same_process(job.pid, job.pid_start)
        assert [(o.pid, o.job_id) for o in find_orphans([job], layout)] == [(worker.pid, job_id)]
        conn = sqlite3.connect(layout.state_db)
        try:
            assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 6
            columns = [r[1] for r in conn.execute("PRAGMA table_info(intents)")]
            assert columns[-2:] == ["owner_start", "experiment"]
            jobs = [r[1] for r in conn.execute("PRAGMA table_info(jobs)")]
            assert jobs[-7:] == ["slurm_id", "node", "slurm_reason", "experiment", "last_loss", "eval_loss",
                                 "adapter"]
            assert conn.execute("SELECT typeof(pid_start) FROM jobs").fetchone()[0] == "text"
        finally:
            conn.close()
    finally:
        worker.kill()
        worker.wait()


def test_a_schema_2_database_gains_the_cluster_columns_empty(tmp_path: Path) -> None:
    layout = make_layout(tmp_path)
    with Store.open(layout) as store:
        job_id = add(store, tmp_path, "a.jsonl")
    conn = sqlite3.connect(layout.state_db, isolation_level=None)
    for column in ("slurm_reason", "node", "slurm_id"):
        conn.execute(f"ALTER TABLE jobs DROP COLUMN {column}")
    conn.execute("PRAGMA user_version=2")
    conn.close()
    with Store.open(layout, repair=False) as store:
        (job,) = store.jobs()
        assert job.id == job_id and (job.slurm_id, job.node, job.slurm_reason) == (None, None, None)
        store.start(job_id)
        store.set_slurm(job_id, 4312, "gpu-07")
        assert store.require(job_id).slurm_id == 4312 and "running on gpu-07" in store.reason(store.require(job_id))


def test_a_schema_3_database_gains_experiments_and_results_and_its_jobs_stay_main(tmp_path: Path) -> None:
    """Jobs queued before experiments existed: lineage main, settings read from config.toml when
    they run (an empty experiment), no results yet; the upgrade is steps 4 and 5, in order."""
    layout = make_layout(tmp_path)
    with Store.open(layout) as store:
        job_id = add(store, tmp_path, "a.jsonl")
    conn = sqlite3.connect(layout.state_db, isolation_level=None)
    for column in ("adapter", "eval_loss", "last_loss", "experiment"):
        conn.execute(f"ALTER TABLE jobs DROP COLUMN {column}")
    conn.execute("ALTER TABLE intents DROP COLUMN experiment")
    conn.execute("PRAGMA user_version=3")
    conn.close()
    with Store.open(layout, repair=False) as store:
        (job,) = store.jobs()
        assert job.id == job_id and job.lineage == "main" and job.experiment.settings == {}
        assert (job.last_loss, job.eval_loss, job.adapter) == (None, None, None)
        store.start(job_id)
        store.progress(job_id, 3, 10, loss=1.5, eval_loss=2.5)
        store.progress(job_id, 4, 10, loss=1.25)  # a step without an evaluation keeps the last one
        job = store.succeed(job_id, adapter="/x/0001-j0001")
        assert (job.last_loss, job.eval_loss, job.adapter, job.step) == (1.25, 2.5, "/x/0001-j0001", 4)
