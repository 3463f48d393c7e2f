"""Resource gauges: each GPU (utilisation, memory, temperature, power, and the running job's own
memory on it), or a plain "no GPU" state with the job's CPU use, then RAM, swap and free disk.
A fixed-size text block, redrawn only when its text changes, one line at a time."""

from __future__ import annotations

import dataclasses

from rich.text import Text
from textual.containers import Vertical
from textual.widgets import Static

from trainconsole.engine.procmon import WorkerUsage
from trainconsole.engine.sysmon import GpuSample, Sample

NO_GPU_TEXT = {
    "no_nvml": ("no GPU: training on CPU", "no NVIDIA driver (NVML) found"),
    "no_gpu": ("no GPU: training on CPU", "NVML sees no device"),
    "error": ("GPU monitoring failed", ""),
}


# Host figures move with every other process on the machine, not with the job: a console left
# open on an idle queue sent a RAM line to the terminal every few seconds (other users' tests
# swinging the container's RAM by a few hundred MB). The shown figure is held until it moves
# by a step an operator acts on, and followed closely where it matters: RAM once the bar turns
# yellow (70%), free disk under 10 GB (red under 1 GB).
RAM_STEP = 0.05  # of the total
RAM_CLOSE = 0.7
DISK_STEP_MB = 1024.0
DISK_CLOSE_MB = 10 * 1024.0


def steady(sample: Sample, shown: Sample | None) -> Sample:
    """``sample`` with RAM and free disk as ``shown`` had them, unless they moved by a step
    (``RAM_STEP``, ``DISK_STEP_MB``) or are near their limit."""
    if shown is None or not sample.ram_total_mb:
        return sample
    ram = sample.ram_used_mb
    if (shown.ram_total_mb == sample.ram_total_mb and ram < RAM_CLOSE * sample.ram_total_mb
            and shown.ram_used_mb < RAM_CLOSE * sample.ram_total_mb
            and abs(ram - shown.ram_used_mb) < RAM_STEP * sample.ram_total_mb):
        ram = shown.ram_used_mb
    disk = {}
    for path, free in sample.disk_free_mb.items():
        before = shown.disk_free_mb.get(path)
        keep = (before is not None and min(free, before) >= DISK_CLOSE_MB
                and abs(free - before) < DISK_STEP_MB)
        disk[path] = before if keep and before is not None else free
    if ram == sample.ram_used_mb and disk == sample.disk_free_mb:
        return sample
    return dataclasses.replace(sample, ram_used_mb=ram, disk_free_mb=disk)


def bar(fraction: float | None, width: int) -> Text:
    if fraction is None or width <= 0:
        return Text("?".center(max(width, 1)), style="dim")
    fraction = min(1.0, max(0.0, fraction))
    filled = round(fraction * width)
    style = "green" if fraction < 0.7 else ("yellow" if fraction < 0.9 else "bold red")
    return Text("█" * filled, style=style) + Text("░" * (width - filled), style="dim")


def _gb(mb: float | None) -> str:
    return "?" if mb is None else f"{mb / 1024:.1f}G"


def _num(value: float | None, unit: str) -> str:
    return "?" if value is None else f"{value:.0f}{unit}"


def gpu_lines(gpu: GpuSample, width: int) -> list[Text]:
    name = (gpu.name or "GPU").replace("NVIDIA ", "")
    tail = f" {_num(gpu.temp_c, '°C')} {_num(gpu.power_w, 'W')}"
    head = Text(f"GPU{gpu.index} ", style="bold") + Text(name[: max(4, width - 6 - len(tail))] + tail)
    bar_w = max(4, width - 17)
    util = None if gpu.util_pct is None else gpu.util_pct / 100
    mem = (None if gpu.mem_used_mb is None or not gpu.mem_total_mb
           else gpu.mem_used_mb / gpu.mem_total_mb)
    mem_text = f"{_gb(gpu.mem_used_mb)[:-1]}/{_gb(gpu.mem_total_mb)}"
    lines = [head,
             Text(" util ") + bar(util, bar_w) + Text(f" {_num(gpu.util_pct, '%'):>4}"),
             Text(" mem  ") + bar(mem, bar_w) + Text(f" {mem_text}")]
    if gpu.job_mem_mb is not None:
        # The worker's own memory (per process, as nvitop shows it): the device total also
        # counts other users and the driver.
        job = gpu.job_mem_mb / gpu.mem_total_mb if gpu.mem_total_mb else None
        lines.append(Text(" job  ") + bar(job, bar_w) + Text(f" {_gb(gpu.job_mem_mb)}"))
    return lines


def worker_line(worker: WorkerUsage, width: int) -> Text:
    """The job's processes: CPU (of every core, with the percent of one core as top shows it)
    and resident memory, the gauge that matters when training runs on CPU."""
    cpu = "?" if worker.cpu_pct is None else f"{worker.cpu_pct:.0f}%"
    tail = f" {cpu:>5} {_gb(worker.rss_mb)}"
    return Text("job  ") + bar(worker.cpu_fraction, max(4, width - 5 - len(tail))) + Text(tail)


