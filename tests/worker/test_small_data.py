"""The smallest data a job can get, through the real worker on the built-in tiny model: a file of
one line trains and publishes (case 2), and one over-long example among short ones is one case-3
alert (not one per example, not one per epoch)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.chatdata import arithmetic, write_jsonl
from tests.worker.wutil import alerts, make_spec, new_workspace, run_inprocess


@pytest.mark.edge(2)
def test_a_one_line_file_trains_to_a_published_adapter(tmp_path: Path, shared_cache: Path) -> None:
    ws = new_workspace(tmp_path / "ws", shared_cache, training__max_steps=0, training__epochs=2,
                       training__batch_size=4)
    spec = make_spec(ws, "j0001", write_jsonl(ws / "one.jsonl", arithmetic(1)))
    code, report = run_inprocess(spec)
    assert code == 0 and report["status"] == "done", report
    # One example, a batch of 4: one smaller batch per epoch, never zero steps.
    assert report["global_step"] == report["max_steps"] == 2
    adapter = Path(report["adapter"])
    assert adapter.is_dir() and adapter.parent == ws / "adapters"
    manifest = json.loads((adapter / "manifest.json").read_text())
    assert manifest["global_step"] == 2 and any(name.startswith("adapter_model") for name in manifest["files"])


@pytest.mark.edge(3)
def test_one_over_long_example_gives_exactly_one_case_3_alert(tmp_path: Path, shared_cache: Path) -> None:
    ws = new_workspace(tmp_path / "ws", shared_cache, training__max_steps=2, training__max_length=128,
                       training__eval_fraction=0.0)
    long_one = {"messages": [{"role": "user", "content": "Say it: " + "blah " * 200},
                             {"role": "assistant", "content": "blah."}]}
    spec = make_spec(ws, "j0001", write_jsonl(ws / "data.jsonl", [*arithmetic(7), long_one]))
    code, report = run_inprocess(spec)
    assert code == 0 and report["status"] == "done", report
    threes = [a for a in alerts(spec.parent) if a["case"] == 3]
    assert len(threes) == 1, threes
    # One example is truncated or dropped, never counted as both (here the cut left it no
    # assistant token, so it is dropped).
    assert "0 example(s) truncated and 1 dropped" in threes[0]["message"], threes
