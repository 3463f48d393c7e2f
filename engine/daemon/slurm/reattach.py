"""A restarted daemon and the Slurm jobs an earlier one left: follow them again, never submit twice.

Jobs are started in this order: the store marks the job running (durably), ``sbatch`` submits it,
the store records the Slurm id. A daemon killed at any point leaves one of three pictures, and
``plan`` tells them apart from the store's running jobs and one ``squeue`` listing (our jobs are
known by the name ``trainconsole-<queue tag>-<job id>``):

- a Slurm job of ours is still pending or running: follow it (its recorded id, or the one found by
  name when the daemon died before recording it);
- it ended while no daemon watched: judge it as any ending (report first, then Slurm's state);
  a job Slurm no longer knows (purged after ``MinJobAge``) is judged by its report alone;
- no Slurm job was ever submitted for it: requeue it, no attempt charged, as a local job whose
  worker died with the daemon.

A Slurm job of ours for a job the store does not have running (cancelled or held meanwhile, or
an attempt superseded) is cancelled: only the store's running jobs may have a worker.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from trainconsole.engine.daemon.slurm.state import SlurmJob
from trainconsole.engine.daemon.slurm.submit import job_id_from_name


@dataclass
class Plan:
    attach: dict[str, int] = field(default_factory=dict)  # job id -> Slurm id still active
    judge: dict[str, SlurmJob | None] = field(default_factory=dict)  # ended (None: Slurm forgot it)
    requeue: list[str] = field(default_factory=list)  # never submitted
    cancel: list[int] = field(default_factory=list)  # ours, but no running job owns it


def plan(running: Mapping[str, int | None], slurm_jobs: Mapping[int, SlurmJob], tag: str) -> Plan:
    """``running``: the store's running jobs and the Slurm id recorded on each (None: none yet)."""
    out = Plan()
    by_job: dict[str, list[SlurmJob]] = {}
    for job in slurm_jobs.values():
        owner = job_id_from_name(job.name, tag)
        if owner is not None:
            by_job.setdefault(owner, []).append(job)
    for job_id, recorded in running.items():
        mine = sorted(by_job.pop(job_id, []), key=lambda j: j.slurm_id)
        active = [j for j in mine if j.active]
        if recorded is not None and recorded in slurm_jobs and slurm_jobs[recorded].active:
            keep: SlurmJob | None = slurm_jobs[recorded]
        else:
            keep = active[-1] if active else None
        if keep is not None:
            out.attach[job_id] = keep.slurm_id
            out.cancel += [j.slurm_id for j in active if j.slurm_id != keep.slurm_id]
        elif recorded is not None:
            out.judge[job_id] = slurm_jobs.get(recorded)
        elif mine:
            out.judge[job_id] = mine[-1]  # submitted, not recorded, and already ended
        else:
            out.requeue.append(job_id)
    for leftovers in by_job.values():
        out.cancel += [j.slurm_id for j in leftovers if j.active]
    return out
