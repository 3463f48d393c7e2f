"""The inbox against hostile files, for real: FIFOs, sockets, symlink loops and escapes, names no
shell would survive, files still being written, duplicates, files that vanish or move."""

from __future__ import annotations

import os
import socket
import stat
from pathlib import Path

import pytest

from trainconsole.engine.daemon.inbox import Inbox, scan
from trainconsole.engine.events import EventLog
from trainconsole.engine.layout import Layout
from trainconsole.engine.store import Store
from trainconsole.engine.store.files import hash_file

from .conftest import alerts, write_job_file


class Mono:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def inbox(layout: Layout) -> tuple[Inbox, Mono]:
    mono = Mono()
    return Inbox(layout, clock=mono), mono


def settle(inbox: Inbox, mono: Mono, store: Store, events: EventLog | None = None, scans: int = 3,
           dedupe: bool = True) -> list[str]:
    """Scan as the daemon does, a stable period apart; returns the ids taken."""
    taken = []
    for _ in range(scans):
        taken += [j.id for j in inbox.scan(store, stable_s=1.0, dedupe=dedupe, events=events)]
        mono.now += 1.5
    return taken


def notices(layout: Layout, case: int | None) -> list[dict[str, object]]:
    return [a for a in alerts(layout) if a["case"] == case]


@pytest.fixture
def events(layout: Layout) -> EventLog:
    return EventLog(layout.engine_events)


def test_a_dropped_file_becomes_a_job_with_the_folders_priority(layout: Layout, store: Store, inbox,
                                                                events: EventLog) -> None:
    box, mono = inbox
    write_job_file(layout.incoming / "n.jsonl")
    write_job_file(layout.incoming_for("high") / "h.jsonl")
    write_job_file(layout.incoming_for("low") / "l.jsonl")
    settle(box, mono, store, events)
    got = {j.name: j.priority for j in store.jobs()}
    assert got == {"n.jsonl": "normal", "h.jsonl": "high", "l.jsonl": "low"}
    assert sorted(p.name for p in layout.incoming.rglob("*") if p.is_file()) == []


def test_files_dropped_together_become_jobs_in_name_order(layout: Layout, store: Store, inbox,
                                                          events: EventLog) -> None:
    box, mono = inbox
    names = [f"{n:02d}-part.jsonl" for n in range(12)]
    for name in reversed(names):  # written last-first: neither write order nor the folder's decides
        write_job_file(layout.incoming / name)
    settle(box, mono, store, events)
    assert [j.name for j in sorted(store.jobs(), key=lambda j: j.id)] == names


def test_a_file_still_being_written_is_not_taken(layout: Layout, store: Store, inbox) -> None:
    box, mono = inbox
    path = write_job_file(layout.incoming / "growing.jsonl")
    for _ in range(5):
        assert box.scan(store, stable_s=1.0) == []
        with open(path, "a") as fh:  # the writer is still appending
            fh.write(path.read_text().splitlines()[0] + "\n")
        mono.now += 1.5
    assert box.scan(store, stable_s=1.0) == []  # unchanged now, but not yet for stable_s
    mono.now += 1.5
    (job,) = box.scan(store, stable_s=1.0)
    assert job.size == 6 * len(path.name) or job.size > 0
    assert hash_file(job.path)[0] == job.sha256


def test_a_file_held_open_by_its_writer_waits_however_long_the_pause(layout: Layout, store: Store, inbox,
                                                                      events: EventLog) -> None:
    box, mono = inbox
    path = write_job_file(layout.incoming / "slow-copy.jsonl")
    writer = open(path, "ab")  # noqa: SIM115 - a copy that has stalled mid-way
    try:
        assert settle(box, mono, store, events, scans=6) == []  # stable for 9 s, but still open
    finally:
        writer.close()
    assert len(settle(box, mono, store, events)) == 1


