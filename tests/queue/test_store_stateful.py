"""A model-based test of the store: hypothesis drives random sequences of enqueue, start, succeed,
fail, retry, reprioritise, hold, cancel and crashes (the process dies after a commit, before the
file move, and the store is reopened; or the database is wrecked and rebuilt), checking after every
step that each job is in exactly one state, the folders and the database agree, and attempts only
ever change as the retry policy says (never decreasing but by an operator's retry or an uncharged
interruption)."""

from __future__ import annotations

import os
import random
import shutil
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from trainconsole.engine.errors import ErrorClass
from trainconsole.engine.layout import Layout
from trainconsole.engine.store import Store
from trainconsole.engine.store.files import read_sidecar

from .conftest import Clock, Policy, make_layout

CLASSES = [ErrorClass.TRANSIENT, ErrorClass.OOM, ErrorClass.DATA, ErrorClass.INTERRUPTED, ErrorClass.BUG]
FOLDER = {"queued": "jobs", "held": "jobs", "running": "jobs", "done": "done", "failed": "failed",
          "cancelled": "failed"}


class StoreMachine(RuleBasedStateMachine):
    @initialize()
    def setup(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="tc-store-"))
        self.layout: Layout = make_layout(self.root)
        self.clock = Clock()
        self.policy = Policy(max_attempts=3)
        self.store = self._open()
        self.model: dict[str, dict[str, object]] = {}
        self.n = 0

    def _open(self) -> Store:
        return Store.open(self.layout, policy=self.policy, clock=self.clock, rng=random.Random(1))

    def teardown(self) -> None:
        if hasattr(self, "store"):
            self.store.close()
            shutil.rmtree(self.root, ignore_errors=True)

    def _ids(self, *statuses: str) -> list[str]:
        return sorted(j for j, m in self.model.items() if m["status"] in statuses)

    # -- rules ----------------------------------------------------------------------------------

    @rule(priority=st.sampled_from(["high", "normal", "low"]), dup=st.booleans())
    def enqueue(self, priority: str, dup: bool) -> None:
        self.n += 1
        src = self.root / "src" / f"f{self.n}.jsonl"
        src.parent.mkdir(exist_ok=True)
        content = b"same\n" if dup else f"job {self.n}\n".encode()
        src.write_bytes(content)
        from trainconsole.engine.store.files import hash_file

        sha, size = hash_file(src)
        job = self.store.add_job(f"name {self.n}.jsonl", src, sha, size, priority)
        earlier = [m for m in self.model.values() if m["sha"] == sha and m["status"] != "cancelled"]
        if earlier:
            assert job is None
        else:
            assert job is not None and job.id not in self.model
            assert all(int(job.id[1:]) > int(i[1:]) for i in self.model)
            self.model[job.id] = {"status": "queued", "attempts": 0, "sha": sha, "priority": priority}

    @rule(batch=st.lists(st.tuples(st.sampled_from(["high", "normal", "low"]), st.integers(0, 3)),
                         min_size=1, max_size=4))
    def enqueue_batch(self, batch: list[tuple[str, int]]) -> None:
        """Several files at once, as the inbox does; equal tags mean equal content."""
        from trainconsole.engine.store.add import NewFile
        from trainconsole.engine.store.files import hash_file

        files = []
        for priority, tag in batch:
            self.n += 1
            src = self.root / "src" / f"b{self.n}.jsonl"
            src.parent.mkdir(exist_ok=True)
            src.write_bytes(f"batch content {tag}\n".encode())
            sha, size = hash_file(src)
            files.append(NewFile(f"b {self.n}.jsonl", src, sha, size, priority, move=True))
        results = self.store.add_files(files)
        for f, result in zip(files, results, strict=True):
            assert result.error is None
            taken = {m["sha"] for m in self.model.values() if m["status"] != "cancelled"}
            if f.sha256 in taken:
                assert result.job is None and f.path.exists()
            else:
                assert result.job is not None and not f.path.exists()
                self.model[result.job.id] = {"status": "queued", "attempts": 0, "sha": f.sha256,
                                             "priority": f.priority}

    @precondition(lambda self: self._ids("queued"))
    @rule(data=st.data())
    def start(self, data: st.DataObject) -> None:
        job_id = data.draw(st.sampled_from(self._ids("queued")))
        job = self.store.start(job_id, pid=os.getpid(), pid_start=1.0)
        self.model[job_id].update(status="running", attempts=int(self.model[job_id]["attempts"]) + 1)  # type: ignore[call-overload]
        assert job.attempts == self.model[job_id]["attempts"]

    @precondition(lambda self: self._ids("running"))
    @rule(data=st.data())
    def succeed(self, data: st.DataObject) -> None:
        job_id = data.draw(st.sampled_from(self._ids("running")))
        self.store.succeed(job_id)
        self.model[job_id]["status"] = "done"

    @precondition(lambda self: self._ids("running"))
    @rule(data=st.data(), cls=st.sampled_from(CLASSES))
    def fail(self, data: st.DataObject, cls: ErrorClass) -> None:
        job_id = data.draw(st.sampled_from(self._ids("running")))
        job = self.store.fail_attempt(job_id, cls, "injected")
        m = self.model[job_id]
        if cls is ErrorClass.INTERRUPTED:
            m.update(status="queued", attempts=int(m["attempts"]) - 1)  # type: ignore[call-overload]
        elif cls in (ErrorClass.DATA, ErrorClass.BUG) or int(m["attempts"]) >= 3:  # type: ignore[call-overload]
            m["status"] = "failed"
        else:
            m["status"] = "queued"
        assert (job.status, job.attempts) == (m["status"], m["attempts"])

    @precondition(lambda self: self._ids("failed", "cancelled"))
    @rule(data=st.data())
    def retry(self, data: st.DataObject) -> None:
        job_id = data.draw(st.sampled_from(self._ids("failed", "cancelled")))
        self.store.retry(job_id)
        self.model[job_id].update(status="queued", attempts=0)

    @rule()
    def retry_all(self) -> None:
        got = {j.id for j in self.store.retry_all_failed()}
        assert got == set(self._ids("failed"))
        for job_id in got:
            self.model[job_id].update(status="queued", attempts=0)

    @precondition(lambda self: self._ids("queued", "held", "running"))
    @rule(data=st.data(), priority=st.sampled_from(["high", "normal", "low"]))
    def reprioritise(self, data: st.DataObject, priority: str) -> None:
        job_id = data.draw(st.sampled_from(self._ids("queued", "held", "running")))
        self.store.set_priority(job_id, priority)
        self.model[job_id]["priority"] = priority

    @precondition(lambda self: self._ids("queued", "held"))
    @rule(data=st.data())
    def hold_or_release(self, data: st.DataObject) -> None:
        job_id = data.draw(st.sampled_from(self._ids("queued", "held")))
        if self.model[job_id]["status"] == "queued":
            self.store.hold(job_id)
            self.model[job_id]["status"] = "held"
        else:
            self.store.release(job_id)
            self.model[job_id]["status"] = "queued"

    @precondition(lambda self: self._ids("queued", "held"))
    @rule(data=st.data())
    def cancel(self, data: st.DataObject) -> None:
        job_id = data.draw(st.sampled_from(self._ids("queued", "held")))
        self.store.cancel(job_id)
        self.model[job_id]["status"] = "cancelled"

    @precondition(lambda self: self._ids("queued", "running"))
    @rule(data=st.data())
    def crash_between_commit_and_move(self, data: st.DataObject) -> None:
        """The process dies after the database commit and before the file moves."""
        job_id = data.draw(st.sampled_from(self._ids("queued", "running")))
        self.store.db.move_files = lambda *a, **k: None  # type: ignore[method-assign]
        if self.model[job_id]["status"] == "running":
            self.store.succeed(job_id)
            self.model[job_id]["status"] = "done"
        else:
            self.store.cancel(job_id)
            self.model[job_id]["status"] = "cancelled"
        self.store.db.conn.close()  # no orderly close
        self.store = self._open()

    @precondition(lambda self: self._ids("queued", "running"))
    @rule(data=st.data())
    def crash_mid_transaction(self, data: st.DataObject) -> None:
        """Killed inside a write: the connection goes without a commit; nothing of it may stay."""
        job_id = data.draw(st.sampled_from(self._ids("queued", "running")))
        conn = self.store.db.conn
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("UPDATE jobs SET status='done', attempts=attempts+100 WHERE id=?", (job_id,))
        conn.execute("UPDATE meta SET value='1' WHERE key='next_seq'")
        conn.close()
        self.store = self._open()

    @rule()
    def crash_and_reopen(self) -> None:
        self.store.db.conn.close()
        self.store = self._open()

    @rule()
    def database_wrecked(self) -> None:
        self.store.close()
        for suffix in ("", "-wal", "-shm"):
            Path(str(self.layout.state_db) + suffix).unlink(missing_ok=True)
        self.layout.state_db.write_bytes(b"this is not a database" * 50)
        self.store = self._open()
        for m in self.model.values():
            if m["status"] == "running":  # a job running when the database died is queued again
                m["status"] = "queued"

    @rule(seconds=st.floats(min_value=0, max_value=5000))
    def time_passes(self, seconds: float) -> None:
        self.clock.advance(seconds)

    # -- invariants -----------------------------------------------------------------------------

    @invariant()
    def database_matches_the_model(self) -> None:
        if not hasattr(self, "store"):
            return
        jobs = {j.id: j for j in self.store.jobs()}
        assert set(jobs) == set(self.model)
        for job_id, m in self.model.items():
            job = jobs[job_id]
            assert (job.status, job.attempts, job.priority) == (m["status"], m["attempts"], m["priority"])

    @invariant()
    def folders_and_database_agree(self) -> None:
        if not hasattr(self, "store"):
            return
        found: dict[str, list[str]] = {}
        for folder in ("jobs", "done", "failed"):
            for path in (self.layout.queue / folder).iterdir():
                if path.name.endswith(".jsonl"):
                    found.setdefault(path.name.split("--")[0], []).append(folder)
        assert set(found) == set(self.model)
        for job in self.store.jobs():
            assert found[job.id] == [FOLDER[job.status]], job.id  # exactly one place, the right one
            side = read_sidecar(job.path.parent / f"{job.id}.json")
            assert side is not None and side["attempts"] == job.attempts
        leftovers = [p for p in self.layout.tmp.iterdir() if p.name.startswith("store-")]
        assert leftovers == []


StoreMachine.TestCase.settings = settings(
    max_examples=int(os.environ.get("TC_STATEFUL_EXAMPLES", "40")), stateful_step_count=30, deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
test_store_state_machine = StoreMachine.TestCase
