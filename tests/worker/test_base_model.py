"""Base-model checks and adapter lineage with real broken model folders: missing (11, 39),
truncated weights (12), a tokenizer that does not fit (40), a context too short (34), and an
adapter or checkpoint trained on another base (13, 18), including a base PEFT itself would
accept without complaint (same module names, fewer layers)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.chatdata import arithmetic, write_jsonl
from tests.worker.wutil import alerts, events_of, make_spec, new_workspace, run_inprocess
from trainconsole.engine.config import load_config, set_value
from trainconsole.engine.errors import EXIT_CODES, ConfigError, ErrorClass
from trainconsole.engine.train import basecheck

CONFIG_EXIT = EXIT_CODES[ErrorClass.CONFIG]


@pytest.fixture
def model_copy(tiny_model: Path, tmp_path: Path) -> Path:
    dest = tmp_path / "model"
    shutil.copytree(tiny_model, dest)
    return dest


@pytest.fixture(scope="module")
def one_layer_model(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A builtin-like base with one layer instead of two: same module names, same tokenizer."""
    import torch
    from transformers import AutoConfig, LlamaForCausalLM

    dest = tmp_path_factory.mktemp("small") / "model"
    config = AutoConfig.from_pretrained(tiny_model)
    config.num_hidden_layers = 1
    torch.manual_seed(7)
    LlamaForCausalLM(config).save_pretrained(dest)
    for name in tiny_model.iterdir():
        if name.name.startswith(("tokenizer", "special_tokens", "chat_template")):
            shutil.copy(name, dest / name.name)
    return dest


def failing_run(ws: Path, job_id: str = "j0001") -> tuple[dict, Path]:
    spec = make_spec(ws, job_id, write_jsonl(ws / "data.jsonl", arithmetic(20)))
    code, report = run_inprocess(spec)
    assert code == CONFIG_EXIT, report
    assert report["error_class"] == "config" and report["traceback"] is None
    assert not (spec.parent / "checkpoints").exists()  # nothing consumed before the check
    return report, spec.parent


@pytest.mark.edge(11)
def test_base_model_folder_gone_after_config_was_checked(model_copy: Path, tmp_path: Path,
                                                         shared_cache: Path) -> None:
    ws = new_workspace(tmp_path / "ws", shared_cache, model__base_model=str(model_copy))
    cfg = load_config(ws / "config.toml")
    shutil.rmtree(model_copy)
    with pytest.raises(ConfigError) as info:
        basecheck.locate(cfg)
    assert info.value.case == 11 and "model.base_model" in info.value.message
    report, _ = failing_run(ws)
    assert report["case"] == 11


@pytest.mark.edge(39)
def test_model_id_not_in_the_local_cache(tmp_path: Path, shared_cache: Path, monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    ws = new_workspace(tmp_path / "ws", shared_cache, model__base_model="no-such-org/no-such-model")
    report, _ = failing_run(ws)
    assert report["case"] == 39 and "never downloads" in report["message"]


@pytest.mark.edge(12)
def test_truncated_weights_are_caught_before_loading(model_copy: Path, tmp_path: Path,
                                                     shared_cache: Path) -> None:
    weights = model_copy / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    ws = new_workspace(tmp_path / "ws", shared_cache, model__base_model=str(model_copy))
    report, _ = failing_run(ws)
    assert report["case"] == 12 and "model.safetensors" in report["message"]
    assert "incomplete download" in report["message"]


@pytest.mark.edge(12)
def test_garbled_model_config_is_reported(model_copy: Path, tmp_path: Path, shared_cache: Path) -> None:
    (model_copy / "config.json").write_text('{"model_type": "llama", ')
    ws = new_workspace(tmp_path / "ws", shared_cache, model__base_model=str(model_copy))
    report, _ = failing_run(ws)
    assert report["case"] == 12 and "config.json" in report["message"]


@pytest.mark.edge(40)
def test_tokenizer_larger_than_the_embedding_is_refused(model_copy: Path, tmp_path: Path,
                                                       shared_cache: Path) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_copy)
    tok.add_tokens([f"<extra_{i}>" for i in range(600)])
    tok.save_pretrained(model_copy)
    ws = new_workspace(tmp_path / "ws", shared_cache, model__base_model=str(model_copy))
    report, _ = failing_run(ws)
    assert report["case"] == 40 and "embedding has 512 rows" in report["message"]


@pytest.mark.edge(40)
def test_missing_tokenizer_file_is_one_line_saying_what_to_recopy(model_copy: Path, tmp_path: Path,
                                                                  shared_cache: Path) -> None:
    (model_copy / "tokenizer.json").unlink()
    ws = new_workspace(tmp_path / "ws", shared_cache, model__base_model=str(model_copy))
    report, _ = failing_run(ws)
    assert report["case"] == 40 and "tokenizer.json" in report["message"]
    assert "\n" not in report["message"]


@pytest.mark.edge(40)
def test_tokenizer_without_chat_template_is_refused(model_copy: Path, tmp_path: Path,
                                                    shared_cache: Path) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_copy)
    tok.chat_template = None
    for path in model_copy.glob("chat_template*"):
        path.unlink()
    tok.save_pretrained(model_copy)
    ws = new_workspace(tmp_path / "ws", shared_cache, model__base_model=str(model_copy))
    report, _ = failing_run(ws)
    assert report["case"] == 40 and "chat template" in report["message"]


