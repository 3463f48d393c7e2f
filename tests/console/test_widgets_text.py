"""Widget text as plain strings (as memray tests its graph's render_line): gauges, status line and
queue cells, from values only, no terminal."""

from __future__ import annotations

import time

import pytest
from rich.text import Text
from textual.geometry import Region

from trainconsole.console.snapshot import EngineView, JobRow, Snapshot, format_age, format_duration
from trainconsole.console.widgets.diff import cells_of, changed_regions
from trainconsole.console.widgets.engine_state import format_rate, render_state
from trainconsole.console.widgets.gauges import render_gauges, steady
from trainconsole.console.widgets.loss_plot import axis_end, step_label, step_ticks
from trainconsole.console.widgets.queue_table import cells
from trainconsole.engine.procmon import WorkerUsage
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


def test_host_figures_hold_until_they_move_by_a_step_and_follow_closely_near_the_limit() -> None:
    shown = sample()  # 4.0G of 16G used, 50G free
    # Other processes on the machine swing RAM by a few hundred MB and write a little: unchanged text.
    wobble = steady(sample(ram_used_mb=4_500.0, disk_free_mb={"/q": 49_400.0, "/r": 49_400.0}), shown)
    assert plain(wobble) == plain(shown)
    moved = steady(sample(ram_used_mb=5_000.0, disk_free_mb={"/q": 48_000.0, "/r": 48_000.0}), shown)
    assert "4.9G/15.6G" in plain(moved) and "46.9G free" in plain(moved)
    # Past 70% RAM and under 10 GB free, every 0.1G shows.
    high = sample(ram_used_mb=12_000.0, disk_free_mb={"/q": 9_000.0, "/r": 9_000.0})
    near = steady(sample(ram_used_mb=12_150.0, disk_free_mb={"/q": 8_850.0, "/r": 8_850.0}), high)
    assert "11.9G/15.6G" in plain(near) and "8.6G free" in plain(near)


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


