"""`trainconsole check-config` and `trainconsole init` as an operator runs them: real files, real
processes, exit codes and one clear line per problem on stderr."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from tests.helpers import ROOT, modes_bind_prefix, run_cli
from trainconsole.engine.config import default_config_text

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "configs"


def _no_traceback(proc: object) -> None:
    assert "Traceback" not in getattr(proc, "stderr", "") + getattr(proc, "stdout", "")


@pytest.mark.edge(31)
def test_missing_config_says_how_to_create_one(tmp_path: Path) -> None:
    proc = run_cli("check-config", str(tmp_path / "config.toml"))
    _no_traceback(proc)
    assert proc.returncode == 1
    assert f"trainconsole init {tmp_path}" in proc.stderr
    # the default lookup (./config.toml) in an empty folder says the same
    proc = run_cli("check-config", cwd=tmp_path)
    assert proc.returncode == 1
    assert "config.toml" in proc.stderr and "trainconsole init" in proc.stderr


@pytest.mark.edge(32)
def test_invalid_toml_names_line_and_column() -> None:
    proc = run_cli("check-config", str(FIXTURES / "invalid_toml.toml"))
    _no_traceback(proc)
    assert proc.returncode == 1
    assert f"{FIXTURES / 'invalid_toml.toml'}:5:23: invalid TOML" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


@pytest.mark.edge(35)
def test_batch_size_zero_is_rejected() -> None:
    proc = run_cli("check-config", str(FIXTURES / "batch_size_zero.toml"))
    _no_traceback(proc)
    assert proc.returncode == 1
    assert "batch_size_zero.toml:4: training.batch_size = 0 is out of range" in proc.stderr


@pytest.mark.edge(37)
def test_learning_rate_zero_is_rejected() -> None:
    proc = run_cli("check-config", str(FIXTURES / "learning_rate_zero.toml"), "--json")
    assert proc.returncode == 1
    report = json.loads(proc.stdout)
    assert report["valid"] is False
    assert [(p["key"], p["line"], p["case"]) for p in report["problems"]] == [
        ("training.learning_rate", 4, 37)]


@pytest.mark.edge(33, 34)
def test_max_length_out_of_range_is_rejected() -> None:
    for name in ("max_length_too_small.toml", "max_length_too_large.toml"):
        proc = run_cli("check-config", str(FIXTURES / name))
        assert proc.returncode == 1
        assert "training.max_length" in proc.stderr and "128 to 32768" in proc.stderr


@pytest.mark.edge(36)
def test_large_batch_size_is_a_warning_not_an_error() -> None:
    proc = run_cli("check-config", str(FIXTURES / "risky_batch_size.toml"))
    _no_traceback(proc)
    assert proc.returncode == 0
    assert "warning:" in proc.stdout and "training.batch_size = 256" in proc.stdout
    assert "case 36" in proc.stdout


@pytest.mark.edge(38)
def test_high_learning_rate_is_a_warning_not_an_error() -> None:
    proc = run_cli("check-config", "--json", str(FIXTURES / "risky_learning_rate.toml"))
    assert proc.returncode == 0
    report = json.loads(proc.stdout)
    assert report["valid"] is True and report["problems"] == []
    assert len(report["warnings"]) == 1 and "case 38" in report["warnings"][0]


def test_every_problem_of_a_file_is_listed() -> None:
    proc = run_cli("check-config", str(FIXTURES / "wrong_types.toml"))
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 7  # six problems and a count
    assert lines[-1].endswith("invalid (6 problems)")


def test_shipped_config_is_valid_through_the_config_option() -> None:
    root = Path(__file__).resolve().parents[2]
    proc = run_cli("--config", str(root / "config.toml"), "check-config")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().endswith(": valid")
    proc = run_cli("check-config", env={"TRAINCONSOLE_CONFIG": str(FIXTURES / "batch_size_zero.toml")},
                   cwd=root)
    assert proc.returncode == 1 and "batch_size" in proc.stderr


def test_a_folder_is_a_usage_error(tmp_path: Path) -> None:
    proc = run_cli("check-config", str(tmp_path))
    _no_traceback(proc)
    assert proc.returncode == 2
    assert "is a folder" in proc.stderr and "config.toml" in proc.stderr


def test_an_unreadable_file_is_a_usage_error(tmp_path: Path) -> None:
    prefix = modes_bind_prefix()
    if prefix is None:
        pytest.skip("root reads files whatever their mode, and setpriv is not here to drop that")
    path = tmp_path / "config.toml"
    path.write_text("")
    path.chmod(0)
    proc = run_cli("check-config", str(path), prefix=prefix)
    _no_traceback(proc)
    assert proc.returncode == 2 and "permission denied" in proc.stderr


def test_init_writes_config_and_folders_then_refuses_to_overwrite(tmp_path: Path) -> None:
    ws = tmp_path / "new" / "ws"
    proc = run_cli("init", str(ws))
    assert proc.returncode == 0, proc.stderr
    assert (ws / "config.toml").read_text() == default_config_text()
    for sub in ("queue/incoming/high", "queue/incoming/low", "queue/jobs", "queue/done",
                "queue/failed", "runs", "adapters"):
        assert (ws / sub).is_dir(), sub
    (ws / "config.toml").write_text("# mine\n[training]\nepochs = 3\n")
    proc = run_cli("init", str(ws))
    _no_traceback(proc)
    assert proc.returncode == 1
    assert "already exists" in proc.stderr and "not overwriting" in proc.stderr
    assert (ws / "config.toml").read_text() == "# mine\n[training]\nepochs = 3\n"
    assert not [p for p in ws.iterdir() if p.name.endswith(".tmp")]


def test_init_defaults_to_the_current_folder(tmp_path: Path) -> None:
    proc = run_cli("init", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "config.toml").is_file() and (tmp_path / "queue" / "incoming").is_dir()
    assert run_cli("check-config", cwd=tmp_path).returncode == 0


def test_init_into_a_file_is_a_usage_error(tmp_path: Path) -> None:
    target = tmp_path / "afile"
    target.write_text("x")
    proc = run_cli("init", str(target))
    _no_traceback(proc)
    assert proc.returncode == 2 and "not a folder" in proc.stderr


def test_new_user_mistakes_never_show_a_traceback(tmp_path: Path) -> None:
    """A handful of files a new user produces, checked in one process each."""
    for name in ("not_utf8.toml", "utf16.toml", "duplicate_key.toml", "array_of_tables.toml",
                 "bom_crlf.toml", "empty.toml"):
        copy = tmp_path / name
        shutil.copy(FIXTURES / name, copy)
        proc = run_cli("check-config", str(copy))
        _no_traceback(proc)
        assert proc.returncode in (0, 1), (name, proc.stderr)
        if proc.returncode == 1:
            assert all(line.startswith(str(copy)) for line in proc.stderr.strip().splitlines())


def test_permission_denied_is_a_usage_error_in_process(tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """Root (as in CI containers) reads any file, so the denial is faked where the OS would raise
    it: opening the file raises the same PermissionError a real denial gives."""
    import argparse

    from trainconsole.console.commands import config_cmds
    from trainconsole.console.common import run_guarded

    path = tmp_path / "config.toml"
    path.write_text("")
    real_open = Path.open

    def denied(self: Path, *args: object, **kwargs: object) -> object:
        if self == path:
            raise PermissionError(13, "Permission denied", str(self))
        return real_open(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(Path, "open", denied)
    args = argparse.Namespace(command="check-config", path=str(path), config=None, json=False)
    assert run_guarded(config_cmds.run, args) == 2


def test_init_with_the_config_option_writes_that_file(tmp_path: Path) -> None:
    target = tmp_path / "etc" / "trainer.toml"
    proc = run_cli("--config", str(target), "init")
    assert proc.returncode == 0, proc.stderr
    assert target.read_text() == default_config_text()
    assert (tmp_path / "etc" / "queue" / "incoming").is_dir()
    assert run_cli("--config", str(target), "check-config").returncode == 0


@pytest.mark.timeout(60)
def test_named_pipe_with_no_writer_is_refused_not_waited_on_forever(tmp_path: Path) -> None:
    fifo = tmp_path / "config.toml"
    os.mkfifo(fifo)
    proc = run_cli("check-config", str(fifo), timeout=40)
    _no_traceback(proc)
    assert proc.returncode == 2
    assert f"{fifo}: is a named pipe" in proc.stderr and "regular file" in proc.stderr
    # a pipe that does carry a config (as `--config <(...)` gives) is still read
    def feed() -> None:
        with fifo.open("wb") as fh:  # blocks until the CLI opens its end
            fh.write(b"[training]\nbatch_size = 0\n")

    writer = threading.Thread(target=feed, daemon=True)
    writer.start()
    proc = run_cli("check-config", str(fifo), timeout=40)
    writer.join(timeout=10)
    assert proc.returncode == 1 and "training.batch_size = 0" in proc.stderr


def test_a_path_under_a_file_is_refused_at_check_time(tmp_path: Path) -> None:
    (tmp_path / "afile").write_text("x")
    cfg = tmp_path / "config.toml"
    cfg.write_text('[paths]\nqueue = "afile/q"\nruns = "afile/deep/er/runs"\n')
    proc = run_cli("check-config", str(cfg))
    _no_traceback(proc)
    assert proc.returncode == 1
    assert f'paths.queue = "afile/q" cannot be created: {tmp_path / "afile"} is a file' in proc.stdout + proc.stderr
    assert 'paths.runs = "afile/deep/er/runs" cannot be created' in proc.stdout + proc.stderr


def _as_unprivileged(*args: str) -> subprocess.CompletedProcess[str]:
    """`trainconsole ARGS` without the power to bypass file modes: a normal user, or root run
    through setpriv with its DAC capabilities dropped (a real permission check, not a fake)."""
    cmd = [sys.executable, "-m", "trainconsole.console.cli", *args]
    if os.geteuid() == 0:
        if shutil.which("setpriv") is None:
            pytest.skip("root reads files whatever their mode, and setpriv is not here to drop that")
        caps = "-dac_override,-dac_read_search"
        cmd = ["setpriv", "--bounding-set", caps, "--inh-caps", caps, *cmd]
    env = {k: v for k, v in os.environ.items() if k != "TRAINCONSOLE_CONFIG"}
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)


def test_paths_inside_a_folder_that_cannot_be_searched_are_named_not_a_traceback(tmp_path: Path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir()
    cfg = tmp_path / "config.toml"
    try:
        locked.chmod(0)
        cfg.write_text('[paths]\nqueue = "locked/q"\n')
        proc = _as_unprivileged("check-config", str(cfg))
        _no_traceback(proc)
        assert proc.returncode == 1
        assert 'paths.queue = "locked/q" cannot be checked' in proc.stdout + proc.stderr
        cfg.write_text('[model]\nbase_model = "./locked/m"\n')
        proc = _as_unprivileged("check-config", str(cfg))
        _no_traceback(proc)
        assert proc.returncode == 1 and "model.base_model" in proc.stdout + proc.stderr
        cfg.write_text('[model]\nbase_model = "./locked"\n')
        proc = _as_unprivileged("check-config", str(cfg))
        _no_traceback(proc)
        assert proc.returncode == 0 and "cannot be read" in proc.stdout + proc.stderr
    finally:
        locked.chmod(0o755)


@pytest.mark.parametrize("args", [["--help"], ["--version"], ["status", "--help"], ["init", "--help"]])
def test_help_into_a_closed_pipe_is_not_a_traceback(args: list[str]) -> None:
    # `trainconsole --help | head -1`: the reader is gone before the help is written.
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        proc = subprocess.run([sys.executable, "-m", "trainconsole.console.cli", *args], cwd=ROOT, stdout=write_end,
                              stderr=subprocess.PIPE, text=True, timeout=60)
    finally:
        os.close(write_end)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr


def test_a_misspelt_reporter_is_named_with_a_suggestion(tmp_path: Path) -> None:
    (tmp_path / "config.toml").write_text('[report]\nto = ["tensorbord"]\n')
    proc = run_cli("check-config", str(tmp_path / "config.toml"))
    _no_traceback(proc)
    assert proc.returncode == 1
    assert 'config.toml:2: report.to = ["tensorbord"] item 0 ("tensorbord") is not allowed' in proc.stderr
    assert 'did you mean "tensorboard"?' in proc.stderr


def test_a_reporter_whose_package_is_missing_is_one_warning_line(tmp_path: Path) -> None:
    """The package made unimportable the way Python itself marks one (a None in sys.modules), so
    the check is the real import system's answer, whatever this environment has installed."""
    (tmp_path / "config.toml").write_text('[report]\nto = ["tensorboard"]\n')
    hide = ("import sys; sys.modules['tensorboard'] = None; from trainconsole.console.cli import main; "
            "sys.exit(main(sys.argv[1:]))")
    proc = subprocess.run([sys.executable, "-c", hide, "check-config", str(tmp_path / "config.toml")],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    _no_traceback(proc)
    assert proc.returncode == 0  # valid: the jobs train, only the mirror is missing
    [line] = [ln for ln in proc.stdout.splitlines() if ln.startswith("warning:")]
    assert 'report.to names "tensorboard"' in line and "pip install 'trainconsole[tensorboard]'" in line
    # Installed (the dev extra brings it): nothing to say.
    proc = run_cli("check-config", str(tmp_path / "config.toml"))
    assert proc.returncode == 0 and "warning" not in proc.stdout, proc.stdout