def test_hidden_files_are_transfers_in_progress_and_passed_over_silently(layout: Layout, store: Store,
                                                                         inbox, events: EventLog) -> None:
    box, mono = inbox
    write_job_file(layout.incoming / ".data.jsonl.Xa8f3q")  # rsync's staging name
    write_job_file(layout.incoming / ".hidden.jsonl")
    assert settle(box, mono, store, events) == [] and alerts(layout) == []


@pytest.mark.edge(54)
@pytest.mark.timeout(30)
def test_symlink_loops_and_escapes_are_refused_once(layout: Layout, store: Store, inbox, events: EventLog,
                                                    tmp_path: Path) -> None:
    box, mono = inbox
    inc = layout.incoming
    os.symlink("loop-b.jsonl", inc / "loop-a.jsonl")
    os.symlink("loop-a.jsonl", inc / "loop-b.jsonl")
    os.symlink("self.jsonl", inc / "self.jsonl")
    outside = write_job_file(tmp_path / "outside" / "secret.jsonl")
    os.symlink(outside, inc / "escape.jsonl")
    os.symlink("../../..", inc / "up.jsonl")
    os.symlink("missing-target.jsonl", inc / "dangling.jsonl")
    assert settle(box, mono, store, events, scans=4) == []
    assert store.jobs() == []
    assert outside.read_text().startswith("{")  # untouched
    got = notices(layout, 54)
    assert len(got) == 6  # one per link, not one per scan
    assert any("loop" in str(a["message"]) for a in got)
    assert any("outside the queue folder" in str(a["message"]) for a in got)
    for name in ("loop-a.jsonl", "self.jsonl", "escape.jsonl", "dangling.jsonl"):
        assert os.path.islink(inc / name)  # left for the operator


@pytest.mark.edge(54)
def test_a_symlink_to_a_file_inside_the_queue_is_taken_as_a_copy(layout: Layout, store: Store, inbox,
                                                                 events: EventLog) -> None:
    box, mono = inbox
    target = write_job_file(layout.queue / "staging" / "real.jsonl")
    os.symlink(target, layout.incoming / "link.jsonl")
    (job_id,) = settle(box, mono, store, events)
    job = store.require(job_id)
    assert job.name == "link.jsonl" and job.path.read_bytes() == target.read_bytes()
    assert target.is_file() and not os.path.lexists(layout.incoming / "link.jsonl")


@pytest.mark.timeout(30)
def test_fifos_sockets_and_folders_are_never_opened(layout: Layout, store: Store, inbox, events: EventLog,
                                                    tmp_path: Path) -> None:
    box, mono = inbox
    os.mkfifo(layout.incoming / "pipe.jsonl")
    os.mkfifo(layout.queue / "inner-fifo")
    os.symlink(layout.queue / "inner-fifo", layout.incoming / "to-fifo.jsonl")
    sock_path = layout.incoming / "s.jsonl"
    sock = None
    if len(os.fsencode(sock_path)) < 100:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.bind(os.fspath(sock_path))
    (layout.incoming / "folder.jsonl").mkdir()
    try:
        assert settle(box, mono, store, events) == []  # a blocking open would hang here
    finally:
        if sock is not None:
            sock.close()
    assert stat.S_ISFIFO(os.lstat(layout.incoming / "pipe.jsonl").st_mode)
    messages = [str(a["message"]) for a in alerts(layout)]
    assert sum("is a FIFO" in m for m in messages) == 2
    assert len(messages) == len(set(messages))


@pytest.mark.edge(55)
def test_any_name_works(layout: Layout, store: Store, inbox, events: EventLog) -> None:
    box, mono = inbox
    names = [
        "with space.jsonl", "quote's \"double\".jsonl", "new\nline.jsonl", "-rf --leading-dash.jsonl",
        "$(touch pwned) `x`; rm -rf ~.jsonl", "ünïcødé 训练 🚀.jsonl", "back\\slash.jsonl",
        "tab\tand\rcr.jsonl", "bad\udcff\udcfebytes.jsonl", "*?[glob].jsonl", "dots..in..name.jsonl.jsonl",
        ("x" * 240) + ".jsonl",
    ]
    for name in names:
        write_job_file(layout.incoming / name)
    taken = settle(box, mono, store, events)
    assert len(taken) == len(names)
    assert sorted(j.name for j in store.jobs()) == sorted(names)
    for job in store.jobs():
        assert job.path.is_file() and job.path.name.isascii() and " " not in job.path.name
    assert not (layout.queue / "pwned").exists() and not Path("pwned").exists()
    assert [p for p in layout.incoming.iterdir() if p.is_file()] == []


