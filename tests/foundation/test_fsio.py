"""The one durable-write module: replacing, creating, copying, publishing, and the sweep that tells
a dead writer's leftovers (by the pid in the name) from a live writer's work in progress."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from trainconsole.engine import fsio


def _dead_pid() -> int:
    out = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                         text=True, check=True)
    return int(out.stdout)


def _age(path: Path, seconds: float) -> None:
    then = time.time() - seconds
    os.utime(path, (then, then), follow_symlinks=False)


def test_write_bytes_replaces_whole_and_leaves_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "a.json"
    target.write_bytes(b"old")
    fsio.write_bytes(target, b"new")
    assert target.read_bytes() == b"new"
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]


def test_write_bytes_sets_the_exact_mode_whatever_the_umask(tmp_path: Path) -> None:
    target = tmp_path / "config.toml"
    old = os.umask(0o077)
    try:
        fsio.write_bytes(target, b"x", mode=0o664)
    finally:
        os.umask(old)
    assert target.stat().st_mode & 0o7777 == 0o664


def test_a_failed_write_removes_its_temporary(tmp_path: Path) -> None:
    (tmp_path / "dir").mkdir()
    with pytest.raises(IsADirectoryError):
        fsio.write_bytes(tmp_path / "dir", b"x")  # the rename over a folder fails
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dir"]


def test_write_new_never_overwrites(tmp_path: Path) -> None:
    target = tmp_path / "config.toml"
    fsio.write_new(target, b"first")
    with pytest.raises(FileExistsError):
        fsio.write_new(target, b"second")
    assert target.read_bytes() == b"first"
    assert [p.name for p in tmp_path.iterdir()] == ["config.toml"]


def test_copy_into_hashes_what_landed_and_uses_the_tmp_folder(tmp_path: Path) -> None:
    tmp = tmp_path / ".tmp"
    sha, size = fsio.copy_into(io.BytesIO(b"abc"), tmp_path / "out", tmp_dir=tmp, tag="store")
    assert (tmp_path / "out").read_bytes() == b"abc" and size == 3
    assert sha == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    assert list(tmp.iterdir()) == []


def test_publish_dir_discards_what_stood_there(tmp_path: Path) -> None:
    final = tmp_path / "cache"
    final.mkdir()
    (final / "old").write_text("x")
    with fsio.staged(tmp_path, "cache") as staging:
        (staging / "new").write_text("y")
        fsio.sync_tree(staging)
        fsio.publish_dir(staging, final)
    assert [p.name for p in final.iterdir()] == ["new"]
    assert [p.name for p in tmp_path.iterdir()] == ["cache"]


def test_a_failed_staged_block_leaves_nothing(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError), fsio.staged(tmp_path, "x") as staging:
        (staging / "f").write_text("y")
        raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def test_point_symlink_replaces_the_link(tmp_path: Path) -> None:
    fsio.point_symlink(tmp_path / "latest", "a")
    fsio.point_symlink(tmp_path / "latest", "b")
    assert os.readlink(tmp_path / "latest") == "b"
    assert [p.name for p in tmp_path.iterdir()] == ["latest"]


def test_names_carry_the_writers_pid_in_one_scheme(tmp_path: Path) -> None:
    me = os.getpid()
    assert fsio.writer_pid(fsio.temp_name("heartbeat.json")) == me
    assert fsio.writer_pid(fsio.temp_name("j0001.json", "store")) == me
    assert fsio.writer_pid(fsio.new_staging(tmp_path, "checkpoint-4").name) == me
    # Names of earlier versions, still recognised by the pid they carry.
    assert fsio.writer_pid(".heartbeat.json.4242.95ad0e.tmp") == 4242
    assert fsio.writer_pid(".spec.json.4242.tmp") == 4242
    assert fsio.writer_pid(".staging-checkpoint-99-4242-deadbeef") == 4242
    assert fsio.writer_pid(".tiny-chat.staging-4242-deadbeef") == 4242
    assert fsio.writer_pid("store-4242-j0001.json.123456789") == 4242
    # Not ours: a user's file, an adapter, a checkpoint.
    for name in ("data.jsonl", "0001-j0001", "checkpoint-12", "notes.2024.deadbeef", "config.toml"):
        assert fsio.writer_pid(name) is None


@pytest.mark.edge(41)
def test_sweep_removes_a_dead_writers_leftovers_and_keeps_a_live_ones(tmp_path: Path) -> None:
    dead = _dead_pid()
    gone = [tmp_path / f".report.json.{dead}.0a1b2c3d.tmp", tmp_path / f".staging-checkpoint-4.{dead}.0a1b2c3d",
            tmp_path / f".heartbeat.json.{dead}.95ad0e.tmp", tmp_path / f".staging-checkpoint-9-{dead}-deadbeef"]
    live = [tmp_path / fsio.temp_name("report.json"), tmp_path / f".x.{os.getppid()}.0a1b2c3d.tmp"]
    others = [tmp_path / "report.json", tmp_path / "notes.tmp", tmp_path / f"keep.{dead}.0a1b2c3d"]
    for path in gone + live + others:
        if "staging" in path.name:
            path.mkdir()
            (path / "optimizer.pt").write_bytes(b"x")
        else:
            path.write_text("x")
    assert sorted(fsio.sweep(tmp_path)) == sorted(gone)
    assert sorted(tmp_path.iterdir()) == sorted(live + others)


def test_sweep_removes_pidless_older_temporaries_by_age_only(tmp_path: Path) -> None:
    young, old = tmp_path / ".config.toml.ab_12cde.tmp", tmp_path / ".config.toml.zz_98xyz.tmp"
    aside = tmp_path / ".tok.old-deadbeef"
    for path in (young, old):
        path.write_text("x")
    aside.mkdir()
    _age(old, 2 * fsio.STALE_S)
    _age(aside, 2 * fsio.STALE_S)
    assert sorted(fsio.sweep(tmp_path)) == sorted([old, aside])
    assert young.exists()


def test_sweep_only_and_every_name(tmp_path: Path) -> None:
    dead = _dead_pid()
    mine, theirs = tmp_path / f".config.toml.{dead}.0a1b2c3d.tmp", tmp_path / f".other.{dead}.0a1b2c3d.tmp"
    stray = tmp_path / "demo-a.jsonl"
    for path in (mine, theirs, stray):
        path.write_text("x")
    _age(stray, 2 * fsio.STALE_S)
    assert fsio.sweep(tmp_path, only=".config.toml.") == [mine]
    assert fsio.sweep(tmp_path) == [theirs]  # a pid-less name that is not a temporary's: kept
    assert fsio.sweep(tmp_path, every_name=True) == [stray]  # a folder of temporaries only


def test_fsync_dir_raises_but_not_for_a_folder_that_is_gone(tmp_path: Path) -> None:
    fsio.fsync_dir(tmp_path)
    fsio.fsync_dir(tmp_path / "gone")
    (tmp_path / "file").write_text("x")
    with pytest.raises(NotADirectoryError):
        fsio.fsync_dir(tmp_path / "file")


def test_no_durable_write_outside_fsio() -> None:
    """One implementation: a rename, an fsync or a temp-then-replace anywhere else in the product
    would be a second scheme the sweep does not know. (SQLite does its own, inside the library.)"""
    import re

    from tests.helpers import ROOT

    pattern = re.compile(r"\bos\.(replace|rename|renames|fsync|fdatasync)\(|\.rename\(")
    found = []
    for tree in ("engine", "console"):
        for path in sorted((ROOT / tree).rglob("*.py")):
            if path == ROOT / "engine" / "fsio.py":
                continue
            for number, line in enumerate(path.read_text().splitlines(), 1):
                if pattern.search(line) and not line.lstrip().startswith("#"):
                    found.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    assert not found, "durable writes outside engine/fsio.py:\n" + "\n".join(found)
