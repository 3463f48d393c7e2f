"""Checkpoint protocol on real folders: a real checkpoint from a finished run is copied and damaged
the way crashes and people damage them, then the scan must skip, quarantine (never delete) and
alert, and pick the newest good one. These tests are torch-free except the shared run."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from trainconsole.engine import checkpoints as ckpt
from trainconsole.engine import fsio
from trainconsole.engine.events import EventLog, read_all


@pytest.fixture
def ckroot(finished_run: Path, tmp_path: Path) -> Path:
    """A checkpoints folder holding copies of the real checkpoint-4 and checkpoint-8."""
    root = tmp_path / "checkpoints"
    shutil.copytree(finished_run / "runs" / "j0001" / "checkpoints", root)
    assert sorted(p.name for p in root.iterdir()) == ["checkpoint-4", "checkpoint-8"]
    FINGERPRINTS[root] = json.loads((root / "checkpoint-8" / ckpt.MANIFEST).read_text())["fingerprint"]
    return root


FINGERPRINTS: dict[Path, dict] = {}


def fingerprint_of(root: Path) -> dict:
    """The base fingerprint of the real run (read before any damage)."""
    return FINGERPRINTS[root]


def scan(root: Path, fingerprint: dict | None = None) -> tuple[ckpt.Checkpoint | None, list, list]:
    log = root.parent / "events.jsonl"
    chosen, rejected = ckpt.scan(root, fingerprint=fingerprint or fingerprint_of(root),
                                 events=EventLog(log), job_id="j0001")
    return chosen, rejected, [e for e in read_all(log) if e["type"] == "alert"] if log.exists() else []


def assert_skipped(root: Path, case: int, name: str = "checkpoint-8") -> None:
    chosen, rejected, alerts = scan(root)
    expected = 4 if name == "checkpoint-8" else 8  # the newest good one
    assert chosen is not None and chosen.step == expected, [r.reason for r in rejected]
    assert [(r.path.name, r.case) for r in rejected] == [(name, case)]
    assert [a["case"] for a in alerts] == [case] and name in alerts[0]["message"]
    quarantined = [p for p in (root / ckpt.QUARANTINE).iterdir() if p.is_dir()]
    assert len(quarantined) == 1 and quarantined[0].name.startswith(name.lstrip("."))  # moved, not deleted
    why = json.loads(next((root / ckpt.QUARANTINE).glob("*.why.json")).read_text())
    assert why["case"] == case
    assert not (root / name).exists()


@pytest.mark.edge(14)
def test_no_checkpoint_folder_is_a_fresh_start(tmp_path: Path) -> None:
    chosen, rejected = ckpt.scan(tmp_path / "checkpoints", fingerprint={})
    assert chosen is None and rejected == []


def test_a_good_checkpoint_verifies_and_the_newest_wins(ckroot: Path) -> None:
    chosen, rejected, alerts = scan(ckroot)
    assert chosen is not None and chosen.step == 8 and rejected == [] and alerts == []
    assert set(ckpt.RESUME_FILES) <= set(chosen.manifest["files"])
    assert chosen.manifest["format_version"] == ckpt.FORMAT_VERSION


@pytest.mark.edge(15)
def test_empty_checkpoint_folder_is_skipped(ckroot: Path) -> None:
    (ckroot / "checkpoint-12").mkdir()
    assert_skipped(ckroot, 15, "checkpoint-12")


@pytest.mark.edge(16)
def test_missing_trainer_state_is_skipped(ckroot: Path) -> None:
    (ckroot / "checkpoint-8" / ckpt.TRAINER_STATE).unlink()
    assert_skipped(ckroot, 16)


@pytest.mark.edge(17)
def test_corrupt_trainer_state_is_skipped(ckroot: Path) -> None:
    (ckroot / "checkpoint-8" / ckpt.TRAINER_STATE).write_text('{"global_step": 8, "log_hist')
    assert_skipped(ckroot, 17)


@pytest.mark.edge(18)
def test_checkpoint_of_another_base_is_skipped(ckroot: Path) -> None:
    other = dict(fingerprint_of(ckroot), layers=1, config_sha256="0" * 64)
    chosen, rejected, alerts = scan(ckroot, other)
    # Both real checkpoints belong to the 2-layer base: against a 1-layer base neither is usable.
    assert chosen is None and [r.case for r in rejected] == [18, 18] and [a["case"] for a in alerts] == [18, 18]
    assert "layers: expected 1, found 2" in rejected[0].reason
    assert {p.name.split(".")[0] for p in (ckroot / ckpt.QUARANTINE).iterdir() if p.is_dir()} == {
        "checkpoint-8", "checkpoint-4"}


@pytest.mark.edge(19)
def test_unknown_format_version_is_skipped(ckroot: Path) -> None:
    path = ckroot / "checkpoint-8" / ckpt.MANIFEST
    manifest = json.loads(path.read_text())
    manifest["format_version"] = 99
    path.write_text(json.dumps(manifest))
    assert_skipped(ckroot, 19)


@pytest.mark.edge(19)
def test_checkpoint_without_manifest_from_another_tool_is_skipped(ckroot: Path) -> None:
    """A complete folder as the HF Trainer writes it (no manifest): it cannot be verified."""
    (ckroot / "checkpoint-8" / ckpt.MANIFEST).unlink()
    assert_skipped(ckroot, 19)


@pytest.mark.edge(20)
def test_truncated_optimizer_state_is_skipped(ckroot: Path) -> None:
    path = ckroot / "checkpoint-8" / "optimizer.pt"
    path.write_bytes(path.read_bytes()[:100])
    assert_skipped(ckroot, 20)


@pytest.mark.edge(20)
def test_flipped_byte_in_weights_is_skipped(ckroot: Path) -> None:
    path = ckroot / "checkpoint-8" / ckpt.ADAPTER_WEIGHTS
    data = bytearray(path.read_bytes())
    data[-3] ^= 0xFF
    path.write_bytes(bytes(data))
    assert_skipped(ckroot, 20)


@pytest.mark.edge(20)
def test_half_written_folder_without_manifest_is_skipped(ckroot: Path) -> None:
    """What a kill mid-save leaves with in-place saving: a zero-byte optimizer, no manifest."""
    (ckroot / "checkpoint-8" / ckpt.MANIFEST).unlink()
    (ckroot / "checkpoint-8" / "optimizer.pt").write_bytes(b"")
    assert_skipped(ckroot, 20)


@pytest.mark.edge(20)
def test_leftover_staging_folder_is_quarantined(ckroot: Path) -> None:
    staging = fsio.new_staging(ckroot, "checkpoint-12")
    (staging / "optimizer.pt").write_bytes(b"\0" * 10)
    assert_skipped(ckroot, 20, staging.name)


@pytest.mark.edge(20)
def test_weights_only_checkpoint_is_not_resumed(ckroot: Path) -> None:
    """Without optimizer/scheduler/RNG a resume would silently restart them: not usable."""
    folder = ckroot / "checkpoint-8"
    staging = fsio.new_staging(ckroot, "rewrite")
    shutil.copy(folder / ckpt.ADAPTER_WEIGHTS, staging)
    shutil.copy(folder / ckpt.TRAINER_STATE, staging)
    fp = fingerprint_of(ckroot)
    shutil.rmtree(folder)
    ckpt.publish(staging, folder, kind="checkpoint", step=8, fingerprint=fp)
    assert_skipped(ckroot, 20)


@pytest.mark.edge(62)
def test_negative_step_is_skipped(ckroot: Path) -> None:
    folder = ckroot / "checkpoint-8"
    state = json.loads((folder / ckpt.TRAINER_STATE).read_text())
    state["global_step"] = -8
    (folder / ckpt.TRAINER_STATE).write_text(json.dumps(state))
    manifest = json.loads((folder / ckpt.MANIFEST).read_text())
    manifest["global_step"] = -8
    (folder / ckpt.MANIFEST).write_text(json.dumps(manifest))
    assert_skipped(ckroot, 62)


@pytest.mark.edge(62)
def test_negative_step_folder_name_is_skipped(ckroot: Path) -> None:
    shutil.copytree(ckroot / "checkpoint-4", ckroot / "checkpoint--3")
    chosen, rejected, alerts = scan(ckroot)
    assert chosen is not None and chosen.step == 8
    # The negative one sorts last, so the newest good one is found first and it is left alone...
    assert rejected == []
    shutil.rmtree(ckroot / "checkpoint-8")
    shutil.rmtree(ckroot / "checkpoint-4")
    chosen, rejected, alerts = scan(ckroot)
    assert chosen is None and [(r.path.name, r.case) for r in rejected] == [("checkpoint--3", 62)]
    assert [a["case"] for a in alerts] == [62]


def test_publish_refuses_a_negative_step(tmp_path: Path) -> None:
    staging = fsio.new_staging(tmp_path, "x")
    with pytest.raises(ValueError):
        ckpt.publish(staging, tmp_path / "checkpoint--1", kind="checkpoint", step=-1, fingerprint={})


def test_prune_keeps_the_newest_and_the_best(tmp_path: Path) -> None:
    for step in (2, 4, 6, 8):
        staging = fsio.new_staging(tmp_path, f"c{step}")
        (staging / "f").write_text(str(step))
        ckpt.publish(staging, tmp_path / f"checkpoint-{step}", kind="checkpoint", step=step, fingerprint={})
    (tmp_path / "checkpoint-1").mkdir()  # not ours (no manifest): never deleted by pruning
    ckpt.prune(tmp_path, keep_last=2, keep_steps=[2])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-1", "checkpoint-2", "checkpoint-6",
                                                          "checkpoint-8"]


@pytest.mark.edge(15)
def test_a_prune_killed_mid_delete_leaves_no_half_empty_checkpoint(ckroot: Path) -> None:
    """Pruning renames before it deletes: a kill mid-delete leaves a pruned staging folder, which
    the next scan removes silently instead of meeting an emptied checkpoint-4 (case 15)."""
    doomed = ckroot / f"{fsio.DISCARD_PREFIX}checkpoint-4.999999.deadbeef"
    (ckroot / "checkpoint-4").rename(doomed)
    (doomed / ckpt.MANIFEST).unlink()  # the delete got this far before the kill
    chosen, rejected, alerts = scan(ckroot)
    assert chosen is not None and chosen.step == 8
    assert rejected == [] and alerts == []
    assert not doomed.exists()
    assert not (ckroot / ckpt.QUARANTINE).exists()


def test_verify_answers_any_manifest_without_raising(tmp_path: Path) -> None:
    """A hand-edited or garbage manifest is judged, never an exception that stops the scan."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    json_values = st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
        max_leaves=12)
    keys = st.sampled_from(["format_version", "global_step", "fingerprint", "files", "kind", "extra"])
    folder = tmp_path / "checkpoint-3"
    folder.mkdir()
    (folder / ckpt.TRAINER_STATE).write_text('{"global_step": 3}')

    @settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(st.dictionaries(keys, json_values | st.just(1) | st.just({"../x": {"size": 1}})))
    def check(manifest: dict) -> None:
        (folder / ckpt.MANIFEST).write_text(json.dumps(manifest))
        verdict = ckpt.verify(folder, fingerprint={"name": "x"})
        assert isinstance(verdict, ckpt.Rejection | ckpt.Checkpoint)

    check()
