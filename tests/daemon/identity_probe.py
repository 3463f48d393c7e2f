"""What one process sees of the engine and its workers, as JSON on stdout (run it under
``tests.daemon.clockstep`` to see it after a clock step).

``python -m tests.daemon.identity_probe CONFIG``"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import psutil

from trainconsole.engine.config import load_config
from trainconsole.engine.daemon.recovery import find_orphans
from trainconsole.engine.lock import engine_running, read_pidfile
from trainconsole.engine.procid import identity, same_process
from trainconsole.engine.store import Store


def main() -> None:
    layout = load_config(Path(sys.argv[1])).layout()
    info = read_pidfile(layout)
    running = engine_running(layout)
    with Store.open(layout, repair=False) as store:
        jobs = store.jobs()
    workers = {j.id: {"pid": j.pid, "recorded": j.pid_start, "identity": identity(j.pid or 0),
                      "same": same_process(j.pid, j.pid_start),
                      "create_time": psutil.Process(j.pid).create_time() if j.pid else None}
               for j in jobs if j.status == "running"}
    print(json.dumps({
        "boot_time": psutil.boot_time(),
        "pidfile": None if info is None else {"pid": info.pid, "start_time": info.start_time,
                                              "identity": info.identity},
        "engine_pid": None if running is None else running.pid,
        "engine_create_time": psutil.Process(info.pid).create_time() if info else None,
        "workers": workers,
        "orphans": [[o.pid, o.job_id, o.how] for o in find_orphans(jobs, layout)],
    }))


if __name__ == "__main__":
    main()
