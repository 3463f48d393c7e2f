"""Fixtures every test area shares: a workspace made by `trainconsole init`, and one cache of the
built-in model per test session (it builds in seconds, but not hundreds of times)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def shared_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The cache folder (built-in model, token caches) shared by every workspace in a session."""
    given = os.environ.get("TRAINCONSOLE_TEST_CACHE")
    if given:
        path = Path(given)
        path.mkdir(parents=True, exist_ok=True)
        return path
    return tmp_path_factory.mktemp("cache")


@pytest.fixture
def workspace(tmp_path: Path, shared_cache: Path) -> Iterator[Path]:
    """A fresh folder holding the default config (paths.cache pointed at the shared cache)."""
    from trainconsole.engine.config import default_config_text

    ws = tmp_path / "ws"
    ws.mkdir()
    text = default_config_text().replace('cache = ".cache"', f'cache = "{shared_cache}"')
    (ws / "config.toml").write_text(text)
    yield ws


@pytest.fixture(scope="session")
def tiny_model(shared_cache: Path) -> Path:
    """The folder of the built-in tiny model (built once per session)."""
    from trainconsole.engine.train.model import ensure_builtin

    return ensure_builtin("builtin:tiny-chat", shared_cache)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """A mistyped case number (edge(81), edge("3"), edge(True)) would count toward the wrong case,
    or none, in `make edge-report`: refuse to run until it is fixed."""
    from trainconsole.engine.catalog import check_edge_args

    bad = []
    for item in items:
        for mark in item.iter_markers("edge"):
            why = check_edge_args(mark.args, dict(mark.kwargs))
            if why:
                bad.append(f"{item.nodeid}: {why}")
    if bad:
        raise pytest.UsageError("malformed edge marks:\n  " + "\n  ".join(bad))
