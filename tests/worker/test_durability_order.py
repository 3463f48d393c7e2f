"""The order of durability (case 42), read from the system calls themselves: every os.fsync,
os.rename and os.replace is recorded (the fsync by the path its descriptor names), then the
order is checked. A power cut at any instant must leave either no checkpoint or a whole one:
so the data files are synced before the manifest exists, the manifest is synced before it is
renamed into the folder, the folder is synced before it is renamed into place, and the parent
is synced after, so the rename itself survives."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

from trainconsole.engine import checkpoints as ckpt
from trainconsole.engine import fsio

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"),
                                reason="descriptors are named through /proc/self/fd")

Call = tuple[str, str, str]


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> list[Call]:
    log: list[Call] = []
    real_fsync, real_rename, real_replace = os.fsync, os.rename, os.replace

    def fsync(fd: int) -> None:
        log.append(("fsync", os.readlink(f"/proc/self/fd/{fd}"), ""))
        real_fsync(fd)

    def rename(src: object, dst: object, *args: object, **kw: object) -> None:
        log.append(("rename", os.fspath(src), os.fspath(dst)))  # type: ignore[arg-type]
        real_rename(src, dst, *args, **kw)  # type: ignore[arg-type]

    def replace(src: object, dst: object, *args: object, **kw: object) -> None:
        log.append(("rename", os.fspath(src), os.fspath(dst)))  # type: ignore[arg-type]
        real_replace(src, dst, *args, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "rename", rename)
    monkeypatch.setattr(os, "replace", replace)
    return log


def _first(log: list[Call], pred: object) -> int:
    for i, call in enumerate(log):
        if pred(call):  # type: ignore[operator]
            return i
    raise AssertionError(f"no such call in {log}")


@pytest.mark.edge(42)
def test_a_checkpoint_is_synced_file_by_file_then_manifest_then_folder_then_renamed(
        tmp_path: Path, calls: list[Call]) -> None:
    root = (tmp_path / "checkpoints").resolve()
    staging = fsio.new_staging(root, "checkpoint-4")
    files = {"adapter_model.safetensors": b"w" * 4096, "optimizer.pt": b"o" * 2048,
             "scheduler.pt": b"s", "rng_state.pth": b"r", "trainer_state.json": b"{}",
             "sub/extra.bin": b"x"}
    for rel, data in files.items():
        (staging / rel).parent.mkdir(parents=True, exist_ok=True)
        (staging / rel).write_bytes(data)
    final = root / "checkpoint-4"
    ckpt.publish(staging, final, kind="checkpoint", step=4, fingerprint={"base": "t"})

    manifest_in = _first(calls, lambda c: c[0] == "rename" and c[2] == str(staging / ckpt.MANIFEST))
    manifest_tmp = calls[manifest_in][1]
    folder_in = _first(calls, lambda c: c == ("rename", str(staging), str(final)))
    for rel in files:  # every data file, before the manifest that vouches for it exists
        assert _first(calls, lambda c, p=str(staging / rel): c == ("fsync", p, "")) < manifest_in, rel
    assert _first(calls, lambda c: c == ("fsync", str(staging / "sub"), "")) < manifest_in
    assert _first(calls, lambda c: c == ("fsync", manifest_tmp, "")) < manifest_in
    # The folder's entries (the manifest's among them) are durable before the folder is published.
    staged = [i for i, c in enumerate(calls) if c == ("fsync", str(staging), "")]
    assert any(manifest_in < i < folder_in for i in staged), calls
    # And the publishing rename itself is made durable.
    assert any(c == ("fsync", str(root), "") for c in calls[folder_in + 1:]), calls
    manifest = json.loads((final / ckpt.MANIFEST).read_text())
    assert set(manifest["files"]) == set(files) and manifest["global_step"] == 4


@pytest.mark.edge(42)
def test_a_durable_small_file_is_synced_before_its_rename_and_its_folder_after(
        tmp_path: Path, calls: list[Call]) -> None:
    target = tmp_path.resolve() / "latest.json"
    fsio.write_bytes(target, b'{"step": 4}')
    (rename_at,) = [i for i, c in enumerate(calls) if c[0] == "rename" and c[2] == str(target)]
    tmp = calls[rename_at][1]
    assert ("fsync", tmp, "") in calls[:rename_at]
    assert ("fsync", str(target.parent), "") in calls[rename_at + 1:]
    assert target.read_bytes() == b'{"step": 4}'
