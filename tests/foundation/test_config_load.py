"""Loading config files: the shipped default, every broken fixture, typed values, path resolution."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

import pytest

from trainconsole.engine.config import (
    Config,
    ConfigError,
    ConfigProblems,
    check_warnings,
    default_config_text,
    load_config,
    parse_config_text,
)
from trainconsole.engine.config.schema import KEYS, SECTIONS
from trainconsole.engine.layout import Layout

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures" / "configs"

# Fixtures that cannot carry their own "# expect:" line.
EXPECT_WITHOUT_HEADER = {"empty.toml": ["valid"], "utf16.toml": ["UTF-16"]}


def _expectation(path: Path) -> list[str]:
    if path.name in EXPECT_WITHOUT_HEADER:
        return EXPECT_WITHOUT_HEADER[path.name]
    first = path.read_bytes().removeprefix(b"\xef\xbb\xbf").split(b"\n", 1)[0].decode("ascii").strip()
    assert first.startswith("# expect:"), f"{path.name}: first line must say what is expected"
    return [part.strip() for part in first.removeprefix("# expect:").split(",")]


FIXTURE_FILES = sorted(FIXTURES.glob("*.toml"))


def test_shipped_config_is_the_default_text() -> None:
    assert (ROOT / "config.toml").read_text(encoding="utf-8") == default_config_text()


def test_shipped_config_loads_to_the_defaults() -> None:
    cfg = load_config(ROOT / "config.toml")
    assert cfg == Config(source=ROOT / "config.toml")
    assert cfg.model.base_model == "builtin:tiny-chat"
    assert check_warnings(cfg) == []


def test_default_text_documents_every_key() -> None:
    text = default_config_text()
    for section, keys in KEYS.items():
        assert f"\n[{section}]\n" in text
        for name in keys:
            assert f"\n{name} = " in text, f"{section}.{name} is missing from the default text"
    # every key line is preceded by a comment explaining it
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if " = " in line and not line.startswith("#"):
            assert lines[i - 1].startswith("# "), line


@pytest.mark.parametrize("path", FIXTURE_FILES, ids=[p.name for p in FIXTURE_FILES])
def test_fixture(path: Path) -> None:
    expected = _expectation(path)
    if expected == ["valid"]:
        load_config(path)
        return
    with pytest.raises(ConfigProblems) as info:
        load_config(path)
    message = info.value.message
    lines = message.splitlines()
    assert all(line.startswith(str(path)) for line in lines), message
    for part in expected:
        if part.startswith("line "):
            assert f"{path}:{part.removeprefix('line ')}:" in message, message
        else:
            assert part in message, f"{part!r} not in:\n{message}"


def test_every_problem_is_reported_on_its_own_line() -> None:
    exc = _problems("[training]\nbatch_size = 0\nlearning_rate = 0\nepochs = \"2\"\n[lora]\nr = 0\n")
    assert [p.key for p in exc.problems] == [
        "training.batch_size", "training.learning_rate", "training.epochs", "lora.r"]
    assert [p.line for p in exc.problems] == [2, 3, 4, 6]
    assert len(exc.message.splitlines()) == 4


@pytest.mark.parametrize("value", ["1e400", "nan", "-inf"])
def test_a_non_finite_float_for_an_integer_key_reads_plainly(value: str) -> None:
    exc = _problems(f"[training]\nmax_steps = {value}\n")
    assert "not an infinite or NaN number" in exc.message and "not not" not in exc.message


@pytest.mark.edge(35)
def test_batch_size_zero_is_case_35() -> None:
    exc = _problems("[training]\nbatch_size = 0\n")
    assert exc.case == 35
    assert "training.batch_size = 0" in exc.message and ">= 1" in exc.message


@pytest.mark.edge(37)
def test_learning_rate_zero_is_case_37() -> None:
    exc = _problems("[training]\nlearning_rate = 0.0\n")
    assert exc.case == 37
    assert "training.learning_rate" in exc.message and "1e-06" in exc.message


@pytest.mark.edge(33, 34)
@pytest.mark.parametrize(("value", "case"), [(127, 33), (0, 33), (32769, 34)])
def test_max_length_range(value: int, case: int) -> None:
    exc = _problems(f"[training]\nmax_length = {value}\n")
    assert exc.case == case
    assert "128 to 32768" in exc.message
    for ok in (128, 32768):
        assert parse_config_text(f"[training]\nmax_length = {ok}\n").training.max_length == ok


@pytest.mark.parametrize(("text", "key"), [
    ("[training]\nbatch_size = true\n", "training.batch_size"),  # a bool is not an int
    ("[training]\nbatch_size = \"8\"\n", "training.batch_size"),  # "8" is not 8
    ("[training]\nbatch_size = 8.0\n", "training.batch_size"),
    ("[training]\nlearning_rate = nan\n", "training.learning_rate"),
    ("[training]\nlearning_rate = true\n", "training.learning_rate"),
    ("[training]\nwarmup_steps = -1\n", "training.warmup_steps"),
    ("[training]\nmax_grad_norm = 0\n", "training.max_grad_norm"),
    ("[training]\ngradient_accumulation = 0\n", "training.gradient_accumulation"),
    ("[queue]\npoll_s = 0.01\n", "queue.poll_s"),
    ("[queue]\nbackoff_s = 100.0\nbackoff_max_s = 10.0\n", "queue.backoff_max_s"),
    ("[hardware]\ngpus = \"0,1\"\n", "hardware.gpus"),
    ("[hardware]\ngpus = [0, 0]\n", "hardware.gpus"),
    ("[lora]\ntarget_modules = []\n", "lora.target_modules"),
    ("[guards]\nalert_command = [\"mail\", 1]\n", "guards.alert_command"),
    ("[guards]\nalert_min_severity = \"error\"\n", "guards.alert_min_severity"),
    ("[paths]\nrun = \"runs\"\n", "paths.run"),
    ("[model]\nbase_model = \"\"\n", "model.base_model"),
    ("[model]\nbase_model = \"~/no-such-model-folder-anywhere\"\n", "model.base_model"),
    ("[model]\nbase_model = \"../no-such-model-folder\"\n", "model.base_model"),
    ("[model]\nbase_model = \"/no/such/model\"\n", "model.base_model"),
    ("[report]\nto = [\"tensorbaord\"]\n", "report.to"),
    ("[report]\nto = [\"wandb\", \"wandb\"]\n", "report.to"),
    ("[report]\nto = \"tensorboard\"\n", "report.to"),
])
def test_rejected_with_the_key_named(text: str, key: str) -> None:
    exc = _problems(text)
    assert [p.key for p in exc.problems] == [key], exc.message
    assert key in exc.message


def test_ints_are_accepted_for_floats_and_normalised() -> None:
    cfg = parse_config_text("[training]\nmax_grad_norm = 2\nweight_decay = -0.0\n[queue]\npoll_s = 1\n")
    assert cfg.training.max_grad_norm == 2.0 and type(cfg.training.max_grad_norm) is float
    assert math.copysign(1.0, cfg.training.weight_decay) == 1.0  # -0.0 comes out as 0.0
    assert type(cfg.queue.poll_s) is float


def _walk_fields(obj: Any, where: str = "cfg") -> list[tuple[str, Any]]:
    out: list[tuple[str, Any]] = []
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            out += _walk_fields(value, f"{where}.{f.name}")
        else:
            out.append((f"{where}.{f.name}", value))
    return out


@pytest.mark.parametrize("text", [
    "",
    "[training]\nbatch_size = 2\n",  # epochs and max_steps both missing
    "[training]\nmax_steps = 10\n",  # epochs missing
    "[training]\nepochs = 0\nmax_steps = 5\n",
    "[training]\n",
])
def test_missing_keys_never_give_none(text: str) -> None:
    cfg = parse_config_text(text)
    for name, value in _walk_fields(cfg):
        assert value is not None, f"{name} is None"
    t = cfg.training
    for name in ("epochs", "max_steps", "batch_size", "gradient_accumulation", "max_length"):
        value = getattr(t, name)
        assert type(value) is int, f"training.{name} = {value!r}"
    assert type(t.learning_rate) is float
    assert t.epochs > 0 or t.max_steps > 0


def test_every_field_has_the_declared_type_after_loading() -> None:
    cfg = load_config(ROOT / "config.toml")
    for section, keys in KEYS.items():
        for name, key in keys.items():
            value = getattr(getattr(cfg, section), name)
            expected = {"int": int, "float": float, "bool": bool, "str": str, "list[str]": list}.get(key.kind)
            if expected is not None:
                assert type(value) is expected, f"{section}.{name} = {value!r}"


def test_an_empty_file_means_all_defaults(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text("")
    assert load_config(path) == Config(source=path)


def test_source_root_and_layout_are_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    ws = tmp_path / "ws"
    ws.mkdir()
    (ws / "config.toml").write_text('[paths]\nqueue = "q"\nruns = "../elsewhere/runs"\n'
                                    'adapters = "~/adapters"\ncache = "/abs/cache"\n')
    monkeypatch.chdir(tmp_path)
    cfg = load_config(Path("ws/config.toml"))
    assert cfg.source == ws / "config.toml"
    assert cfg.root == ws
    assert cfg.layout() == Layout(queue=ws / "q", runs=tmp_path / "elsewhere" / "runs",
                                  adapters=home / "adapters", cache=Path("/abs/cache"))


def test_base_model_path_is_resolved_against_the_config_folder(tmp_path: Path) -> None:
    model = tmp_path / "models" / "mine"
    model.mkdir(parents=True)
    ws = tmp_path / "ws"
    ws.mkdir()
    (ws / "config.toml").write_text('[model]\nbase_model = "../models/mine"\n')
    assert load_config(ws / "config.toml").model.base_model == str(model)


def test_model_ids_and_builtins_pass_through() -> None:
    for value in ("builtin:tiny-chat", "org/name", "gpt2", "Org-1/model.v2_b"):
        assert parse_config_text(f'[model]\nbase_model = "{value}"\n').model.base_model == value


def test_sections_are_frozen() -> None:
    cfg = parse_config_text("")
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.training.batch_size = 3  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.training = cfg.training  # type: ignore[misc]
    assert set(cfg.to_dict()) == set(SECTIONS)


def test_the_console_can_rebuild_a_value_from_the_schema() -> None:
    """Every key has documentation, and its default passes its own validation."""
    for section, keys in KEYS.items():
        for name, key in keys.items():
            assert key.spec.doc.endswith("."), f"{section}.{name}"
            assert getattr(getattr(Config(), section), name) == key.default


@pytest.mark.edge(31)
def test_missing_file_says_how_to_create_one(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path / "nope" / "config.toml")
    assert info.value.case == 31
    assert "trainconsole init" in info.value.message
    assert str(tmp_path / "nope" / "config.toml") in info.value.message


def test_warnings_for_risky_values() -> None:
    assert check_warnings(parse_config_text("")) == []
    notes = check_warnings(parse_config_text("[training]\nbatch_size = 128\nlearning_rate = 5e-3\n"))
    assert len(notes) == 2
    assert "training.batch_size = 128" in notes[0] and "case 36" in notes[0]
    assert "training.learning_rate = 0.005" in notes[1] and "case 38" in notes[1]
    tokens = check_warnings(parse_config_text("[training]\nbatch_size = 32\nmax_length = 8192\n"))
    assert any("case 36" in n for n in tokens)


def _problems(text: str) -> ConfigProblems:
    with pytest.raises(ConfigProblems) as info:
        parse_config_text(text, file="t.toml")
    return info.value


@pytest.mark.parametrize(("text", "key"), [
    ('[paths]\nruns = "queue"\n', "paths.runs"),
    ('[paths]\nadapters = "./config.toml"\n', "paths.adapters"),
    ("[training]\nwarmup_steps = 2.5\n", "training.warmup_steps"),
])
def test_cross_checks(tmp_path: Path, text: str, key: str) -> None:
    (tmp_path / "config.toml").write_text(text)
    with pytest.raises(ConfigProblems) as info:
        load_config(tmp_path / "config.toml")
    assert [p.key for p in info.value.problems] == [key]


def test_a_missing_alert_program_is_a_warning(tmp_path: Path) -> None:
    script = tmp_path / "notify.sh"
    script.write_text("#!/bin/sh\ncat >/dev/null\n")
    script.chmod(0o755)
    (tmp_path / "config.toml").write_text('[guards]\nalert_command = ["./notify.sh", "--x"]\n')
    assert check_warnings(load_config(tmp_path / "config.toml")) == []
    (tmp_path / "config.toml").write_text('[guards]\nalert_command = ["no-such-program-anywhere"]\n')
    [note] = check_warnings(load_config(tmp_path / "config.toml"))
    assert "guards.alert_command" in note


@pytest.mark.edge(11)
def test_a_base_model_path_that_does_not_exist_is_case_11(tmp_path: Path) -> None:
    for value in ("./models/gone", "../gone", "~/surely-no-such-model-folder", str(tmp_path / "gone")):
        (tmp_path / "config.toml").write_text(f'[model]\nbase_model = "{value}"\n')
        with pytest.raises(ConfigProblems) as info:
            load_config(tmp_path / "config.toml")
        assert info.value.case == 11
        assert info.value.message.startswith(f"{tmp_path / 'config.toml'}:2: model.base_model")
    (tmp_path / "models" / "here").mkdir(parents=True)
    (tmp_path / "config.toml").write_text('[model]\nbase_model = "./models/here"\n')
    assert load_config(tmp_path / "config.toml").model.base_model == str(tmp_path / "models" / "here")


@pytest.mark.edge(39)
@pytest.mark.parametrize("value", ["builtin:tiny", "builtin:", "my model", "org/name/extra", "-x"])
def test_a_base_model_that_names_nothing_is_case_39(value: str) -> None:
    exc = _problems(f'[model]\nbase_model = "{value}"\n')
    assert exc.case == 39 and "model.base_model" in exc.message


@pytest.mark.edge(32)
@pytest.mark.parametrize(("data", "where"), [
    (b"[training]\nepochs = 1\nepochs = 2\n", "t.toml:3"),
    (b"[training]\nepochs = = 1\n", "t.toml:2:"),
    (b"[training\nepochs = 1\n", "t.toml:1:"),
    (b'[model]\nrevision = "\xff"\n', "t.toml:2:13"),
    (b"\xff\xfe[\x00", "t.toml:1:1"),
    (b"[lora]\ntarget_modules = [\"q\",\n", "t.toml:2:"),
])
def test_unreadable_toml_is_case_32_with_a_location(data: bytes, where: str) -> None:
    with pytest.raises(ConfigProblems) as info:
        parse_config_text(data, file="t.toml")
    assert info.value.case == 32
    assert info.value.message.startswith(where), info.value.message
    assert len(info.value.message.splitlines()) == 1


@pytest.mark.edge(12)
def test_a_model_folder_without_config_json_is_a_warning(tmp_path: Path) -> None:
    (tmp_path / "model").mkdir()
    (tmp_path / "config.toml").write_text('[model]\nbase_model = "./model"\n')
    [note] = check_warnings(load_config(tmp_path / "config.toml"))
    assert "config.json" in note and "case 12" in note
    (tmp_path / "model" / "config.json").write_text("{}")
    assert check_warnings(load_config(tmp_path / "config.toml")) == []


@pytest.mark.edge(32)
@pytest.mark.parametrize(("text", "key", "line"), [
    ("[training]\nbatch_size = 1180591620717411303424\n", "training.batch_size", 2),  # 2**70
    ("[training]\n\nmax_steps = -9223372036854775809\n", "training.max_steps", 3),  # -2**63 - 1
    ("[hardware]\ngpus = [0, 18446744073709551616]\n", "hardware.gpus", 2),
])
def test_an_integer_beyond_64_bits_is_an_error_naming_the_key(text: str, key: str, line: int) -> None:
    """TOML 1.0 requires it; tomlkit would hand Python's big int on to the range checks."""
    exc = _problems(text)
    (problem,) = exc.problems
    assert (problem.key, problem.line, problem.case) == (key, line, 32)
    assert "does not fit in 64 bits" in problem.message and key in exc.message


def test_the_largest_64_bit_integers_are_still_numbers_checked_by_their_range() -> None:
    from trainconsole.engine.config.check import validate_document

    for value in ("9223372036854775807", "-9223372036854775808"):
        _, problems = validate_document(f"[training]\nseed = {value}\n", root=ROOT)
        assert all("64 bits" not in p.message for p in problems), problems
