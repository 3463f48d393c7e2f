"""A scripted data source for the console: fixed times, no clock, no engine. Mutations change the
scripted jobs the way the store would, and are recorded, so Pilot tests see the screen react."""

from __future__ import annotations

import dataclasses
import math
import threading
from pathlib import Path
from typing import Any

from trainconsole.console.exporting import ExportResult
from trainconsole.console.series import downsample, ema_debiased
from trainconsole.console.snapshot import AlertRow, EngineView, JobRow, LossView, Snapshot
from trainconsole.engine.adapters import Adapter, Lineage
from trainconsole.engine.sysmon import GpuSample, Sample

T0 = 1_780_000_000.0  # a fixed wall time: snapshots render the same on every run


def sample(gpus: int = 0) -> Sample:
    devices = [GpuSample(i, "NVIDIA H100 80GB HBM3", 87.0 - 20 * i, 61_440.0, 81_559.0, 64.0 + i, 412.0)
               for i in range(gpus)]
    return Sample(ram_total_mb=64_000.0, ram_used_mb=23_500.0, ram_available_mb=40_500.0,
                  swap_used_mb=0.0, swap_in_mb_s=0.0,
                  disk_free_mb={"/ws/queue": 120_000.0, "/ws/runs": 120_000.0},
                  gpus=devices, gpu_state="ok" if gpus else "no_nvml", mono=100.0)


def loss_view(job_id: str, width: int = 60, steps: int = 120) -> LossView:
    xs = [float(s) for s in range(1, steps + 1)]
    ys = [2.5 * math.exp(-s / 40) + 0.3 + 0.08 * math.sin(s * 1.7) for s in range(1, steps + 1)]
    ys[70] = 3.1  # a spike that downsampling must keep
    tx, ty = downsample(xs, ys, width)
    sx, sy = downsample(xs, ema_debiased(ys), width)
    ex = [25.0, 50.0, 75.0, 100.0]
    ey = [1.9, 1.1, 0.8, 0.7]
    return LossView(job_id, tuple(tx), tuple(ty), tuple(sx), tuple(sy), tuple(ex), tuple(ey),
                    last_loss=ys[-1], last_step=steps)


def jobs() -> list[JobRow]:
    return [
        JobRow("j0001", "support-chats.jsonl", "normal", "done", 1, 200, 200, None, "",
               created_at=T0 - 3600, started_at=T0 - 3500, finished_at=T0 - 1800),
        JobRow("j0002", "reverse-words.jsonl", "high", "running", 1, 120, 400, 280.0, "",
               created_at=T0 - 1800, started_at=T0 - 600),
        JobRow("j0003", "arithmetic.jsonl", "normal", "queued", 0, 0, 0, None, "priority (1 ahead)",
               created_at=T0 - 1700),
        JobRow("j0004", "tone-rewrite.jsonl", "low", "held", 0, 0, 0, None, "held",
               created_at=T0 - 1600),
        JobRow("j0005", "broken-file.jsonl", "normal", "failed", 1, 0, 0, None, "",
               error="broken-file.jsonl: no valid example (12 of 12 lines invalid)",
               error_class="data", created_at=T0 - 1500, finished_at=T0 - 1400),
    ]


def alerts() -> list[AlertRow]:
    return [
        AlertRow("a2", 67, "warning", "j0002", T0 - 60, "validation loss rose for 2 evaluations"),
        AlertRow("a1", 4, "critical", "j0005", T0 - 1400,
                 "broken-file.jsonl line 1: not valid JSON (expecting value); file rejected"),
    ]


ADAPTERS = Path("/ws/adapters")


def adapter(number: int, job_id: str, lineage: str = "main", parent: str | None = None,
            step: int | None = 200, eval_loss: float | None = None) -> Adapter:
    name = f"{number:04d}-{job_id}"
    return Adapter(name, ADAPTERS / name, number, job_id, lineage, parent, step, eval_loss,
                   T0 - 1800 + number, "builtin:tiny-chat")


def lineage_list() -> list[Lineage]:
    """main continued twice (j0001, then a later job on it), and a sweep's lineage of one."""
    first = adapter(1, "j0001", eval_loss=0.8123)
    second = adapter(3, "j0006", parent=first.name, step=400, eval_loss=0.6541)
    sweep = adapter(2, "j0007", lineage="lr-sweep.learning_rate=0.0002", step=120, eval_loss=None)
    return [Lineage("main", second, (first, second), "builtin:tiny-chat"),
            Lineage(sweep.lineage, sweep, (sweep,), "builtin:tiny-chat")]


