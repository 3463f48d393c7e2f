"""Running the queue's workers as Slurm jobs (``launcher.kind = "slurm"``; docs/cluster.md).

- ``state``: Slurm's JSON (``squeue``, ``sinfo``) and ``scontrol -o`` lines, parsed into typed jobs
  and a cluster summary;
- ``commands``: the client commands, as argv lists with a time bound;
- ``submit``: the ``sbatch`` options and the generated batch script;
- ``tracker``: one ``squeue --json`` per interval for all our jobs;
- ``endings``: every way a Slurm job ends, mapped to our outcomes (a pure function);
- ``launcher``: the submitted job seen as a worker (poll, signal, stacks) and the launcher;
- ``cluster``: the supervisor's handle (store records, the sinfo line, start-up recovery);
- ``supervise``: what the supervisor does differently for a Slurm attempt.

Torch-free like the rest of the daemon. A package rather than one module: each part is tested on
its own (the endings and the parsers without any Slurm, the rest against a real one).
"""
