"""The fine-tuning options of [lora], [training] and [data] on the real worker with the built-in
model: what reaches peft and the Trainer, what a bad value says, and what happens when the
settings and a continued adapter disagree."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.chatdata import arithmetic, write_jsonl
from tests.worker.wutil import ROOT, alerts, events_of, make_spec, new_workspace, run_inprocess
from trainconsole.engine.config import ConfigProblems, parse_config_text, set_value


@pytest.mark.parametrize(("text", "key", "words"), [
    ('[lora]\ntarget_modules = ["all-linear"]', "lora.target_modules", 'write target_modules = "all-linear"'),
    ('[lora]\ntarget_modules = "q_proj"', "lora.target_modules", 'write ["q_proj"]'),
    ("[lora]\nuse_dora = 1", "lora.use_dora", "true or false"),
    ('[lora]\nmodules_to_save = "lm_head"', "lora.modules_to_save", 'write ["lm_head"]'),
    ('[training]\nprecision = "fp8"', "training.precision", '"auto", "bf16", "fp16", "fp32"'),
    ('[training]\npacking = "yes"', "training.packing", "true or false"),
    ("[model]\nload_in_4bit = true", "model.load_in_4bit", "needs a CUDA GPU"),
    ('[data]\nchat_template = "no-such.jinja"', "data.chat_template", "names no such file"),
    ('[data]\nchat_template = "Not A Name"', "data.chat_template", "TRL training template"),
    ('[data]\neval_file = "held.jsonl"', "data.eval_file", "names no such file"),
])
def test_a_bad_option_is_one_line_naming_its_key(tmp_path: Path, text: str, key: str, words: str) -> None:
    # This machine has no GPU: 4-bit loading is refused when the config is checked, not after a
    # job has loaded a model.
    with pytest.raises(ConfigProblems) as info:
        parse_config_text(text, root=tmp_path)
    [problem] = info.value.problems
    line = problem.render("config.toml")
    assert problem.key == key and "\n" not in line and line.startswith("config.toml:2: " + key), line
    assert words in line, line


def test_check_config_refuses_4bit_without_a_gpu_in_one_line(tmp_path: Path) -> None:
    (tmp_path / "config.toml").write_text("[model]\nload_in_4bit = true\n")
    done = subprocess.run([sys.executable, "-m", "trainconsole.console.cli", "check-config",
                           str(tmp_path / "config.toml")], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert done.stderr.strip().count("\n") == 0 and "model.load_in_4bit = true needs a CUDA GPU" in done.stderr


def test_options_are_accepted_and_shipped_in_the_default_config(tmp_path: Path) -> None:
    (tmp_path / "t.jinja").write_text("{% for m in messages %}{{ m['content'] }}{% endfor %}")
    (tmp_path / "held.jsonl").write_text("")
    cfg = parse_config_text('[lora]\ntarget_modules = "all-linear"\nuse_rslora = true\nuse_dora = true\n'
                            'modules_to_save = ["lm_head"]\n[training]\nprecision = "bf16"\npacking = true\n'
                            'group_by_length = true\n[data]\nchat_template = "t.jinja"\neval_file = "held.jsonl"\n',
                            root=tmp_path)
    assert cfg.lora.target_modules == "all-linear" and cfg.lora.modules_to_save == ["lm_head"]
    shipped = (ROOT / "config.toml").read_text()
    for key in ("load_in_4bit", "use_rslora", "use_dora", "modules_to_save", "precision", "packing",
                "group_by_length", "chat_template", "eval_file"):
        assert f"\n{key} = " in shipped, key
    readme = (ROOT / "README.md").read_text()
    for key in ("all-linear", "use_rslora", "use_dora", "modules_to_save", "precision", "load_in_4bit",
                "packing", "group_by_length", "chat_template", "eval_file"):
        assert key in readme, key


def test_lora_options_reach_peft_and_the_eval_file_is_the_held_out_set(tmp_path: Path, shared_cache: Path,
                                                                        tiny_model: Path) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    ws = new_workspace(tmp_path / "ws", shared_cache, training__max_steps=4, training__save_steps=4,
                       training__eval_steps=4)
    cfg = ws / "config.toml"
    write_jsonl(ws / "held.jsonl", arithmetic(6, seed=9))
    for key, value in (("lora.target_modules", "all-linear"), ("lora.use_rslora", True),
                       ("lora.use_dora", True), ("lora.modules_to_save", ["lm_head"]),
                       ("data.eval_file", "held.jsonl")):
        set_value(cfg, key, value)
    data = write_jsonl(ws / "data.jsonl", arithmetic(40))
    code, report = run_inprocess(make_spec(ws, "j1", data))
    assert code == 0 and report["status"] == "done", report
    conf = json.loads((ws / "adapters" / "latest" / "adapter_config.json").read_text())
    assert conf["use_rslora"] is True and conf["use_dora"] is True and conf["modules_to_save"] == ["lm_head"]
    # peft records "all-linear" as the paths of the layers it matched: every linear but lm_head.
    assert {t.rsplit(".", 1)[-1] for t in conf["target_modules"]} == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                                           "down_proj"}
    logs = [e["message"] for e in events_of(ws / "runs" / "j1", "log")]
    assert any("plan: 40 training and 6 held-out examples" in m for m in logs), logs
    assert [e["step"] for e in events_of(ws / "runs" / "j1", "eval")] == [4]
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model),
                                      str(ws / "adapters" / "latest"))
    assert model is not None
    # A second job continues it with the same [lora]: "all-linear" is the layers peft recorded,
    # so no shape alert.
    code, report = run_inprocess(make_spec(ws, "j2", data))
    assert code == 0 and report["status"] == "done", report
    assert not [a for a in alerts(ws / "runs" / "j2") if a.get("key") == "lora-shape"]


def test_continuing_an_adapter_of_another_shape_alerts_with_both(finished_run: Path, tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    shutil.copytree(finished_run, ws, symlinks=True)
    set_value(ws / "config.toml", "lora.r", 16)
    set_value(ws / "config.toml", "training.max_steps", 2)
    code, report = run_inprocess(make_spec(ws, "j0002", ws / "data.jsonl"))
    assert code == 0 and report["status"] == "done", report
    [alert] = [a for a in alerts(ws / "runs" / "j0002") if a.get("key") == "lora-shape"]
    text = alert["message"]
    assert "r=16 alpha=16 target_modules=q_proj,v_proj" in text and "0001-j0001" in text
    assert "is r=8 alpha=16 target_modules=q_proj,v_proj" in text and "move" in text and "latest" in text
    # It went on with the adapter's own shape.
    assert json.loads((ws / "adapters" / "latest" / "adapter_config.json").read_text())["r"] == 8


def test_fp16_on_the_cpu_is_refused_naming_the_key(tmp_path: Path, shared_cache: Path) -> None:
    ws = new_workspace(tmp_path / "ws", shared_cache, training__precision="fp16")
    code, report = run_inprocess(make_spec(ws, "j1", write_jsonl(ws / "d.jsonl", arithmetic(20))))
    assert report["error_class"] == "config" and "training.precision = \"fp16\"" in report["message"]
    assert "\n" not in report["message"] and report["traceback"] is None


def test_packed_rows_give_the_padded_batch_its_loss(tiny_model: Path) -> None:
    """Padding-free batches must train exactly what padded ones do: same loss on the same examples
    (each example attends only to itself inside the packed row)."""
    import torch
    from transformers import AutoModelForCausalLM

    from trainconsole.engine.train.dataset import Collator

    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32).eval()
    model.config.use_cache = False
    feats = [{"input_ids": list(range(5, 5 + n)), "labels": [-100] * 2 + list(range(7, 5 + n))}
             for n in (9, 4, 13)]
    padded, packed = Collator(0), Collator(0, packing=True)
    with torch.no_grad():
        a = model(**padded(feats)).loss
        batch = packed(feats)
        b = model(**batch).loss
    assert batch["input_ids"].shape == (1, 26) and "attention_mask" not in batch
    assert batch["position_ids"][0, :10].tolist() == [*range(9), 0]
    assert padded.counters.useful_tokens == packed.counters.useful_tokens
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_packing_and_group_by_length_train(tmp_path: Path, shared_cache: Path) -> None:
    ws = new_workspace(tmp_path / "ws", shared_cache, training__packing=True, training__group_by_length=True,
                       training__max_steps=4, training__save_steps=4, training__eval_steps=4)
    code, report = run_inprocess(make_spec(ws, "j1", write_jsonl(ws / "d.jsonl", arithmetic(40))))
    assert code == 0 and report["status"] == "done", report
    steps = events_of(ws / "runs" / "j1", "step")
    assert [s["step"] for s in steps] == [1, 2, 3, 4] and all(s["tokens_per_s"] > 0 for s in steps)


def test_the_trainer_private_api_is_pinned_and_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    from transformers import Trainer

    from trainconsole.engine.errors import ConfigError
    from trainconsole.engine.train.trainer_setup import check_trainer_api

    check_trainer_api(Trainer)  # the installed transformers has every method the worker relies on
    monkeypatch.delattr(Trainer, "_save_scaler")
    with pytest.raises(ConfigError) as info:
        check_trainer_api(Trainer)
    assert "Trainer._save_scaler is gone" in info.value.message and "\n" not in info.value.message

    def changed(self: object, tr_loss: object, grad_norm: object) -> None: ...

    monkeypatch.setattr(Trainer, "_maybe_log_save_evaluate", changed)
    with pytest.raises(ConfigError) as info:
        check_trainer_api(Trainer)
    assert "no longer takes learning_rate" in info.value.message
