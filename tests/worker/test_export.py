"""`trainconsole export`: an adapter copied whole, and with --merge the base model with the
adapter merged in (its own torch process), which computes what base + adapter computes."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.helpers import run_cli


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_export_copies_an_adapter_and_merge_matches_base_plus_adapter(finished_run: Path, tmp_path: Path) -> None:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    ws = tmp_path / "ws"
    shutil.copytree(finished_run, ws, symlinks=True)
    config = str(ws / "config.toml")
    listed = json.loads(run_cli("--config", config, "adapters", "--json").stdout)
    [adapter] = listed["adapters"]
    assert adapter["lineage"] == "main" and adapter["latest"] and adapter["step"] == 8

    plain = tmp_path / "out" / "adapter"
    proc = run_cli("--config", config, "export", "main", str(plain))  # a lineage names its newest
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in plain.iterdir()) == ["adapter_config.json", "adapter_model.safetensors",
                                                       "lineage.json"]
    again = run_cli("--config", config, "export", adapter["name"], str(plain))
    assert again.returncode == 2 and "already exists" in again.stderr

    merged_dir = tmp_path / "out" / "merged"
    proc = run_cli("--config", config, "export", adapter["name"], str(merged_dir), "--merge", timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert (merged_dir / "config.json").is_file() and list(merged_dir.glob("*.safetensors"))
    assert (merged_dir / "tokenizer_config.json").is_file()
    assert not [p for p in merged_dir.parent.iterdir() if p.name.startswith(".")]  # no staging left

    base_dir = _builtin(ws)  # the adapter's base: builtin:tiny-chat, built in the shared cache
    ids = torch.tensor([[1, 5, 9, 13, 17, 21]])
    with torch.no_grad():
        base = AutoModelForCausalLM.from_pretrained(str(base_dir), dtype=torch.float32)
        want = PeftModel.from_pretrained(base, adapter["path"]).eval()(ids).logits
        got = AutoModelForCausalLM.from_pretrained(str(merged_dir), dtype=torch.float32).eval()(ids).logits
    assert torch.allclose(want, got, atol=1e-4), (want - got).abs().max()


def _builtin(ws: Path) -> Path:
    from trainconsole.engine.config import load_config

    return load_config(ws / "config.toml").layout().cache / "models" / "tiny-chat"
