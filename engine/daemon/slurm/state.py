"""What Slurm says about our jobs and its nodes, parsed from its JSON (never from columns).

Slurm 22.05 (``openapi/v0.0.38``) and the later data parsers differ in shape, not in meaning:
``job_state`` is a string or a list, numbers are plain or ``{"set", "infinite", "number"}``, and
``exit_code`` is a raw wait status or ``{"status", "return_code", "signal"}``. Both are read here.

Two facts learnt on a real 22.05 controller shape the callers:
- ``squeue --json`` lists every job the controller still holds, finished ones included, until
  ``MinJobAge`` seconds after they end; it ignores ``--jobs`` and the other filters. One call per
  interval therefore answers for all our jobs, and a job missing from it has been purged.
- when the controller does not answer, ``squeue --json`` still exits 0, with an empty job list
  and an ``errors`` entry. That is "no answer", never "every job is gone": ``parse_squeue`` raises.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Final

from trainconsole.engine.errors import TransientError

ACTIVE_STATES: Final = frozenset({"PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "SUSPENDED",
                                  "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "RESIZING", "SIGNALING",
                                  "STAGE_OUT", "STOPPED", "RESV_DEL_HOLD"})
# A job leaves COMPLETING only when all its processes are gone, so ours are done by then.
ENDED_STATES: Final = frozenset({"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "BOOT_FAIL",
                                 "PREEMPTED", "OUT_OF_MEMORY", "DEADLINE", "REVOKED", "SPECIAL_EXIT"})


class SlurmError(TransientError):
    """A Slurm command failed or its controller did not answer (retried, never a job's ending)."""


@dataclass(frozen=True)
class SlurmJob:
    """One Slurm job as the controller reports it."""

    slurm_id: int
    name: str
    state: str  # PENDING, RUNNING, COMPLETED, FAILED, CANCELLED, TIMEOUT, NODE_FAIL, OUT_OF_MEMORY, ...
    reason: str  # Slurm's reason (Resources, Priority, QOSMaxJobsPerUserLimit, NonZeroExitCode, ...)
    node: str  # the node list (one node for our jobs), "" while pending
    exit_code: int | None  # the batch script's exit status, when it exited
    signal: int | None  # the signal that ended it, when one did
    start_time: float | None
    end_time: float | None
    time_limit_min: int | None

    @property
    def active(self) -> bool:
        return self.state not in ENDED_STATES

    @property
    def running(self) -> bool:
        return self.state in ("RUNNING", "COMPLETING")


@dataclass(frozen=True)
class ClusterSummary:
    """The nodes as ``sinfo --json`` sees them, counted by what they can do for us."""

    nodes: int
    idle: int
    allocated: int  # allocated or mixed: running someone's jobs
    unavailable: int  # down, drained, draining, failing, not responding
    gpus: int  # GPUs configured on the nodes (from their gres), 0 when none are declared

    def line(self) -> str:
        parts = [f"{self.nodes} node{'s' if self.nodes != 1 else ''}", f"{self.idle} idle",
                 f"{self.allocated} allocated"]
        if self.unavailable:
            parts.append(f"{self.unavailable} down/drained")
        if self.gpus:
            parts.append(f"{self.gpus} GPUs")
        return ", ".join(parts)


def _number(value: Any) -> float | None:
    if isinstance(value, dict):
        if not value.get("set", True) or value.get("infinite"):
            return None
        value = value.get("number")
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return value


def _int(value: Any) -> int | None:
    num = _number(value)
    return None if num is None else int(num)


def _text(value: Any) -> str:
    if isinstance(value, list):
        return str(value[0]) if value else ""
    return "" if value is None else str(value)


def _exit(value: Any) -> tuple[int | None, int | None]:
    """(exit status, signal) from a raw wait status or a data-parser exit-code object."""
    if isinstance(value, dict):
        sig = value.get("signal")
        sig_id = _int(sig.get("id")) if isinstance(sig, dict) else _int(sig)
        code = _int(value.get("return_code"))
        return (None, sig_id) if sig_id else (code, None)
    raw = _int(value)
    if raw is None:
        return None, None
    if raw & 0x7F:
        return None, raw & 0x7F
    return raw >> 8, None


def job_from_json(obj: dict[str, Any]) -> SlurmJob | None:
    slurm_id = _int(obj.get("job_id"))
    if slurm_id is None:
        return None
    code, sig = _exit(obj.get("exit_code"))
    return SlurmJob(
        slurm_id=slurm_id, name=_text(obj.get("name")), state=_text(obj.get("job_state")).upper(),
        reason=_text(obj.get("state_reason")), node=_text(obj.get("nodes")) or _text(obj.get("batch_host")),
        exit_code=code, signal=sig, start_time=_number(obj.get("start_time")) or None,
        end_time=_number(obj.get("end_time")) or None, time_limit_min=_int(obj.get("time_limit")))


def _document(text: str, command: str) -> dict[str, Any]:
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise SlurmError(f"`{command}` printed something that is not JSON ({exc})") from None
    if not isinstance(data, dict):
        raise SlurmError(f"`{command}` printed JSON that is not an object")
    errors = [e for e in data.get("errors") or [] if isinstance(e, dict)]
    if errors:
        what = "; ".join(str(e.get("description") or e.get("error") or e) for e in errors[:3])
        raise SlurmError(f"`{command}`: the Slurm controller did not answer ({what})")
    return data


def parse_squeue(text: str) -> dict[int, SlurmJob]:
    """Every job in ``squeue --json``, by id. Raises SlurmError when Slurm did not answer."""
    jobs: dict[int, SlurmJob] = {}
    for obj in _document(text, "squeue --json").get("jobs") or []:
        job = job_from_json(obj) if isinstance(obj, dict) else None
        if job is not None:
            jobs[job.slurm_id] = job
    return jobs


def parse_sinfo(text: str) -> ClusterSummary:
    nodes = [n for n in _document(text, "sinfo --json").get("nodes") or [] if isinstance(n, dict)]
    idle = allocated = unavailable = gpus = 0
    for node in nodes:
        raw = node.get("state")
        words = {w.lower() for w in (raw if isinstance(raw, list) else [raw]) if isinstance(w, str)}
        words |= {f.lower() for f in node.get("state_flags") or [] if isinstance(f, str)}
        if words & {"down", "drained", "draining", "drain", "fail", "failing", "not_responding",
                    "future", "maint", "reboot_requested", "power_down", "powered_down"}:
            unavailable += 1
        elif words & {"allocated", "mixed", "completing"}:
            allocated += 1
        elif "idle" in words:
            idle += 1
        else:
            unavailable += 1
        gpus += gres_gpus(_text(node.get("gres")))
    return ClusterSummary(len(nodes), idle, allocated, unavailable, gpus)


def node_names_of(text: str) -> list[str]:
    return [str(n.get("hostname") or n.get("name")) for n in _document(text, "sinfo --json").get("nodes") or []
            if isinstance(n, dict) and (n.get("hostname") or n.get("name"))]


def partitions_of(text: str) -> set[str]:
    found: set[str] = set()
    for node in _document(text, "sinfo --json").get("nodes") or []:
        if isinstance(node, dict):
            found.update(str(p) for p in node.get("partitions") or [] if isinstance(p, str))
    return found


def gres_gpus(gres: str) -> int:
    """GPUs in a gres string such as ``gpu:a100:4(S:0-1),shard:8`` (0 when none)."""
    total = 0
    for item in gres.split(","):
        parts = item.split("(")[0].split(":")
        if parts and parts[0] == "gpu" and parts[-1].isdigit():
            total += int(parts[-1])
    return total


def parse_scontrol_job(text: str) -> SlurmJob | None:
    """``scontrol show job -o ID``: one line of ``Key=Value`` pairs (Slurm 22.05 has no --json for
    scontrol). Values of the fields read here hold no spaces; ``Command`` and ``WorkDir`` may, and
    come after them, so the line is cut at the first of those."""
    line = text.strip().splitlines()[0] if text.strip() else ""
    for tail in (" Command=", " WorkDir=", " StdErr="):
        line = line.split(tail, 1)[0]
    fields = dict(item.split("=", 1) for item in line.split() if "=" in item)
    if not fields.get("JobId", "").isdigit():
        return None
    slurm_id = int(fields["JobId"])
    code_text, _, sig_text = fields.get("ExitCode", "").partition(":")
    code = int(code_text) if code_text.isdigit() else None
    sig = int(sig_text) if sig_text.isdigit() and int(sig_text) else None
    nodes = fields.get("NodeList", "")
    return SlurmJob(slurm_id=slurm_id, name=fields.get("JobName", ""), state=fields.get("JobState", "").upper(),
                    reason=fields.get("Reason", ""), node="" if nodes == "(null)" else nodes,
                    exit_code=None if sig else code, signal=sig, start_time=None, end_time=None,
                    time_limit_min=None)
