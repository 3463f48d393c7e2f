"""The real-model tier: SmolLM2-135M-Instruct (Llama architecture, 30 layers, tied embeddings, a
ChatML template without generation markers), converted once into a cache outside the repository
(tests/realmodel/smollm2.py) and shared by every test here."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.realmodel.smollm2 import ensure_smollm2


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.realmodel)


@pytest.fixture(scope="session")
def smollm2() -> Path:
    """The converted model folder (fetched and converted on first use; `make realmodel` does it
    ahead of the test run, outside any test's timeout)."""
    return ensure_smollm2()


@pytest.fixture(scope="session")
def smollm2_tokenizer(smollm2: Path) -> object:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(smollm2))
