"""Queue tests share a real queue folder, a real store on it, and an injectable wall clock."""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.chatdata import line
from trainconsole.engine.events import EventLog, read_all
from trainconsole.engine.layout import Layout
from trainconsole.engine.store import Store


@dataclass
class Policy:
    max_attempts: int = 3
    backoff_s: float = 30.0
    backoff_max_s: float = 3600.0
    aging_s: float = 600.0


class Clock:
    """A wall clock the test moves by hand, so time-based behaviour needs no sleeps."""

    def __init__(self, start: float = 1_800_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def make_layout(root: Path) -> Layout:
    layout = Layout(queue=root / "queue", runs=root / "runs", adapters=root / "adapters", cache=root / "cache")
    layout.ensure()
    return layout


def alerts(layout: Layout) -> list[dict[str, object]]:
    return [e for e in read_all(layout.engine_events) if e["type"] == "alert"]


def write_job_file(path: Path, text: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if text is None:
        text = line(path.name.encode("utf-8", "backslashreplace").decode(), "ok")
    body = text
    path.write_text(body, errors="surrogateescape")
    return path


@pytest.fixture
def layout(tmp_path: Path) -> Layout:
    return make_layout(tmp_path)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def policy() -> Policy:
    return Policy()


@pytest.fixture
def store(layout: Layout, clock: Clock, policy: Policy) -> Iterator[Store]:
    events = EventLog(layout.engine_events)
    st = Store.open(layout, events, policy=policy, clock=clock, rng=random.Random(7))
    yield st
    st.close()
    events.close()


def add(store: Store, tmp: Path, name: str, priority: str = "normal", text: str | None = None) -> str:
    """Add a job from a fresh file (unique content per name unless ``text`` says otherwise)."""
    from trainconsole.engine.store.files import hash_file

    src = write_job_file(tmp / "src" / f"{len(store.jobs())}-{name}", text)
    sha, size = hash_file(src)
    job = store.add_job(name, src, sha, size, priority)
    assert job is not None
    return job.id
