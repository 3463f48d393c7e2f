"""`set_value`: one value changed, everything else in the file (comments, layout, line endings)
kept, and nothing invalid ever written."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from trainconsole.engine.config import (
    ConfigProblems,
    default_config_text,
    load_config,
    parse_value,
    set_value,
)
from trainconsole.engine.errors import ConfigError, UsageError


@pytest.fixture
def cfg_file(tmp_path: Path) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(default_config_text())
    return path


def _changed_lines(before: str, after: str) -> list[tuple[str, str]]:
    a, b = before.splitlines(), after.splitlines()
    assert len(a) == len(b)
    return [(x, y) for x, y in zip(a, b, strict=True) if x != y]


def test_one_value_changes_and_every_comment_stays(cfg_file: Path) -> None:
    before = cfg_file.read_text()
    cfg = set_value(cfg_file, "training.learning_rate", 1e-4)
    assert cfg.training.learning_rate == 1e-4
    assert load_config(cfg_file).training.learning_rate == 1e-4
    assert _changed_lines(before, cfg_file.read_text()) == [("learning_rate = 0.0002",
                                                             "learning_rate = 0.0001")]


def test_user_comments_and_layout_survive(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text("# my notes\n[training]\n# keep this small on the laptop\nbatch_size   =  2   # tried 4: OOM\n"
                    "epochs = 3\n\n[lora]\nr = 16 # more capacity\n")
    set_value(path, "training.batch_size", 1)
    set_value(path, "lora.target_modules", ["q_proj", "k_proj", "v_proj"])
    text = path.read_text()
    for kept in ("# my notes", "# keep this small on the laptop", "# tried 4: OOM", "epochs = 3",
                 "r = 16 # more capacity"):
        assert kept in text
    cfg = load_config(path)
    assert cfg.training.batch_size == 1 and cfg.training.epochs == 3
    assert cfg.lora.target_modules == ["q_proj", "k_proj", "v_proj"]


def test_a_key_in_a_missing_section_is_added(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text("# only a comment\n")
    cfg = set_value(path, "guards.alert_command", ["notify", "--urgent"])
    assert cfg.guards.alert_command == ["notify", "--urgent"]
    assert path.read_text().startswith("# only a comment\n")


def test_dotted_keys_and_inline_tables_are_edited_in_place(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text('training.epochs = 2\nqueue = { max_attempts = 5 }\n')
    set_value(path, "training.epochs", 4)
    set_value(path, "queue.max_attempts", 7)
    cfg = load_config(path)
    assert cfg.training.epochs == 4 and cfg.queue.max_attempts == 7


@pytest.mark.edge(35)
@pytest.mark.parametrize(("key", "value"), [
    ("training.batch_size", 0),
    ("training.batch_size", True),  # a bool is not an int
    ("training.batch_size", "8"),  # a string is not a number
    ("training.learning_rate", float("nan")),
    ("training.learning_rate", 0.5),
    ("training.epochs", 0),  # with max_steps 0: nothing to train
    ("model.base_model", "./no-such-folder"),
])
def test_an_invalid_value_is_refused_and_the_file_untouched(cfg_file: Path, key: str, value: object) -> None:
    before = cfg_file.read_bytes()
    with pytest.raises(ConfigProblems) as info:
        set_value(cfg_file, key, value)
    assert key in info.value.message
    assert cfg_file.read_bytes() == before
    assert sorted(p.name for p in cfg_file.parent.iterdir()) == ["config.toml"]


def test_an_unknown_key_gets_a_suggestion(cfg_file: Path) -> None:
    with pytest.raises(UsageError, match="did you mean training.batch_size"):
        set_value(cfg_file, "training.batchsize", 2)
    with pytest.raises(UsageError, match="unknown config key"):
        set_value(cfg_file, "nonsense", 2)


def test_windows_line_endings_and_bom_are_kept(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_bytes(b"\xef\xbb\xbf# notes\r\n[training]\r\nepochs = 1\r\n")
    set_value(path, "training.epochs", 2)
    set_value(path, "lora.r", 4)
    raw = path.read_bytes()
    assert raw.startswith(b"\xef\xbb\xbf# notes\r\n[training]\r\nepochs = 2\r\n")
    assert b"\n" not in raw.replace(b"\r\n", b"")
    assert load_config(path).lora.r == 4


def test_file_mode_is_kept(cfg_file: Path) -> None:
    cfg_file.chmod(0o600)
    set_value(cfg_file, "training.seed", 7)
    assert stat.S_IMODE(cfg_file.stat().st_mode) == 0o600


@pytest.mark.parametrize(("key", "text", "value"), [
    ("training.learning_rate", "1e-4", 1e-4),
    ("training.max_grad_norm", "2", 2.0),  # an int typed for a float comes back a float
    ("training.batch_size", " 8 ", 8),
    ("training.gradient_checkpointing", "true", True),
    ("training.lr_scheduler", "cosine", "cosine"),
    ("model.revision", '"main"', "main"),
    ("lora.target_modules", "q_proj, v_proj", ["q_proj", "v_proj"]),
    ("lora.target_modules", '["q_proj"]', ["q_proj"]),
    ("hardware.gpus", "all", "all"),
    ("hardware.gpus", "0, 1", [0, 1]),
    ("hardware.gpus", "[1]", [1]),
])
def test_parse_value_reads_operator_input(key: str, text: str, value: object) -> None:
    parsed = parse_value(key, text)
    assert parsed == value and type(parsed) is type(value)


@pytest.mark.parametrize(("key", "text"), [
    ("training.batch_size", "0"),
    ("training.batch_size", "eight"),
    ("training.batch_size", "true"),
    ("training.learning_rate", "nan"),
    ("training.lr_scheduler", "sideways"),
    ("hardware.gpus", "0, x"),
])
def test_parse_value_rejects_with_the_key_named(key: str, text: str) -> None:
    with pytest.raises(ConfigProblems) as info:
        parse_value(key, text)
    assert info.value.message.startswith(key)
    assert "\n" not in info.value.message


def test_a_bad_value_in_the_file_can_be_fixed_by_setting_it(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text("[training]\nbatch_size = 0  # oops\n")
    cfg = set_value(path, "training.batch_size", 4)
    assert cfg.training.batch_size == 4
    assert path.read_text() == "[training]\nbatch_size = 4  # oops\n"


@pytest.mark.edge(32)
@pytest.mark.parametrize("data", [b"[training\n", b'[model]\nrevision = "\xff"\n'])
def test_an_unreadable_file_is_reported_not_edited(tmp_path: Path, data: bytes) -> None:
    path = tmp_path / "config.toml"
    path.write_bytes(data)
    with pytest.raises(ConfigProblems) as info:
        set_value(path, "training.epochs", 2)
    assert info.value.case == 32 and str(path) in info.value.message
    assert path.read_bytes() == data


def test_a_symlinked_config_stays_a_symlink(tmp_path: Path) -> None:
    real = tmp_path / "dotfiles" / "trainconsole.toml"
    real.parent.mkdir()
    real.write_text("# mine\n")
    link = tmp_path / "config.toml"
    link.symlink_to(real)
    set_value(link, "training.epochs", 5)
    assert link.is_symlink()
    assert load_config(real).training.epochs == 5
    assert not [p for p in real.parent.iterdir() if p.name.endswith(".tmp")]


def test_a_save_that_fails_is_one_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A full disk cannot be arranged here: the rename raises the OSError ENOSPC would."""
    import errno
    import os

    path = tmp_path / "config.toml"
    path.write_text("[training]\nepochs = 1\n")

    def full(*args: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "replace", full)
    with pytest.raises(ConfigError, match="cannot save: No space left on device"):
        set_value(path, "training.epochs", 2)
    assert path.read_text() == "[training]\nepochs = 1\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.toml"]
