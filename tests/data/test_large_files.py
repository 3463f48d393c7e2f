"""Large files stream in bounded memory: several hundred MB of records, a line longer than the cap,
a file past a gigabyte. Peak RSS is measured in a child process: its own from VmHWM, its workers'
from getrusage. Not its own getrusage: Linux carries ru_maxrss across exec, so a child forked from a
pytest grown to 400 MB would report the parent's size. A memory bound, not a time bound."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.helpers import ROOT

MEASURE = """
import json, resource, sys
from trainconsole.engine.data.gate import validate_file
r = validate_file(sys.argv[1], workers=int(sys.argv[2]) or None)
own_kb = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:"))
peak_kb = max(own_kb, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
print(json.dumps({"peak_mb": peak_kb / 1024, "valid": r.valid, "invalid": r.invalid, "verdict": r.verdict,
                  "problems": [[p.line, p.reason] for p in r.problems], "lines": r.lines}))
"""
LIMIT_MB = 200


def _measure(path: Path, workers: int) -> dict[str, Any]:
    done = subprocess.run([sys.executable, "-c", MEASURE, str(path), str(workers)], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def _records_block(n: int) -> bytes:
    out = []
    for i in range(n):
        msgs = [{"role": "user", "content": f"question {i} " + "word " * (i % 50)},
                {"role": "assistant", "content": f"answer {i} " + "token " * (i % 120)}]
        out.append(orjson.dumps({"messages": msgs}))
    return b"\n".join(out) + b"\n"


@pytest.mark.slow
@pytest.mark.edge(10, 80)
@pytest.mark.parametrize("workers", [1, 0])
def test_hundreds_of_megabytes_with_a_giant_line_stay_in_bounded_memory(tmp_path: Path, workers: int) -> None:
    block = _records_block(2000)
    per_block = block.count(b"\n")
    copies = (300 << 20) // len(block)
    path = tmp_path / "big.jsonl"
    with open(path, "wb") as f:
        for i in range(copies):
            f.write(block)
            if i == copies // 2:  # a 20 MB line: over the default 16 MiB cap, never held whole
                f.write(b'{"messages": [{"role": "user", "content": "' + b"x" * (20 << 20) + b'"}]}\n')
    try:
        result = _measure(path, workers)
    finally:
        path.unlink()  # pytest keeps the last runs' tmp folders: do not leave 300 MB in each
    assert result["peak_mb"] < LIMIT_MB, result
    assert result["valid"] == copies * per_block
    assert result["problems"] == [[(copies // 2 + 1) * per_block + 1, "line_too_long"]]
    assert result["verdict"] == "accepted"


@pytest.mark.slow
@pytest.mark.edge(10, 80)
def test_a_file_past_a_gigabyte_with_a_gigabyte_line(tmp_path: Path) -> None:
    # Sparse: a 1.1 GB hole (read back as NUL bytes with no newline) costs no disk, but every byte
    # of it is really read and the scanner must walk through it without holding it.
    block = _records_block(500)
    path = tmp_path / "huge.jsonl"
    with open(path, "wb") as f:
        f.write(block)
        f.seek(1100 << 20, 1)
        f.write(b"\n" + block)
    assert path.stat().st_size > 1 << 30
    try:
        result = _measure(path, 0)
    finally:
        path.unlink()
    assert result["peak_mb"] < LIMIT_MB, result
    assert result["valid"] == 1000 and result["invalid"] == 1
    assert result["problems"] == [[501, "line_too_long"]]