@pytest.mark.edge(56)
def test_files_without_the_jsonl_extension_get_one_notice_each(layout: Layout, store: Store, inbox,
                                                               events: EventLog) -> None:
    box, mono = inbox
    for name in ("README", "data.json", "notes.txt", "train.jsonl.bak"):
        (layout.incoming / name).write_text("{}\n")
    assert settle(box, mono, store, events, scans=5) == []
    got = notices(layout, 56)
    assert len(got) == 4
    assert sorted(p.name for p in layout.incoming.iterdir() if p.is_file()) == [
        "README", "data.json", "notes.txt", "train.jsonl.bak"]
    # Renamed by the operator, it is taken.
    os.rename(layout.incoming / "data.json", layout.incoming / "data.jsonl")
    assert len(settle(box, mono, store, events)) == 1


@pytest.mark.edge(53)
def test_same_name_twice_makes_two_jobs(layout: Layout, store: Store, inbox, events: EventLog) -> None:
    box, mono = inbox
    write_job_file(layout.incoming / "same.jsonl", '{"messages": [{"role": "user", "content": "1"}]}\n')
    write_job_file(layout.incoming_for("high") / "same.jsonl", '{"messages": [{"role": "user", "content": "2"}]}\n')
    settle(box, mono, store, events)
    write_job_file(layout.incoming / "same.jsonl", '{"messages": [{"role": "user", "content": "3"}]}\n')
    settle(box, mono, store, events)
    jobs = store.jobs()
    assert [j.name for j in jobs] == ["same.jsonl"] * 3
    assert len({j.path for j in jobs}) == 3


@pytest.mark.edge(53)
def test_same_content_twice_makes_one_job_with_one_notice(layout: Layout, store: Store, inbox,
                                                          events: EventLog) -> None:
    box, mono = inbox
    text = '{"messages": [{"role": "user", "content": "dup"}]}\n'
    write_job_file(layout.incoming / "first.jsonl", text)
    settle(box, mono, store, events)
    write_job_file(layout.incoming / "second.jsonl", text)
    assert settle(box, mono, store, events, scans=4) == []
    assert len(store.jobs()) == 1
    got = notices(layout, 53)
    assert len(got) == 1 and "j0001" in str(got[0]["message"])
    assert (layout.incoming / "second.jsonl").exists()  # left for the operator
    # With dedupe off (a restart with queue.dedupe = false) the copy is queued.
    assert len(settle(Inbox(layout, clock=mono), mono, store, events, dedupe=False)) == 1


@pytest.mark.edge(51)
def test_deleting_the_original_after_ingest_changes_nothing(layout: Layout, store: Store, inbox,
                                                            events: EventLog, tmp_path: Path) -> None:
    box, mono = inbox
    write_job_file(layout.incoming / "a.jsonl")
    (job_id,) = settle(box, mono, store, events)
    # Added by the CLI path (a copy), then the user deletes their file.
    user_file = write_job_file(tmp_path / "user" / "b.jsonl")
    sha, size = hash_file(user_file)
    job_b = store.add_job("b.jsonl", user_file, sha, size)
    assert job_b is not None
    user_file.unlink()
    for jid in (job_id, job_b.id):
        job = store.require(jid)
        assert job.path.is_file() and hash_file(job.path) == (job.sha256, job.size)


