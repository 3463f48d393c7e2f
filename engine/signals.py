"""The signals of the worker protocol: who sends which, and what the worker does with it.

- ``STOP_SIGNALS`` (SIGTERM, SIGINT, SIGUSR1): checkpoint at the next step boundary, write an
  ``interrupted`` report naming the signal, exit with the interrupted code. SIGTERM is the
  engine's stop and the kernel's or a scheduler's polite kill; SIGUSR1 is what Slurm sends ahead
  of a job's time limit (``sbatch --signal=B:USR1@<seconds>``), the usual choice on clusters.
- ``STACKS_SIGNAL`` (SIGUSR2): dump every thread's Python stack to ``stacks.txt`` and go on. The
  daemon sends it to a worker it judges hung, before ending it (case 70). It is not SIGUSR1,
  which clusters reserve for the time-limit warning: a stack dump there would let a job run
  into its limit and be killed without a checkpoint.
"""

from __future__ import annotations

import signal
from typing import Final

STOP_SIGNALS: Final = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)
STACKS_SIGNAL: Final = signal.SIGUSR2
# The name Slurm's --signal option takes for the time-limit warning (one of STOP_SIGNALS).
TIME_LIMIT_SIGNAL: Final = "USR1"


def signal_name(num: int) -> str:
    try:
        return signal.Signals(num).name
    except ValueError:
        return f"signal {num}"