def test_the_status_line_says_when_the_engine_started_so_an_idle_console_never_changes(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    try:
        started = 1_780_000_000.0  # 2026-05-28 20:26:40 UTC
        early, later = (Snapshot(engine=EngineView("running", pid=7, uptime_s=up, started_at=started))
                        for up in (125.0, 3725.0))
        assert "since 20:26" in render_state(early, False, "").plain
        assert render_state(early, False, "").plain == render_state(later, False, "").plain
        old = Snapshot(engine=EngineView("running", pid=7, uptime_s=90_000.0, started_at=started))
        assert "since May 28 20:26" in render_state(old, False, "").plain
    finally:
        monkeypatch.undo()
        time.tzset()


def test_queue_cells_show_progress_eta_and_why_a_job_failed() -> None:
    running = cells(JobRow("j1", "a.jsonl", "high", "running", 1, 30, 120, 95.0))
    assert "30/120" in str(running[5]) and "25%" in str(running[5]) and "~1m35s" in str(running[5])
    failed = cells(JobRow("j2", "b.jsonl", "normal", "failed", 3, error="no valid example", error_class="data"))
    assert str(failed[6]) == "data: no valid example"


def test_a_long_runs_progress_cell_changes_every_few_seconds_not_every_step() -> None:
    row = JobRow("j1", "a.jsonl", "high", "running", 1, 102_185, 400_000, 6183.0)
    assert row.progress == "102k/400k  26% ~1h43m"
    assert JobRow("j1", "a", "high", "running", 1, 54_321, 60_000, 1500.0).progress == "54.3k/60.0k  91% ~25m"
    assert JobRow("j1", "a", "high", "running", 1, 30, 120, 95.0).progress == "30/120  25% ~1m35s"


def test_durations() -> None:
    assert [format_duration(s) for s in (5, 95, 3725, 90000)] == ["5s", "1m35s", "1h02m", "1d01h"]
    assert [format_age(s) for s in (5, 95, 3725)] == ["<1m", "1m", "1h02m"]


@pytest.mark.edge(27)
def test_a_gpu_shows_the_jobs_own_memory_beside_the_devices() -> None:
    gpus = [GpuSample(0, "NVIDIA H200", 90.0, 100_000.0, 143_771.0, 60.0, 500.0, job_mem_mb=81_920.0)]
    worker = WorkerUsage((41, 42), 99.0, 3000.0, 16)
    text = plain(sample(gpus=gpus, gpu_state="ok", worker=worker), width=36)
    assert " mem " in text and " job " in text and "80.0G" in text
    assert "job  " not in text.replace(" job ", "")  # on a GPU the CPU gauge is left out


@pytest.mark.edge(26)
def test_training_on_cpu_shows_the_jobs_cpu_gauge() -> None:
    worker = WorkerUsage((41,), 385.0, 2150.0, 4)
    lines = render_gauges(sample(worker=worker), "", {"/q": "queue", "/r": "runs"}, 36)
    job = next(line.plain for line in lines if line.plain.startswith("job"))
    assert "385%" in job and "2.1G" in job
    filled, empty = job.count("█"), job.count("░")
    assert filled == round(0.9625 * (filled + empty))  # of all four cores
    first_look = render_gauges(sample(worker=WorkerUsage((41,), None, None, 4)), "", {}, 36)
    assert any(line.plain.startswith("job") and "?" in line.plain for line in first_look)


def test_the_header_counts_every_unread_alert_not_the_rows_shown() -> None:
    from trainconsole.console.snapshot import AlertRow

    rows = tuple(AlertRow(f"k{i}", 66, "warning", "j1", float(i), "plateau") for i in range(200))
    snap = Snapshot(alerts=rows, alert_unread=577, alert_critical=False, alert_total=577)
    assert "577 alerts" in render_state(snap, False, "").plain
    settled = Snapshot(alerts=(AlertRow("k", 66, "info", "j1", 1.0, "improving again", resolved=True),))
    assert "alert" not in render_state(settled, False, "").plain


@pytest.mark.parametrize(("rate", "text"), [(1234.5, "1234 step/s"), (48.07, "48 step/s"),
                                            (1.5, "1.5 step/s"), (0.98, "0.98 step/s"),
                                            (0.01, "100 s/step")])
def test_the_step_rate_reads_well_at_any_pace(rate: float, text: str) -> None:
    assert format_rate(rate) == text


def test_the_plots_x_axis_ends_at_a_round_step_and_never_past_the_plan() -> None:
    assert [axis_end(s) for s in (7, 120, 54_321, 100_000, 100_001)] == [8, 120, 60_000, 100_000, 120_000]
    assert axis_end(54_321, planned=55_000) == 55_000
    assert axis_end(54_321, planned=50_000) == 60_000  # a plan already passed is no limit
    ticks = step_ticks(1, 60_000)
    assert ticks == [10_000, 20_000, 30_000, 40_000, 50_000, 60_000]
    assert [step_label(t) for t in ticks][:2] == ["10k", "20k"]


def test_changed_regions_are_the_changed_cells_only() -> None:
    old = [cells_of(Text("loss j1 step 100 loss 0.5")), cells_of(Text("⠒⠒⠦⠤", style="cyan"))]
    new = [cells_of(Text("loss j1 step 101 loss 0.5")), cells_of(Text("⠒⠒⠦⠤", style="cyan"))]
    assert changed_regions(old, new, 40) == [Region(15, 0, 1, 1)]
    restyled = [old[0], cells_of(Text("⠒⠒⠦⠤", style="gray"))]
    assert changed_regions(old, restyled, 40) == [Region(0, 1, 4, 1)]  # same text, another colour
    longer = [cells_of(Text("loss j1 step 1000 loss 0.5")), old[1]]
    assert changed_regions(old, longer, 40) == [Region(16, 0, 24, 1)]  # to the line's end
    assert changed_regions(None, new, 40) is None and changed_regions(old, new[:1], 40) is None
