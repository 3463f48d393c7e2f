"""The chat data the tests write: one place for the well-formed records (bad records stay beside
the test that is about them, where their exact bytes are the point)."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any


def chat(user: str, assistant: str | None = None, *, system: str | None = None) -> dict[str, Any]:
    """One ``messages`` record; ``assistant=None`` leaves the user turn alone."""
    messages = [{"role": "system", "content": system}] if system is not None else []
    messages.append({"role": "user", "content": user})
    if assistant is not None:
        messages.append({"role": "assistant", "content": assistant})
    return {"messages": messages}


def line(user: str, assistant: str | None = None, *, system: str | None = None) -> str:
    return json.dumps(chat(user, assistant, system=system)) + "\n"


def jsonl(rows: list[dict[str, Any]]) -> str:
    return "".join(json.dumps(r) + "\n" for r in rows)


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text(jsonl(rows))
    return path


def doubling(n: int, tag: str = "") -> list[dict[str, Any]]:
    """``n`` distinct records ("What is i plus i?"), ``tag`` making a file's content its own."""
    return [chat(f"What is {i} plus {i}? {tag}", f"{i} plus {i} is {2 * i}.") for i in range(n)]


def chat_lines(n: int, tag: str = "") -> str:
    return jsonl(doubling(n, tag))


def arithmetic(n: int, seed: int = 0) -> list[dict[str, Any]]:
    """Single-digit sums in one fixed format: a task the built-in model learns in a few steps."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        a, b = rng.randint(0, 9), rng.randint(0, 9)
        rows.append(chat(f"What is {a} + {b}?", f"{a} + {b} = {a + b}"))
    return rows