class ScriptedClient:
    readonly = False

    def __init__(self, *, gpus: int = 0, engine: str = "running") -> None:
        self.lock = threading.Lock()
        self.jobs = {j.id: j for j in jobs()}
        self.alerts = alerts()
        self.acked: set[str] = set()
        self.paused = engine == "paused"
        self.engine = engine
        self.gpus = gpus
        self.calls: list[tuple[Any, ...]] = []
        self.stop_posted = False
        self.log_lines = [f"12:00:0{i} step {i}/400 loss 2.{9 - i}" for i in range(5)]

    def snapshot(self, focus: str | None, width: int) -> Snapshot:
        with self.lock:
            rows = tuple(self.jobs.values())
            alerts = tuple(dataclasses.replace(a, acked=a.key in self.acked) for a in self.alerts)
            engine = (EngineView("not running") if self.engine == "not running" else
                      EngineView("paused" if self.paused else "running", pid=4242, uptime_s=3723.0,
                                 started_at=T0 - 3723.0,
                                 step_rate=0.98))
        target = focus if focus in ("j0001", "j0002") else "j0002"
        return Snapshot(jobs=rows, engine=engine, paused=self.paused, resources=sample(self.gpus),
                        alerts=alerts, loss=loss_view(target, 60),
                        disk_labels={"/ws/queue": "queue", "/ws/runs": "runs"})

    def job_log(self, job_id: str) -> list[str]:
        return [f"12:00:0{i} step {i}/400 loss 2.{9 - i}" for i in range(5)]

    def follow_log(self, job_id: str, offset: int | None) -> tuple[list[str], int]:
        """The scripted log, as it grows: ``log_lines`` from the offset on."""
        with self.lock:
            start = 0 if offset is None else offset
            self.calls.append(("follow_log", job_id, offset))
            return list(self.log_lines[start:]), len(self.log_lines)

    def _set(self, job_id: str, **changes: Any) -> None:
        with self.lock:
            self.jobs[job_id] = dataclasses.replace(self.jobs[job_id], **changes)

    def set_priority(self, job_id: str, level: str) -> None:
        self.calls.append(("set_priority", job_id, level))
        self._set(job_id, priority=level)

    def hold(self, job_id: str) -> None:
        self.calls.append(("hold", job_id))
        self._set(job_id, status="held")

    def release(self, job_id: str) -> None:
        self.calls.append(("release", job_id))
        self._set(job_id, status="queued")

    def retry(self, job_id: str) -> None:
        self.calls.append(("retry", job_id))
        self._set(job_id, status="queued", error="", error_class="")

    def retry_all_failed(self) -> int:
        self.calls.append(("retry_all_failed",))
        failed = [j for j in self.jobs.values() if j.status == "failed"]
        for job in failed:
            self._set(job.id, status="queued")
        return len(failed)

    def cancel(self, job_id: str) -> None:
        self.calls.append(("cancel", job_id))
        self._set(job_id, status="cancelled")

    def set_paused(self, paused: bool) -> None:
        self.calls.append(("set_paused", paused))
        self.paused = paused

    def stop_engine(self) -> None:
        self.calls.append(("stop_engine",))
        self.stop_posted = True

    def acknowledge(self, keys: list[str]) -> None:
        self.calls.append(("acknowledge", tuple(keys)))
        self.acked.update(keys)

    def acknowledge_all(self) -> None:
        self.calls.append(("acknowledge_all",))
        self.acked.update(a.key for a in self.alerts)

    def lineages(self) -> list[Lineage]:
        self.calls.append(("lineages",))
        return lineage_list()

    def job_adapter(self, job_id: str) -> Adapter | None:
        return next((a for g in lineage_list() for a in g.adapters if a.job_id == job_id), None)

    def export_destination(self, adapter: Adapter) -> Path:
        return Path("/ws/exports") / f"{adapter.lineage}-{adapter.job_id}"

    def export(self, adapter: str, out: Path, merge: bool) -> ExportResult:
        self.calls.append(("export", adapter, str(out), merge))
        return ExportResult(True, f"exported {'merged model' if merge else 'adapter'} {adapter} to {out}")

    def close(self) -> None:
        pass