@pytest.mark.edge(51)
def test_a_file_deleted_before_it_is_taken_is_simply_gone(layout: Layout, store: Store, inbox,
                                                          events: EventLog, tmp_path: Path) -> None:
    box, mono = inbox
    path = write_job_file(layout.incoming / "brief.jsonl")
    assert box.scan(store, stable_s=1.0, events=events) == []
    path.unlink()
    assert settle(box, mono, store, events) == []
    # And one that vanishes at the very moment of the move: a clear DataError, nothing recorded.
    from trainconsole.engine.errors import DataError

    with pytest.raises(DataError, match="vanished") as info:
        store.add_job("ghost.jsonl", layout.incoming / "ghost.jsonl", "0" * 64, 1, move=True)
    assert info.value.case == 51
    assert store.db.conn.execute("SELECT COUNT(*) FROM intents").fetchone()[0] == 0
    assert store.jobs() == []


@pytest.mark.edge(52)
def test_a_file_moved_mid_processing_changes_nothing(layout: Layout, store: Store, inbox, events: EventLog,
                                                     tmp_path: Path) -> None:
    box, mono = inbox
    # Moved within the inbox while being examined: taken once, under its final name.
    path = write_job_file(layout.incoming / "draft.jsonl")
    box.scan(store, stable_s=1.0, events=events)
    os.rename(path, layout.incoming / "final.jsonl")
    taken = settle(box, mono, store, events)
    assert [store.require(j).name for j in taken] == ["final.jsonl"]
    # Moved away by the user while its job runs: the engine's copy is what it trains on.
    user_file = write_job_file(tmp_path / "user" / "c.jsonl")
    sha, size = hash_file(user_file)
    job = store.add_job("c.jsonl", user_file, sha, size)
    assert job is not None
    store.start(job.id)
    os.rename(user_file, tmp_path / "user" / "elsewhere.jsonl")
    assert store.require(job.id).path.is_file()
    assert hash_file(store.require(job.id).path)[0] == sha


def test_a_move_across_filesystems_is_a_copy_then_unlink(layout: Layout, store: Store) -> None:
    shm = Path("/dev/shm")
    if not shm.is_dir() or os.stat(shm).st_dev == os.stat(layout.queue).st_dev:
        pytest.skip("no second filesystem here")
    src = write_job_file(shm / f"tc-{os.getpid()}-x.jsonl")
    sha, size = hash_file(src)
    job = store.add_job("x.jsonl", src, sha, size, move=True)
    assert job is not None and not src.exists() and hash_file(job.path) == (sha, size)
    assert not [p for p in layout.tmp.iterdir() if p.name.startswith("store-")]


def test_module_level_scan_keeps_state_between_calls(layout: Layout, store: Store, events: EventLog) -> None:
    class Cfg:
        class queue:  # noqa: N801 - mirrors cfg.queue
            stable_s = 0.0
            dedupe = True

    (layout.incoming / "x.txt").write_text("x")
    write_job_file(layout.incoming / "y.jsonl")
    assert len(scan(layout, store, Cfg, events)) == 1
    assert scan(layout, store, Cfg, events) == []
    assert len(notices(layout, 56)) == 1


@pytest.mark.edge(52)
def test_a_hard_link_is_copied_so_later_edits_elsewhere_change_nothing(layout: Layout, store: Store, inbox,
                                                                       events: EventLog) -> None:
    box, mono = inbox
    original = write_job_file(layout.queue / "elsewhere" / "work.jsonl")
    os.link(original, layout.incoming / "work.jsonl")
    (job_id,) = settle(box, mono, store, events)
    job = store.require(job_id)
    before = job.path.read_bytes()
    with open(original, "ab") as fh:  # the user keeps editing their file in place
        fh.write(b'{"messages": []}\n')
    assert job.path.read_bytes() == before and hash_file(job.path)[0] == job.sha256
    assert not (layout.incoming / "work.jsonl").exists()


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file: permissions cannot be provoked")
def test_an_unreadable_file_gets_one_notice_and_stays(layout: Layout, store: Store, inbox,
                                                      events: EventLog) -> None:
    box, mono = inbox
    path = write_job_file(layout.incoming / "locked.jsonl")
    path.chmod(0)
    assert settle(box, mono, store, events, scans=4) == []
    assert len([a for a in alerts(layout) if "cannot be read" in str(a["message"])]) == 1
    assert path.exists()


