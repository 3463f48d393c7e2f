"""Every way a worker can fail leaves a classified exit and a report, never just a traceback.
The faults here cannot happen for real on a CPU box (GPU OOM, a GPU fault) or would need a code
defect, so each is INJECTED through TRAINCONSOLE_FAULT at the narrowest boundary, raising the
same exception type the real thing raises, in the middle of a real training run."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from tests.chatdata import arithmetic, write_jsonl
from tests.worker.wutil import alerts, events_of, make_spec, new_workspace, run_inprocess, spawn
from trainconsole.engine.errors import EXIT_CODES, ErrorClass
from trainconsole.engine.train.worker import classify_exception


@pytest.fixture
def short_job(tmp_path: Path, shared_cache: Path) -> Path:
    ws = new_workspace(tmp_path / "ws", shared_cache, training__max_steps=3, training__save_steps=2,
                       training__eval_fraction=0.0)
    return make_spec(ws, "j0001", write_jsonl(ws / "data.jsonl", arithmetic(20)))


BUGS = [
    pytest.param("UnboundLocalError", 71, marks=pytest.mark.edge(71), id="UnboundLocalError"),
    pytest.param("NameError", 72, marks=pytest.mark.edge(72), id="NameError"),
    pytest.param("AttributeError", 73, marks=pytest.mark.edge(73), id="AttributeError"),
    pytest.param("KeyError", 74, marks=pytest.mark.edge(74), id="KeyError"),
    pytest.param("IndexError", 75, marks=pytest.mark.edge(75), id="IndexError"),
    pytest.param("TypeError", 76, marks=pytest.mark.edge(76), id="TypeError"),
    pytest.param("ValueError", 77, marks=pytest.mark.edge(77), id="ValueError"),
    pytest.param("ZeroDivisionError", 78, marks=pytest.mark.edge(78), id="ZeroDivisionError"),
    pytest.param("RecursionError", 79, marks=pytest.mark.edge(79), id="RecursionError"),
]


@pytest.mark.parametrize(("name", "case"), BUGS)
def test_exception_in_our_code_is_a_bug_with_its_traceback(short_job: Path, name: str, case: int) -> None:
    code, report = run_inprocess(short_job, f"raise:{name}@2")  # injected
    assert code == EXIT_CODES[ErrorClass.BUG]
    assert report["status"] == "failed" and report["error_class"] == "bug" and report["case"] == case
    assert report["message"].startswith(f"{name}: ") and "(injected by TRAINCONSOLE_FAULT" in report["message"]
    assert report["traceback"] and f"{name}:" in report["traceback"] and "faults.py" in report["traceback"]
    assert report["global_step"] == 1 and report["max_steps"] == 3
    # The daemon raises the one alert a failure gets; the worker's account is a line in its log.
    assert alerts(short_job.parent) == []
    assert [e["message"].startswith(f"job failed (bug, case {case}): {name}: ")
            for e in events_of(short_job.parent, "log") if e["level"] == "error"] == [True]


@pytest.mark.edge(80, 24)
def test_memory_error_is_reported_as_host_oom(short_job: Path) -> None:
    code, report = run_inprocess(short_job, "raise:MemoryError@2")  # injected
    assert code == EXIT_CODES[ErrorClass.OOM]
    assert report["error_class"] == "oom" and report["case"] == 80 and report["traceback"]


@pytest.mark.edge(22)
def test_out_of_memory_while_building_the_token_cache_is_case_22(short_job: Path) -> None:
    code, report = run_inprocess(short_job, "tokens_oom@0")  # injected: MemoryError at the cache
    assert code == EXIT_CODES[ErrorClass.OOM]
    assert report["error_class"] == "oom" and report["case"] == 22, report
    assert "token cache" in report["message"] and report["global_step"] == 0


@pytest.mark.edge(21)
def test_injected_gpu_oom_while_loading_the_model(short_job: Path) -> None:
    code, report = run_inprocess(short_job, "oom@0")  # injected: torch.OutOfMemoryError at load
    assert code == EXIT_CODES[ErrorClass.OOM] and report["case"] == 21
    assert "CUDA out of memory" in report["message"]


@pytest.mark.edge(23)
def test_injected_gpu_oom_during_training(short_job: Path) -> None:
    code, report = run_inprocess(short_job, "oom@3")  # injected: torch.OutOfMemoryError at step 3
    assert code == EXIT_CODES[ErrorClass.OOM] and report["case"] == 23
    assert report["global_step"] == 2
    # The checkpoint before it is intact, so the daemon's retry resumes from step 2.
    assert (short_job.parent / "checkpoints" / "checkpoint-2" / "manifest.json").is_file()


@pytest.mark.edge(29, 36)
def test_injected_oom_above_a_batch_size_is_cured_by_a_smaller_micro_batch(short_job: Path) -> None:
    # Fragmentation or a batch too large: injected as an OOM while the micro-batch is above 2.
    code, report = run_inprocess(short_job, "oom_above_batch:2@1")
    assert code == EXIT_CODES[ErrorClass.OOM] and report["error_class"] == "oom"
    spec = make_spec(short_job.parent.parent.parent, "j0001", short_job.parent.parent.parent / "data.jsonl",
                     overrides={"batch_size": 2, "gradient_accumulation": 2})
    code, report = run_inprocess(spec, "oom_above_batch:2@1")
    assert code == 0 and report["status"] == "done"


@pytest.mark.edge(28)
def test_injected_device_fault_is_a_device_error(short_job: Path) -> None:
    code, report = run_inprocess(short_job, "device@2")  # injected: torch.AcceleratorError
    assert code == EXIT_CODES[ErrorClass.DEVICE] and report["case"] == 28


@pytest.mark.edge(25)
def test_injected_full_disk_is_disk_full(short_job: Path) -> None:
    code, report = run_inprocess(short_job, "enospc@2")  # injected: OSError(ENOSPC)
    assert code == EXIT_CODES[ErrorClass.DISK_FULL] and report["case"] == 25


@pytest.mark.edge(70)
def test_injected_hang_stops_the_heartbeat(short_job: Path) -> None:
    import json
    import time

    proc = spawn(short_job, "hang@2")
    try:
        beat = short_job.parent / "heartbeat.json"
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            try:
                if json.loads(beat.read_text())["step"] == 1:
                    break
            except (OSError, ValueError):
                pass
            time.sleep(0.1)
        time.sleep(1.0)  # the heartbeat writer catches up with step 1
        first = json.loads(beat.read_text())
        time.sleep(2.0)
        assert json.loads(beat.read_text()) == first and proc.poll() is None
        # What the daemon does before ending a hung worker: ask for its stacks.
        proc.send_signal(signal.SIGUSR2)
        stacks = short_job.parent / "stacks.txt"
        while time.monotonic() < deadline and "faults.py" not in stacks.read_text():
            time.sleep(0.1)
        assert "in _fire" in stacks.read_text()
    finally:
        proc.kill()
        proc.wait()


def test_classification_table() -> None:
    import errno

    import torch

    assert classify_exception(torch.OutOfMemoryError("x"), loading=True) == (ErrorClass.OOM, 21)
    assert classify_exception(torch.OutOfMemoryError("x"), loading=True, phase="tokenizing") == (ErrorClass.OOM, 22)
    assert classify_exception(MemoryError(), loading=True, phase="tokenizing") == (ErrorClass.OOM, 22)
    assert classify_exception(torch.OutOfMemoryError("x"), loading=False) == (ErrorClass.OOM, 23)
    assert classify_exception(MemoryError(), loading=False) == (ErrorClass.OOM, 80)
    assert classify_exception(RuntimeError("CUDA error: unspecified launch failure"), loading=False) == (
        ErrorClass.DEVICE, 28)
    assert classify_exception(OSError(errno.EIO, "I/O error"), loading=False) == (ErrorClass.TRANSIENT, 44)
    assert classify_exception(PermissionError(errno.EACCES, "denied"), loading=False) == (ErrorClass.TRANSIENT, 46)
    assert classify_exception(RuntimeError("something else"), loading=False) == (ErrorClass.BUG, None)


def test_worker_process_exit_code_and_report_for_a_bad_spec(tmp_path: Path) -> None:
    spec = tmp_path / "spec.json"
    spec.write_text("{not json")
    proc = spawn(spec)
    proc.communicate(timeout=120)
    assert proc.returncode == EXIT_CODES[ErrorClass.CONFIG]
    import json

    report = json.loads((tmp_path / "report.json").read_text())
    assert report["error_class"] == "config" and "spec" in report["message"]


@pytest.mark.edge(26)
def test_cuda_required_but_absent_is_a_device_error_before_any_work(tmp_path: Path, shared_cache: Path) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    ws = new_workspace(tmp_path / "ws", shared_cache, hardware__device="cuda")
    spec = make_spec(ws, "j0001", write_jsonl(ws / "data.jsonl", arithmetic(20)))
    code, report = run_inprocess(spec)
    assert code == EXIT_CODES[ErrorClass.DEVICE] and report["case"] == 26
    assert 'hardware.device = "cuda"' in report["message"] and not (spec.parent / "checkpoints").exists()
