"""Widget text as plain strings (as memray tests its graph's render_line): gauges, status line and
queue cells, from values only, no terminal."""

from __future__ import annotations

import pytest

from trainconsole.console.snapshot import EngineView, JobRow, Snapshot, format_age, format_duration
from trainconsole.console.widgets.engine_state import render_state
from trainconsole.console.widgets.gauges import render_gauges
from trainconsole.console.widgets.queue_table import cells
from trainconsole.engine.sysmon import GpuSample, Sample


def sample(**changes: object) -> Sample:
    base: dict[str, object] = dict(ram_total_mb=16_000.0, ram_used_mb=4_000.0, ram_available_mb=12_000.0,
                                   swap_used_mb=0.0, swap_in_mb_s=0.0,
                                   disk_free_mb={"/q": 50_000.0, "/r": 50_000.0}, gpus=[],
                                   gpu_state="no_nvml")
    base.update(changes)
    return Sample(**base)  # type: ignore[arg-type]


def plain(s: Sample, width: int = 36) -> str:
    return "\n".join(line.plain for line in render_gauges(s, "", {"/q": "queue", "/r": "runs"}, width))


@pytest.mark.edge(26)
def test_no_gpu_is_a_clear_panel() -> None:
    text = plain(sample())
    assert text.startswith("no GPU: training on CPU")
    assert "no NVIDIA driver" in text
    assert "disk queue+runs" in text  # one filesystem, one line


@pytest.mark.edge(27)
def test_each_gpu_has_its_gauges_and_a_failed_field_shows_as_unknown() -> None:
    gpus = [GpuSample(0, "NVIDIA A100", 50.0, 1024.0, 40960.0, 60.0, 250.0),
            GpuSample(1, "NVIDIA A100", None, None, None, None, None)]
    text = plain(sample(gpus=gpus, gpu_state="ok"))
    assert "GPU0 A100 60°C 250W" in text and "GPU1 A100 ?°C" not in text
    assert "GPU1 A100 ? ?" in text
    assert text.count(" util ") == 2 and text.count(" mem ") == 2


@pytest.mark.edge(25, 30)
def test_low_disk_and_swapping_are_marked() -> None:
    lines = render_gauges(sample(disk_free_mb={"/q": 500.0, "/r": 80_000.0}, swap_in_mb_s=12.5), "",
                          {"/q": "queue", "/r": "runs"}, 36)
    disk = next(line for line in lines if line.plain.startswith("disk queue"))
    swap = next(line for line in lines if line.plain.startswith("swap"))
    assert "0.5G free" in disk.plain and any("red" in str(span.style) for span in disk.spans)
    assert "12.5 MB/s" in swap.plain and any("red" in str(span.style) for span in swap.spans)


def test_status_line_states() -> None:
    snap = Snapshot(jobs=(JobRow("j1", "a", "normal", "running", 1, 5, 10, 5.0),),
                    engine=EngineView("running", pid=7, uptime_s=125.0, step_rate=1.5))
    text = render_state(snap, readonly=True, filter_text="abc").plain
    assert "engine running" in text and "pid 7" in text and "up 2m" in text and "1.5 step/s" in text
    assert "1 running" in text and "read-only" in text and "filter: abc" in text
    assert "engine not running" in render_state(Snapshot(), False, "").plain


def test_queue_cells_show_progress_eta_and_why_a_job_failed() -> None:
    running = cells(JobRow("j1", "a.jsonl", "high", "running", 1, 30, 120, 95.0))
    assert "30/120" in str(running[5]) and "25%" in str(running[5]) and "~1m35s" in str(running[5])
    failed = cells(JobRow("j2", "b.jsonl", "normal", "failed", 3, error="no valid example", error_class="data"))
    assert str(failed[6]) == "data: no valid example"


def test_durations() -> None:
    assert [format_duration(s) for s in (5, 95, 3725, 90000)] == ["5s", "1m35s", "1h02m", "1d01h"]
    assert [format_age(s) for s in (5, 95, 3725)] == ["<1m", "1m", "1h02m"]
