"""The run folder's typed files: what is written is read back the same, and a bad, torn or foreign
file is one clear line naming the file (or None where a reader must never raise)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from trainconsole.engine import runfiles
from trainconsole.engine.errors import ConfigError, ErrorClass
from trainconsole.engine.runfiles import (
    Heartbeat,
    JobSpec,
    Report,
    RunFileError,
    RunFolder,
    read_heartbeat,
    read_report,
)


def test_the_run_folder_names_its_files(tmp_path: Path) -> None:
    folder = RunFolder(tmp_path)
    assert [p.name for p in (folder.spec, folder.heartbeat, folder.report, folder.events, folder.worker_log,
                             folder.checkpoints, folder.lock, folder.stacks(), folder.stacks(2))] == [
        "spec.json", "heartbeat.json", "report.json", "events.jsonl", "worker.log", "checkpoints",
        "train.lock", "stacks.txt", "stacks-rank2.txt"]
    assert [p.name for p in folder.attempt_files()] == ["report.json", "heartbeat.json", "stacks.txt"]


def test_a_spec_round_trips(tmp_path: Path) -> None:
    spec = JobSpec(job_id="j0001", data_file=tmp_path / "a.jsonl", config=tmp_path / "config.toml",
                   run_dir=tmp_path / "runs" / "j0001", adapters_dir=tmp_path / "adapters",
                   overrides={"batch_size": 2}, launched_by="train", launcher_pid=42,
                   launcher_identity="linux:boot:123", lineage="side")
    path = spec.write()
    assert path == spec.folder.spec and json.loads(path.read_text())["schema"] == runfiles.SCHEMA
    assert JobSpec.read(path) == spec
    plain = runfiles.write_spec(tmp_path / "r2", job_id="j2", data_file=Path("d"), config=Path("c"),
                                adapters_dir=None)
    assert JobSpec.read(plain).launched_by == "engine" and JobSpec.read(plain).adapters_dir is None


@pytest.mark.parametrize(("text", "said"), [
    ("{not json", "not JSON"),
    ("[1, 2]", "not an object"),
    ('{"schema": 2, "job_id": "j"}', "not a schema-1 job spec"),
    ('{"job_id": "j"}', "not a schema-1 job spec"),
    ('{"schema": 1, "job_id": "j", "config": "c"}', "lacks data_file, run_dir"),
    ('{"schema": 1, "job_id": "j", "data_file": "d", "config": "c", "run_dir": "r", "overrides": [1]}',
     "malformed overrides"),
    ('{"schema": 1, "job_id": "j", "data_file": "d", "config": "c", "run_dir": "r", "launched_by": "x"}',
     "malformed launched_by"),
])
def test_a_bad_spec_is_one_line_naming_the_file(tmp_path: Path, text: str, said: str) -> None:
    path = tmp_path / "spec.json"
    path.write_text(text)
    with pytest.raises(RunFileError) as caught:
        JobSpec.read(path)
    assert str(path) in caught.value.message and said in caught.value.message
    assert "\n" not in caught.value.message
    assert isinstance(caught.value, ConfigError)  # the worker reports it as a config error


def test_a_missing_spec_says_so(tmp_path: Path) -> None:
    with pytest.raises(RunFileError, match="missing"):
        JobSpec.read(tmp_path / "spec.json")


def test_heartbeats_round_trip_and_an_older_one_without_a_schema_reads(tmp_path: Path) -> None:
    path = tmp_path / "heartbeat.json"
    Heartbeat(pid=7, step=3, mono=12.34567, step_time_s=0.123456).write(path)
    assert Heartbeat.read(path) == Heartbeat(pid=7, step=3, mono=12.346, step_time_s=0.1235)
    path.write_text('{"pid": 1, "step": 2, "mono": 5.0, "step_time_s": null}')
    assert read_heartbeat(path) == Heartbeat(pid=1, step=2, mono=5.0, step_time_s=None)
    for bad in ('{"pid": 1, "step": 2}', '{"schema": 3, "mono": 1}', "{", '"x"'):
        path.write_text(bad)
        assert read_heartbeat(path) is None
        with pytest.raises(RunFileError):
            Heartbeat.read(path)
    assert read_heartbeat(tmp_path / "none.json") is None


def test_a_report_round_trips(tmp_path: Path) -> None:
    report = Report(status="failed", error_class="oom", case=23, message="out of memory", traceback="tb",
                    global_step=4, max_steps=8, elapsed_s=1.5)
    report.write(tmp_path)
    assert Report.read(RunFolder(tmp_path).report) == report
    assert report.error() is ErrorClass.OOM and not report.done


def test_a_report_reads_fields_of_the_wrong_type_as_absent() -> None:
    report = Report.from_json({"status": "failed", "error_class": "nonsense", "case": "4", "global_step": 2.5,
                               "traceback": 3, "message": None})
    assert report.error() is ErrorClass.BUG  # an unknown class is ours to fix
    assert report.case is None and report.global_step is None and report.traceback is None
    assert report.message == ""


@pytest.mark.parametrize("text", ["", "{", "[]", '{"schema": 1}', '{"schema": 1, "status": "maybe"}',
                                  '{"schema": 9, "status": "done"}'])
def test_a_torn_or_foreign_report_is_none_for_the_engine_and_a_line_for_people(tmp_path: Path,
                                                                              text: str) -> None:
    path = tmp_path / "report.json"
    path.write_text(text)
    assert read_report(path) is None
    with pytest.raises(RunFileError) as caught:
        Report.read(path)
    assert str(path) in caught.value.message