@pytest.mark.edge(34)
def test_max_length_beyond_the_model_context(model_copy: Path, tmp_path: Path, shared_cache: Path) -> None:
    config = json.loads((model_copy / "config.json").read_text())
    config["max_position_embeddings"] = 256
    (model_copy / "config.json").write_text(json.dumps(config))
    ws = new_workspace(tmp_path / "ws", shared_cache, model__base_model=str(model_copy),
                       training__max_length=512)
    report, _ = failing_run(ws)
    assert report["case"] == 34 and "training.max_length = 512" in report["message"]
    assert "at most 256" in report["message"]


def test_remote_code_is_not_run_unless_the_config_allows(model_copy: Path, tmp_path: Path,
                                                         shared_cache: Path) -> None:
    config = json.loads((model_copy / "config.json").read_text())
    config["auto_map"] = {"AutoModelForCausalLM": "modeling_evil.EvilModel"}
    (model_copy / "config.json").write_text(json.dumps(config))
    ws = new_workspace(tmp_path / "ws", shared_cache, model__base_model=str(model_copy))
    report, _ = failing_run(ws)
    assert "trust_remote_code" in report["message"]


@pytest.mark.edge(13, 18)
def test_adapter_from_a_base_with_fewer_layers_is_refused(one_layer_model: Path, tiny_model: Path,
                                                          tmp_path: Path, shared_cache: Path) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    ws = new_workspace(tmp_path / "ws", shared_cache, model__base_model=str(one_layer_model),
                       training__max_steps=2, training__save_steps=2, training__eval_fraction=0.0)
    data = write_jsonl(ws / "data.jsonl", arithmetic(20))
    code, report = run_inprocess(make_spec(ws, "j0001", data))
    assert code == 0, report
    adapter = ws / "adapters" / "latest"
    # PEFT alone would attach it to the two-layer base without a word:
    PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model), str(adapter))

    set_value(ws / "config.toml", "model.base_model", "builtin:tiny-chat")
    spec = make_spec(ws, "j0002", data)
    code, report = run_inprocess(spec)
    assert code == CONFIG_EXIT and report["case"] == 13
    assert "layers: expected 2, found 1" in report["message"] and "adapters" in report["message"]
    assert [a["case"] for a in alerts(spec.parent)] == [13]  # its one alert: the daemon adds none
    assert report["alerted"] is True
    assert events_of(spec.parent, "step") == []

    # A checkpoint of the one-layer run copied into a job on the two-layer base: skipped (18).
    shutil.move(ws / "adapters", ws / "adapters-aside")
    run3 = ws / "runs" / "j0003"
    shutil.copytree(ws / "runs" / "j0001" / "checkpoints", run3 / "checkpoints")
    code, report = run_inprocess(make_spec(ws, "j0003", data))
    assert code == 0 and report["status"] == "done"
    assert [a["case"] for a in alerts(run3)] == [18]
    assert [e["step"] for e in events_of(run3, "step")] == [1, 2]  # trained from the start
    lineage = json.loads((ws / "adapters" / "latest" / "lineage.json").read_text())
    assert lineage["base"]["layers"] == 2


@pytest.mark.edge(13)
def test_next_job_continues_the_latest_adapter(finished_run: Path, tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    shutil.copytree(finished_run, ws, symlinks=True)
    set_value(ws / "config.toml", "training.max_steps", 2)
    set_value(ws / "config.toml", "training.eval_fraction", 0.0)
    spec = make_spec(ws, "j0002", ws / "data.jsonl")
    code, report = run_inprocess(spec)
    assert code == 0 and Path(report["adapter"]).name == "0002-j0002"
    lineage = json.loads((ws / "adapters" / "latest" / "lineage.json").read_text())
    assert lineage["parent"] == "0001-j0001"
    # Continuing means starting from the trained weights: the first loss is far below a fresh start's.
    fresh = [e["loss"] for e in events_of(finished_run / "runs" / "j0001", "step")][0]
    assert events_of(spec.parent, "step")[0]["loss"] < fresh


@pytest.mark.edge(13)
def test_latest_pointing_at_a_deleted_adapter_is_refused(finished_run: Path, tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    shutil.copytree(finished_run, ws, symlinks=True)
    shutil.rmtree(ws / "adapters" / "0001-j0001")
    report, run_dir = failing_run(ws, "j0002")
    assert report["case"] == 13 and "does not exist" in report["message"]


@pytest.mark.edge(13, 41)
def test_resumed_job_keeps_the_parent_it_started_from(finished_run: Path, tmp_path: Path) -> None:
    """Another job publishes while this one waits to resume (preemption): the resumed job's
    adapter still names the parent its checkpoint was trained from."""
    import os

    from tests.worker.wutil import spawn

    ws = tmp_path / "ws"
    shutil.copytree(finished_run, ws, symlinks=True)
    for key, value in (("training.max_steps", 4), ("training.save_steps", 2), ("training.eval_fraction", 0.0)):
        set_value(ws / "config.toml", key, value)
    spec = make_spec(ws, "j0002", ws / "data.jsonl")
    proc = spawn(spec, "crash@3")
    proc.communicate(timeout=300)
    assert (spec.parent / "checkpoints" / "checkpoint-2").is_dir()
    shutil.copytree(ws / "adapters" / "0001-j0001", ws / "adapters" / "0002-j0009")
    os.replace(ws / "adapters" / "latest", ws / "adapters" / "old-latest")
    os.symlink("0002-j0009", ws / "adapters" / "latest")
    code, report = run_inprocess(spec)
    assert code == 0 and Path(report["adapter"]).name == "0003-j0002"
    lineage = json.loads((ws / "adapters" / "latest" / "lineage.json").read_text())
    assert lineage["parent"] == "0001-j0001"
