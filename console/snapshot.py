"""What the console shows, as immutable values: built off the UI thread, applied on it.

A snapshot holds display-ready numbers (uptime, ETA, rates already computed), so the widgets do
no clock reads and scripted test data renders the same every time.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from trainconsole.engine.sysmon import Sample

MUTABLE_STATUSES = ("queued", "held")


@dataclass(frozen=True)
class JobRow:
    id: str
    name: str
    priority: str  # high | normal | low
    status: str  # queued | held | running | done | failed | cancelled
    attempts: int
    step: int = 0
    max_steps: int = 0
    eta_s: float | None = None
    reason: str = ""
    error: str = ""
    error_class: str = ""
    created_at: float | None = None
    started_at: float | None = None
    finished_at: float | None = None
    lineage: str = "main"
    sweep: str | None = None  # jobs of one `add --sweep` share it: the table can group them
    eval_loss: float | None = None  # the newest evaluation's loss (the store's, kept by the daemon)
    last_loss: float | None = None
    slurm_id: int | None = None  # launcher.kind = "slurm": the attempt's Slurm job and its node
    node: str = ""

    @property
    def progress(self) -> str:
        """Steps, percent and ETA, each no finer than it is worth: on a long run the cell then
        changes every few seconds, not at every refresh (and a changed cell is drawn and sent)."""
        if self.max_steps <= 0:
            return "-" if self.status != "done" else "done"
        pct = 100.0 * min(self.step, self.max_steps) / self.max_steps
        text = f"{format_steps(self.step, self.max_steps)}/{format_steps(self.max_steps)} {pct:3.0f}%"
        if self.status == "running" and self.eta_s is not None:
            text += f" ~{format_eta(self.eta_s)}"
        return text


    @property
    def progress_short(self) -> str:
        if self.max_steps <= 0:
            return "-" if self.status != "done" else "done"
        pct = 100.0 * min(self.step, self.max_steps) / self.max_steps
        text = f"{pct:3.0f}%"
        if self.status == "running" and self.eta_s is not None:
            text += f" ~{format_eta(self.eta_s)}"
        return text


@dataclass(frozen=True)
class AlertRow:
    key: str  # unique and stable: acknowledgement refers to it
    case: int | None
    severity: str  # info | warning | critical
    job_id: str | None
    t: float  # wall seconds, display only
    message: str
    acked: bool = False
    resolved: bool = False  # the condition under this key is over (a standing alert settled)

    @property
    def unread(self) -> bool:
        return not self.acked and not self.resolved


@dataclass(frozen=True)
class EngineView:
    state: str  # running | paused | stopped | not running
    pid: int | None = None
    uptime_s: float | None = None
    started_at: float | None = None  # the engine's start, wall time (shown, rather than an uptime)
    step_rate: float | None = None  # steps per second of the running job
    detail: str = ""


@dataclass(frozen=True)
class LossView:
    job_id: str
    train_x: tuple[float, ...] = ()
    train_y: tuple[float, ...] = ()
    smooth_x: tuple[float, ...] = ()
    smooth_y: tuple[float, ...] = ()
    eval_x: tuple[float, ...] = ()
    eval_y: tuple[float, ...] = ()
    last_loss: float | None = None
    last_step: int = 0
    max_steps: int = 0  # the job's planned steps, when known: the x axis never needs to pass it

    @property
    def empty(self) -> bool:
        return not self.train_x and not self.eval_x


@dataclass(frozen=True)
class Snapshot:
    jobs: tuple[JobRow, ...] = ()
    engine: EngineView = EngineView("not running")
    paused: bool = False
    resources: Sample | None = None
    gpu_detail: str = ""
    alerts: tuple[AlertRow, ...] = ()  # newest first
    loss: LossView | None = None
    problem: str = ""  # why part of the data could not be read, shown in the status line
    disk_labels: dict[str, str] = field(default_factory=dict)  # path -> short label
    cluster: str = ""  # the Slurm cluster's nodes (idle/allocated), from the engine's resource events
    # True counts over every alert read (``alerts`` holds only the newest few hundred); None:
    # counted from ``alerts``.
    alert_unread: int | None = None
    alert_critical: bool | None = None
    alert_total: int | None = None

    def alert_counts(self) -> tuple[int, bool, int]:
        """(unread, whether a critical one is unread, total)."""
        if self.alert_unread is not None and self.alert_critical is not None and self.alert_total is not None:
            return self.alert_unread, self.alert_critical, self.alert_total  # counted as they came
        unread = [a for a in self.alerts if a.unread]
        return (len(unread) if self.alert_unread is None else self.alert_unread,
                any(a.severity == "critical" for a in unread) if self.alert_critical is None
                else self.alert_critical,
                len(self.alerts) if self.alert_total is None else self.alert_total)

    def job(self, job_id: str | None) -> JobRow | None:
        if job_id is None:
            return None
        for row in self.jobs:
            if row.id == job_id:
                return row
        return None

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for row in self.jobs:
            out[row.status] = out.get(row.status, 0) + 1
        return out


def format_duration(seconds: float) -> str:
    s = max(0, int(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{(s % 3600) // 60:02d}m"
    return f"{s // 86400}d{(s % 86400) // 3600:02d}h"


def format_eta(seconds: float) -> str:
    """Seconds only in the last two minutes; then minutes, then hours and minutes."""
    s = max(0, int(seconds))
    if s < 120:
        return format_duration(s)
    if s < 3600:
        return f"{s // 60}m"
    return format_duration(s)


def format_steps(steps: int, scale: int | None = None) -> str:
    """A step count as written in the queue: exact up to 10k; then in thousands, to a tenth
    below 100k (the count changes every 100 steps, not every step)."""
    scale = steps if scale is None else scale
    if scale < 10_000:
        return str(steps)
    if scale < 100_000:
        return f"{steps / 1000:.1f}k"
    return f"{steps // 1000}k"


def format_age(seconds: float) -> str:
    """Coarse, as k9s shows ages: a line that changes once a minute costs the terminal nothing."""
    s = max(0, int(seconds))
    if s < 60:
        return "<1m"
    if s < 3600:
        return f"{s // 60}m"
    if s < 86400:
        return f"{s // 3600}h{(s % 3600) // 60:02d}m"
    return f"{s // 86400}d{(s % 86400) // 3600:02d}h"


def by_eval_loss(row: JobRow) -> tuple[bool, float, int]:
    """Sort key for the queue table's eval-loss order: best (lowest) first, jobs without an
    evaluation last, ties in queue order. A sweep's points line up by how well they did."""
    return (row.eval_loss is None, row.eval_loss if row.eval_loss is not None else 0.0, _seq(row.id))


def _seq(job_id: str) -> int:
    digits = job_id.lstrip("j")
    return int(digits) if digits.isdigit() else 0


# Orders the queue table offers (key binding and widget: the console's own business).
JOB_ORDERS = {"queue": None, "eval_loss": by_eval_loss}