def gpu_line(gpu: GpuSample, width: int) -> Text:
    """One GPU on one line (utilisation bar, memory, temperature), when three lines each would
    push RAM and disk out of a short panel."""
    util = None if gpu.util_pct is None else gpu.util_pct / 100
    tail = f" {_num(gpu.util_pct, '%'):>4} {_gb(gpu.mem_used_mb)[:-1]}/{_gb(gpu.mem_total_mb)} {_num(gpu.temp_c, '°C')}"
    head = Text(f"GPU{gpu.index} ", style="bold")
    return head + bar(util, max(4, width - head.cell_len - len(tail))) + Text(tail)


def render_gauges(sample: Sample | None, gpu_detail: str, labels: dict[str, str], width: int,
                  height: int | None = None, cluster: str = "") -> list[Text]:
    """The panel's lines; given ``height``, GPUs take one line each when three would not leave
    room for RAM, swap and disk (80x24 leaves six lines). ``cluster``: the Slurm cluster's nodes,
    a first line of its own (the GPUs below are this machine's)."""
    width = max(20, width)
    out: list[Text] = [Text("cluster ", style="bold") + Text(cluster[: width - 8])] if cluster else []
    if sample is None:
        return [*out, Text("sampling…", style="dim")]
    on_gpu = any(g.job_mem_mb for g in sample.gpus)
    cpu_gauge = sample.worker is not None and not on_gpu
    if sample.gpu_state == "ok" and sample.gpus:
        rest = 2 + cpu_gauge + len({int(free) for free in sample.disk_free_mb.values()})
        per_gpu = 3 + any(g.job_mem_mb is not None for g in sample.gpus)
        roomy = height is None or per_gpu * len(sample.gpus) + rest <= height
        for gpu in sample.gpus:
            out += gpu_lines(gpu, width) if roomy else [gpu_line(gpu, width)]
    else:
        head, why = NO_GPU_TEXT.get(sample.gpu_state, ("no GPU: training on CPU", ""))
        style = "bold red" if sample.gpu_state == "error" else "bold yellow"
        out.append(Text(head[:width], style=style))
        why = gpu_detail if sample.gpu_state == "error" and gpu_detail else why
        # A short panel keeps the job's gauge rather than the reason there is no GPU.
        if why and (height is None or not cpu_gauge or height >= 6 + len(sample.disk_free_mb)):
            out.append(Text(why[:width], style="dim"))
    if sample.worker is not None and cpu_gauge:
        out.append(worker_line(sample.worker, width))
    bar_w = max(4, width - 20)
    ram_frac = sample.ram_used_mb / sample.ram_total_mb if sample.ram_total_mb else None
    out.append(Text("RAM  ") + bar(ram_frac, bar_w) + Text(
        f" {_gb(sample.ram_used_mb)}/{_gb(sample.ram_total_mb)}"))
    swap_style = "bold red" if sample.swap_in_mb_s >= 1.0 else ""
    out.append(Text(f"swap {_gb(sample.swap_used_mb)} used, in ")
               + Text(f"{sample.swap_in_mb_s:.1f} MB/s", style=swap_style))
    # Folders on one filesystem share a line (same free space to the megabyte).
    by_free: dict[int, list[str]] = {}
    for path, free in sample.disk_free_mb.items():
        by_free.setdefault(int(free), []).append(labels.get(path, path))
    for free_mb, names in by_free.items():
        style = "bold red" if free_mb < 1024 else ""
        out.append(Text(f"disk {'+'.join(names):<6} ") + Text(f"{_gb(free_mb)} free", style=style))
    return out


class Gauges(Vertical):
    """One line widget per gauge: when RAM moves, one line goes to the terminal, not the panel.
    Lines are fixed-size, so an update never needs a layout pass."""

    DEFAULT_CSS = """
    Gauges { overflow-y: auto; }  /* more GPUs than rows even one line each: a scrollbar says so */
    Gauges > Static { height: 1; }
    """

    def __init__(self, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self._lines: list[Text] = []
        self._args: tuple[Sample | None, str, dict[str, str]] = (None, "", {})
        self._cluster = ""

    def apply(self, sample: Sample | None, gpu_detail: str, labels: dict[str, str], cluster: str = "") -> None:
        if sample is not None:
            sample = steady(sample, self._args[0])
        self._args = (sample, gpu_detail, labels)
        self._cluster = cluster
        self._draw()

    def on_resize(self) -> None:
        self._draw()

    @property
    def text(self) -> str:
        return "\n".join(line.plain for line in self._lines)

    def _draw(self) -> None:
        lines = render_gauges(*self._args, width=self.content_size.width or 36,
                              height=self.content_size.height or None, cluster=self._cluster)
        if lines == self._lines:
            return
        widgets = list(self.query_children(Static))
        if len(widgets) != len(lines):
            self.remove_children()
            self.mount_all([Static(line) for line in lines])
        else:
            for widget, new, old in zip(widgets, lines, self._lines, strict=True):
                if new != old:
                    widget.update(new, layout=False)
        self._lines = lines
