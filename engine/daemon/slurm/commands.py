"""Running Slurm's commands: argv lists (no shell), bounded in time, errors as ``SlurmError``.

Each call is one short-lived client process; the controller is the only state. A command that
hangs (a controller that accepts and never answers) is cut at ``timeout_s``, so the daemon's loop
is never held by Slurm longer than that.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Mapping, Sequence

from trainconsole.engine.daemon.slurm.state import (
    ClusterSummary,
    SlurmError,
    SlurmJob,
    parse_scontrol_job,
    parse_sinfo,
    parse_squeue,
)

PROGRAMS = ("sbatch", "squeue", "scontrol", "scancel", "sinfo")
TIMEOUT_S = 30.0


def missing_programs(env: Mapping[str, str] | None = None) -> list[str]:
    path = (os.environ if env is None else env).get("PATH")
    return [p for p in PROGRAMS if shutil.which(p, path=path) is None]


class SlurmCommands:
    """The five client commands we use. ``env`` is the environment they run in (``SLURM_CONF``
    and the like come from it)."""

    def __init__(self, *, env: Mapping[str, str] | None = None, timeout_s: float = TIMEOUT_S) -> None:
        self.env = dict(os.environ if env is None else env)
        self.timeout_s = timeout_s

    def run(self, argv: Sequence[str], *, env: Mapping[str, str] | None = None) -> str:
        """stdout of a successful command; SlurmError naming the command and Slurm's words else."""
        shown = " ".join(argv[:2])
        try:
            proc = subprocess.run(list(argv), capture_output=True, text=True, timeout=self.timeout_s,
                                  env=dict(self.env if env is None else env), stdin=subprocess.DEVNULL,
                                  check=False)
        except FileNotFoundError:
            raise SlurmError(f"`{argv[0]}` is not installed or not on PATH; the Slurm client commands "
                             f"({', '.join(PROGRAMS)}) are needed with launcher.kind = \"slurm\"") from None
        except subprocess.TimeoutExpired:
            raise SlurmError(f"`{shown}` did not answer within {self.timeout_s:.0f}s (is slurmctld up?)") from None
        except OSError as exc:
            raise SlurmError(f"`{shown}` could not run: {exc}") from None
        if proc.returncode != 0:
            words = (proc.stderr.strip() or proc.stdout.strip()).splitlines()
            raise SlurmError(f"`{shown}` failed (exit {proc.returncode}): {words[-1] if words else 'no message'}")
        return proc.stdout

    def submit(self, argv: Sequence[str], env: Mapping[str, str]) -> int:
        """``sbatch --parsable ...``: the new job's id. ``env`` is what the job inherits."""
        out = self.run(argv, env=env).strip()
        first = out.split(";", 1)[0]  # "<id>" or "<id>;<cluster>"
        if not first.isdigit():
            raise SlurmError(f"`sbatch` printed {out[:80]!r}, not a job id")
        return int(first)

    def queue(self) -> dict[int, SlurmJob]:
        """Every job the controller holds (ours are picked by id); one call, whatever their number."""
        return parse_squeue(self.run(["squeue", "--json"]))

    def show(self, slurm_id: int) -> SlurmJob | None:
        """One job by id, None when the controller no longer has it (purged after MinJobAge)."""
        try:
            out = self.run(["scontrol", "show", "job", "-o", str(slurm_id)])
        except SlurmError as exc:
            if "Invalid job id" in str(exc):
                return None
            raise
        return parse_scontrol_job(out)

    def signal(self, slurm_id: int, signame: str) -> None:
        """Send ``signame`` to the job's batch shell and every process under it (``--full``): the
        worker, or torchrun and each rank."""
        self.run(["scancel", f"--signal={signame}", "--full", str(slurm_id)])

    def cancel(self, slurm_id: int) -> None:
        self.run(["scancel", str(slurm_id)])

    def sinfo(self) -> str:
        """``sinfo --json`` as printed; ``state.parse_sinfo`` and friends read it."""
        return self.run(["sinfo", "--json"])

    def cluster(self) -> ClusterSummary:
        return parse_sinfo(self.sinfo())