def test_a_failed_move_leaves_no_half_record(layout: Layout, store: Store, tmp_path: Path) -> None:
    """A move that fails for a reason other than a vanished file (here: the destination name is
    taken by a folder) leaves the source, no job, and no intent that would block a later try."""
    src = write_job_file(layout.incoming / "x.jsonl")
    sha, size = hash_file(src)
    (layout.jobs / "j0001--x.jsonl").mkdir()
    with pytest.raises(OSError):
        store.add_job("x.jsonl", src, sha, size, move=True)
    assert src.exists() and store.jobs() == []
    assert store.db.conn.execute("SELECT COUNT(*) FROM intents").fetchone()[0] == 0
    (layout.jobs / "j0001--x.jsonl").rmdir()
    job = store.add_job("x.jsonl", src, sha, size, move=True)
    assert job is not None and job.id == "j0002"


@pytest.mark.edge(54)
def test_a_priority_folder_linked_outside_the_queue_is_not_scanned(layout: Layout, store: Store, inbox,
                                                                   events: EventLog, tmp_path: Path) -> None:
    box, mono = inbox
    elsewhere = tmp_path / "someone-elses"
    victim = write_job_file(elsewhere / "theirs.jsonl")
    os.rmdir(layout.incoming_for("high"))
    os.symlink(elsewhere, layout.incoming_for("high"))
    assert settle(box, mono, store, events) == []
    assert victim.exists() and store.jobs() == []
    assert len([a for a in notices(layout, 54) if "outside the queue folder" in str(a["message"])]) == 1


@pytest.mark.edge(54)
def test_a_file_swapped_for_a_link_at_the_last_moment_is_put_back(layout: Layout, store: Store,
                                                                  tmp_path: Path) -> None:
    """The race an attacker would need: examined as a regular file, a link to a file outside by the
    time it is renamed. The job store never keeps a link; it goes back to the inbox."""
    from trainconsole.engine.errors import DataError

    outside = write_job_file(tmp_path / "outside" / "secret.jsonl")
    path = write_job_file(layout.incoming / "swap.jsonl")
    sha, size = hash_file(path)
    path.unlink()
    os.symlink(outside, path)
    with pytest.raises(DataError, match="replaced"):
        store.add_job("swap.jsonl", path, sha, size, move=True)
    assert os.path.islink(path) and store.jobs() == []
    assert [p for p in layout.jobs.iterdir()] == []


@pytest.mark.timeout(60)
def test_a_huge_file_is_hashed_over_several_scans_without_stalling_one(layout: Layout, store: Store,
                                                                        events: EventLog) -> None:
    """A sparse 64 GiB file costs as much to read as a real one: each scan spends at most its
    budget on it, and every other file still moves on at once."""
    mono = Mono()
    box = Inbox(layout, clock=mono, hash_budget_bytes=4 << 20)
    big = layout.incoming / "huge.jsonl"
    with open(big, "wb") as fh:
        fh.truncate(64 << 30)
    write_job_file(layout.incoming / "small.jsonl")
    took = settle(box, mono, store, events, scans=3)
    assert [store.require(j).name for j in took] == ["small.jsonl"]
    # Now only the remainder of the big one: a bounded amount of reading per scan.
    for _ in range(5):
        assert box.scan(store, stable_s=1.0, events=events) == []
        mono.now += 1.5
    assert big.exists()


def test_a_large_file_finishes_hashing_across_scans_and_is_taken(layout: Layout, store: Store,
                                                                 events: EventLog) -> None:
    mono = Mono()
    box = Inbox(layout, clock=mono, hash_budget_bytes=1 << 20)
    line = b'{"messages": [{"role": "user", "content": "' + b"x" * 1000 + b'"}]}\n'
    big = layout.incoming / "big.jsonl"
    big.write_bytes(line * 5000)  # about 5 MB: at least five scans
    sha, size = hash_file(big)
    took = settle(box, mono, store, events, scans=10)
    assert len(took) == 1
    job = store.require(took[0])
    assert (job.sha256, job.size) == (sha, size)
