"""The [launcher] section: Slurm's own syntaxes checked before any sbatch sees them, and the
options the engine sets itself refused in extra_args."""

from __future__ import annotations

import pytest

from trainconsole.engine.config import ConfigProblems, parse_config_text


def _problems(text: str) -> ConfigProblems:
    with pytest.raises(ConfigProblems) as info:
        parse_config_text(text, file="t.toml")
    return info.value


def test_defaults_are_the_local_launcher_one_job_at_a_time() -> None:
    cfg = parse_config_text("")
    assert cfg.launcher.kind == "local" and cfg.launcher.max_parallel == 1
    assert cfg.launcher.extra_args == []


def test_a_full_slurm_section_loads_typed() -> None:
    cfg = parse_config_text(
        '[launcher]\nkind = "slurm"\npartition = "gpu"\naccount = "ml"\nqos = "high"\n'
        'gpus_per_job = 4\ncpus_per_job = 16\nmem = "128G"\ntime_limit = "1-12:00:00"\n'
        'warn_before_limit_s = 600\nextra_args = ["--constraint=a100", "--exclusive"]\n'
        "poll_s = 10\nmax_parallel = 8\n")
    lc = cfg.launcher
    assert (lc.kind, lc.partition, lc.account, lc.qos) == ("slurm", "gpu", "ml", "high")
    assert (lc.gpus_per_job, lc.cpus_per_job, lc.mem, lc.time_limit) == (4, 16, "128G", "1-12:00:00")
    assert lc.extra_args == ["--constraint=a100", "--exclusive"]
    assert lc.poll_s == 10.0 and isinstance(lc.poll_s, float) and lc.max_parallel == 8


@pytest.mark.parametrize("value", ["90", "30:00", "4:00:00", "2-0", "1-12", "1-12:30", "1-12:30:00"])
def test_slurm_time_syntaxes_are_accepted(value: str) -> None:
    assert parse_config_text(f'[launcher]\ntime_limit = "{value}"\n').launcher.time_limit == value


@pytest.mark.parametrize(("text", "key", "words"), [
    ('[launcher]\nkind = "k8s"\n', "launcher.kind", 'one of "local", "slurm"'),
    ('[launcher]\nmem = "64 GB"\n', "launcher.mem", 'such as "64G"'),
    ('[launcher]\nmem = "lots"\n', "launcher.mem", 'such as "64G"'),
    ('[launcher]\ntime_limit = "4h"\n', "launcher.time_limit", "HH:MM:SS"),
    ("[launcher]\ngpus_per_job = -1\n", "launcher.gpus_per_job", "from 0 to 64"),
    ("[launcher]\npoll_s = 0.01\n", "launcher.poll_s", "from 0.2"),
    ('[launcher]\nextra_args = "--exclusive"\n', "launcher.extra_args", '["--exclusive"]'),
    ("[launcher]\nmax_parallel = 3\n", "launcher.max_parallel", 'kind = "slurm"'),
    ('[launcher]\nkind = "slurm"\nextra_args = ["--output=/tmp/x"]\n', "launcher.extra_args",
     "set by the engine"),
    ('[launcher]\nkind = "slurm"\nextra_args = ["-Jname"]\n', "launcher.extra_args", "set by the engine"),
    ('[launcher]\nkind = "slurm"\nextra_args = ["--requeue"]\n', "launcher.extra_args",
     "set by the engine"),
])
def test_rejected_with_the_key_named(text: str, key: str, words: str) -> None:
    exc = _problems(text)
    assert [p.key for p in exc.problems] == [key], exc.message
    assert words in exc.message and "t.toml:" in exc.message


def test_parallel_jobs_with_slurm_are_fine() -> None:
    cfg = parse_config_text('[launcher]\nkind = "slurm"\nmax_parallel = 3\n')
    assert cfg.launcher.max_parallel == 3
