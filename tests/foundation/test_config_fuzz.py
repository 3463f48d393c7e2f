"""Property tests: whatever bytes or TOML a user feeds in, loading either succeeds with correctly
typed values or raises ConfigError; never any other exception."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import tomlkit
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from trainconsole.engine.config import (
    Config,
    ConfigError,
    default_config_text,
    load_config,
    parse_config_text,
    set_value,
)
from trainconsole.engine.config.schema import KEYS, Key

SECTION_NAMES = [*KEYS, "trainig", "extra"]
KEY_NAMES = sorted({name for keys in KEYS.values() for name in keys} | {"batchsize", "x"})

scalars = st.one_of(
    st.booleans(),
    st.integers(),
    st.integers(min_value=-(10**40), max_value=10**40),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
    st.sampled_from(["all", "linear", "cosine", "cpu", "builtin:tiny-chat", "./nope", "~", "/", ""]),
)
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                      | st.dictionaries(st.sampled_from(KEY_NAMES), inner, max_size=3), max_leaves=8)
documents = st.dictionaries(
    st.sampled_from(SECTION_NAMES),
    st.one_of(st.dictionaries(st.sampled_from(KEY_NAMES), values, max_size=6), values),
    max_size=5,
)

KIND_TYPES: dict[str, type] = {"int": int, "float": float, "bool": bool, "str": str, "list[str]": list}


def _check_typed(cfg: Config) -> None:
    for section, keys in KEYS.items():
        for name, key in keys.items():
            value = getattr(getattr(cfg, section), name)
            assert value is not None
            expected = KIND_TYPES.get(key.kind)
            if expected is not None:
                assert type(value) is expected, (section, name, value)
            if isinstance(value, float):
                assert math.isfinite(value)
    assert cfg.training.epochs > 0 or cfg.training.max_steps > 0
    assert cfg.training.batch_size >= 1 and 128 <= cfg.training.max_length <= 32768


def _load(data: bytes | str) -> None:
    try:
        cfg = parse_config_text(data, file="fuzz.toml")
    except ConfigError as exc:
        assert exc.message.strip()
        assert all(line.startswith("fuzz.toml") for line in exc.message.splitlines())
        return
    _check_typed(cfg)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(documents)
def test_generated_documents(doc: dict[str, Any]) -> None:
    try:
        text = tomlkit.dumps(doc)
    except Exception:  # noqa: BLE001 - tomlkit cannot write every value (e.g. lone surrogates)
        return
    _load(text)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300))
def test_arbitrary_bytes(data: bytes) -> None:
    _load(data)


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet=st.sampled_from(list('[]{}="\'.,#=\n\r\t -_01289eE+infa\\')) | st.characters(),
               max_size=120))
def test_toml_like_text(text: str) -> None:
    _load(text)
    _load(text.encode("utf-8", errors="surrogatepass"))


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.binary(max_size=200))
def test_files_on_disk(tmp_path: Path, data: bytes) -> None:
    path = tmp_path / "config.toml"
    path.write_bytes(b"[training]\n" + data)
    try:
        _check_typed(load_config(path))
    except ConfigError:
        pass


def _valid_values(key: Key) -> st.SearchStrategy[Any]:
    s = key.spec
    if key.kind == "bool":
        return st.booleans()
    if key.kind == "list[str]" and s.choices:  # a list drawn from the choices, each at most once
        return st.lists(st.sampled_from(s.choices), max_size=len(s.choices), unique=True)
    if s.choices:
        return st.sampled_from(s.choices)
    if key.kind == "int":
        return st.integers(min_value=int(s.lo if s.lo is not None else 0),
                           max_value=int(s.hi if s.hi is not None else 10**6))
    if key.kind == "float":
        lo = s.lo if s.lo is not None else 0.0
        return st.floats(min_value=lo, max_value=s.hi if s.hi is not None else 1e6,
                         exclude_min=s.lo_open, allow_nan=False)
    if key.kind == "list[str]":
        return st.lists(st.text(min_size=1, max_size=8).filter(lambda t: "\x00" not in t), min_size=1,
                        max_size=3)
    if key.kind == "gpus":
        return st.just("all") | st.lists(st.integers(0, 7), min_size=1, max_size=3, unique=True)
    return st.just(key.default)  # paths and the model: any other value depends on the disk


EDITABLE = [k for keys in KEYS.values() for k in keys.values()
            if k.dotted not in ("training.epochs", "training.max_steps", "training.warmup_steps",
                                "queue.backoff_s", "queue.backoff_max_s",
                                # cross-checked (kind, options the engine sets): tests of their own
                                "launcher.max_parallel", "launcher.extra_args",
                                # valid only on a machine with a CUDA GPU (tests/worker/test_options.py)
                                "model.load_in_4bit")]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.sampled_from(EDITABLE).flatmap(lambda k: st.tuples(st.just(k), _valid_values(k))))
def test_set_value_round_trips_and_keeps_the_rest(tmp_path: Path, edit: tuple[Key, Any]) -> None:
    key, value = edit
    path = tmp_path / "config.toml"
    path.write_text(default_config_text())
    cfg = set_value(path, key.dotted, value)
    got = getattr(getattr(cfg, key.section), key.name)
    assert got == value
    before = Config(source=cfg.source).to_dict()
    after = cfg.to_dict()
    before[key.section].pop(key.name)
    after[key.section].pop(key.name)
    assert before == after
    text = path.read_text()
    assert text.count("\n#") == default_config_text().count("\n#")  # every comment is still there
