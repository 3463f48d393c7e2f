"""The demo's first impression: the bundled tasks, trained one after the other as the demo's
engine runs them (the second continues the first one's adapter) with the demo's own settings, by
the real worker on the built-in model. Each loses at least 40% of its loss, answers held-out
prompts right, and raises no low-accuracy alert (case 69)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.worker.wutil import alerts, events_of, make_spec, run_inprocess
from trainconsole.console.commands.demo import DEMO_SETTINGS, demo_files
from trainconsole.engine.config import default_config_text, set_value


@pytest.mark.slow
@pytest.mark.timeout(900)  # two 80-step jobs: ~3 CPU-minutes, more on shared cores
def test_the_demo_tasks_learn_visibly(tmp_path: Path, shared_cache: Path) -> None:
    learnable = [(name, data) for name, data in demo_files() if "broken" not in name]
    assert [name for name, _ in learnable] == ["01-arithmetic.jsonl", "02-number-words.jsonl"]
    ws = tmp_path / "demo"
    ws.mkdir()
    config = ws / "config.toml"
    config.write_text(default_config_text().replace('cache = ".cache"', f'cache = "{shared_cache}"'))
    # The demo's settings as `trainconsole demo` writes them; only the device is pinned, so a GPU
    # on the test machine does not change the numbers.
    for key, value in {**DEMO_SETTINGS, "hardware.device": "cpu"}.items():
        set_value(config, key, value)
    for number, (name, data) in enumerate(learnable, start=1):
        path = ws / name
        path.write_bytes(data)
        spec = make_spec(ws, f"j{number:04d}", path)

        code, _ = run_inprocess(spec)

        assert code == 0, name
        logs = " ".join(e.get("message", "") for e in events_of(spec.parent, "log"))
        assert ("continuing adapter 0001-j0001" in logs) == (number == 2), logs
        losses = [e["loss"] for e in events_of(spec.parent, "step")]
        assert len(losses) == DEMO_SETTINGS["training.max_steps"], name
        start, end = losses[0], sum(losses[-5:]) / 5  # the end averaged: one batch can be easy or hard
        assert end <= 0.6 * start, f"{name}: loss {start:.3f} -> {end:.3f}, less than a 40% fall"
        evaluations = events_of(spec.parent, "eval")
        assert evaluations and all(e["accuracy"] > 0 for e in evaluations), (name, evaluations)
        assert not [a for a in alerts(spec.parent) if a["case"] == 69], name
