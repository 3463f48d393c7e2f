"""Queue benchmark: `trainconsole status --json` as a whole process with 10,000 jobs in the store
(target: under 0.3 s), and inbox ingest throughput for 1,000 small files.

Baselines measured in the same run: `python -c pass` (interpreter start-up, the floor for any
command) and a bare rename + fsync per file (the floor for a crash-safe move).

    python bench/queue.py [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from trainconsole.engine.daemon.inbox import Inbox  # noqa: E402
from trainconsole.engine.layout import Layout  # noqa: E402
from trainconsole.engine.store import Store  # noqa: E402
from trainconsole.engine.store.schema import COLUMNS  # noqa: E402

N_JOBS = 10_000
N_FILES = 1_000


def _workspace(base: Path) -> tuple[Path, Layout]:
    ws = base / "ws"
    ws.mkdir()
    (ws / "config.toml").write_text("")  # every key at its default
    layout = Layout(ws / "queue", ws / "runs", ws / "adapters", ws / ".cache")
    layout.ensure()
    return ws, layout


def _fill(layout: Layout, n: int) -> None:
    """10,000 rows in one transaction. Going through add_job would time 10,000 file copies, which
    is the ingest benchmark's business; status reads only the database."""
    statuses = ["done"] * 60 + ["failed"] * 10 + ["cancelled"] * 5 + ["queued"] * 20 + ["held"] * 5
    now = time.time()
    with Store.open(layout) as store:
        conn = store.db.conn
        conn.execute("BEGIN IMMEDIATE")
        rows = []
        for seq in range(1, n + 1):
            status = statuses[seq % len(statuses)]
            failed = status == "failed"
            rows.append((seq, f"j{seq:04d}", f"file {seq}.jsonl".encode(), f"j{seq:04d}--file_{seq}.jsonl",
                         f"{seq:064x}", 1000 + seq, ("high", "normal", "low")[seq % 3], status,
                         3 if failed else 1, None, "transient" if failed else None,
                         "I/O error" if failed else None, "{}",
                         '[{"attempt":1,"class":"transient","message":"I/O error","t":1}]' if failed else "[]",
                         now - n + seq, now - n + seq, None, None, None, None, None, None))
        rows[-1] = rows[-1][:7] + ("running",) + rows[-1][8:]
        marks = ",".join("?" * len(COLUMNS))
        conn.executemany(f"INSERT INTO jobs({','.join(COLUMNS)}) VALUES ({marks})", rows)
        conn.execute("UPDATE meta SET value=? WHERE key='next_seq'", (str(n + 1),))
        conn.execute("COMMIT")


def _time_process(argv: list[str], runs: int, cwd: Path) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        res = subprocess.run(argv, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        times.append(time.perf_counter() - start)
        if res.returncode != 0:
            raise SystemExit(f"{argv} failed: {res.stderr.decode(errors='replace')}")
    return statistics.median(times)


def _ingest(layout: Layout, n: int) -> float:
    for i in range(n):
        (layout.incoming / f"small {i}.jsonl").write_text(
            json.dumps({"messages": [{"role": "user", "content": f"q{i}"},
                                     {"role": "assistant", "content": f"a{i}"}]}) + "\n")
    with Store.open(layout) as store:
        inbox = Inbox(layout)
        start = time.perf_counter()
        taken = 0
        while batch := inbox.scan(store, stable_s=0.0):
            taken += len(batch)
        elapsed = time.perf_counter() - start
    assert taken == n, taken
    return n / elapsed


def _rename_fsync_floor(base: Path, n: int) -> float:
    src, dst = base / "floor-src", base / "floor-dst"
    src.mkdir()
    dst.mkdir()
    for i in range(n):
        (src / f"{i}.jsonl").write_text("x\n")
    start = time.perf_counter()
    for i in range(n):
        os.rename(src / f"{i}.jsonl", dst / f"{i}.jsonl")
        fd = os.open(dst, os.O_RDONLY)
        os.fsync(fd)
        os.close(fd)
    return n / (time.perf_counter() - start)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repetitions (under 2 minutes)")
    args = parser.parse_args()
    runs = 5 if args.quick else 15
    with tempfile.TemporaryDirectory(prefix="tc-bench-queue-") as tmp:
        base = Path(tmp)
        ws, layout = _workspace(base)
        _fill(layout, N_JOBS)
        startup = _time_process([sys.executable, "-c", "pass"], runs, ws)
        status = _time_process([sys.executable, "-m", "trainconsole.console.cli", "--config", str(ws / "config.toml"),
                                "status", "--json"], runs, ws)
        (base / "ingest").mkdir()
        _, layout2 = _workspace(base / "ingest")
        rate = _ingest(layout2, N_FILES)
        floor = _rename_fsync_floor(base, N_FILES)
    metrics = {
        "status_json_s_10k_jobs": round(status, 4),
        "python_startup_s": round(startup, 4),
        "status_json_ratio_to_startup": round(status / startup, 2),
        "ingest_files_per_s": round(rate, 1),
        "rename_fsync_files_per_s": round(floor, 1),
        "ingest_ratio_to_rename_fsync": round(rate / floor, 3),
    }
    width = max(map(len, metrics))
    print(f"{'metric':<{width}}  value")
    for key, value in metrics.items():
        print(f"{key:<{width}}  {value}")
    print(f"status --json target < 0.3 s: {'met' if status < 0.3 else 'NOT met'}")
    out = ROOT / "bench" / "results" / "queue.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"benchmark": "queue", "quick": args.quick, "metrics": metrics}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
