"""Base-model checks, run before a job consumes anything (cases 11, 12, 34, 39, 40).

A failure here is the operator's to fix, so it is a permanent ``ConfigError`` whose message names
the key in config.toml and says what to do. Nothing here runs code shipped with a model unless
``model.trust_remote_code`` is on, and safetensors files are preferred and checked down to their
headers (a truncated download is caught before torch ever reads it).
"""

from __future__ import annotations

import hashlib
import json
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trainconsole.engine.config import Config
from trainconsole.engine.errors import ConfigError

_SAFE_INDEX = "model.safetensors.index.json"
_BIN_INDEX = "pytorch_model.bin.index.json"
_LAYER_KEYS = ("num_hidden_layers", "n_layer", "num_layers")
_HIDDEN_KEYS = ("hidden_size", "n_embd", "d_model")
_CONTEXT_KEYS = ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length")


@dataclass(frozen=True)
class BaseModel:
    """A base model folder that passed the checks."""

    path: Path
    config: dict[str, Any]
    fingerprint: dict[str, Any]
    use_safetensors: bool
    context: int | None


def _key(cfg: Config) -> str:
    return f"model.base_model = {cfg.model.base_model!r} in {cfg.source}"


def locate(cfg: Config) -> Path:
    """The folder the base model loads from (cases 11 and 39)."""
    from trainconsole.engine.train.model import resolve_base_model

    where = resolve_base_model(cfg)
    if isinstance(where, Path):
        if not where.is_dir():
            raise ConfigError(f"{_key(cfg)}: {where} is not a folder; point it at a model folder "
                              "(with config.json and weights)", case=11)
        return where
    name = str(where)
    if name.startswith(("/", "./", "../", "~")) or "\\" in name:
        raise ConfigError(f"{_key(cfg)}: no such folder; check the path, or use builtin:tiny-chat",
                          case=11)
    try:
        from huggingface_hub import snapshot_download

        found = snapshot_download(repo_id=name, revision=cfg.model.revision or None, local_files_only=True)
    except Exception as exc:  # any failure means the same thing here: it is not available locally
        raise ConfigError(
            f"{_key(cfg)}: not a folder and not a model in the local cache ({exc.__class__.__name__}); "
            "trainconsole never downloads: put the model in a folder and set base_model to its path",
            case=39) from None
    return Path(found)


def _first_int(config: dict[str, Any], keys: tuple[str, ...]) -> int | None:
    for source in (config, config.get("text_config") or {}):
        for key in keys:
            value = source.get(key)
            if isinstance(value, int) and not isinstance(value, bool):
                return value
    return None


def _check_safetensors(path: Path) -> str | None:
    """None when the file's header parses and its data fills the file exactly."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as fh:
            raw = fh.read(8)
            if len(raw) < 8:
                return f"{path.name} is {size} bytes, too short to be a safetensors file"
            (header_len,) = struct.unpack("<Q", raw)
            if header_len > min(size - 8, 100 << 20):
                return f"{path.name} has a header length past its end (truncated or not safetensors)"
            header = json.loads(fh.read(header_len))
    except (OSError, ValueError) as exc:
        return f"{path.name} has an unreadable header ({exc.__class__.__name__})"
    end = 0
    for name, info in header.items():
        if name == "__metadata__":
            continue
        offsets = info.get("data_offsets") if isinstance(info, dict) else None
        if not (isinstance(offsets, list) and len(offsets) == 2):
            return f"{path.name}: tensor {name!r} has no data offsets"
        end = max(end, int(offsets[1]))
    expected = 8 + header_len + end
    if expected != size:
        return (f"{path.name} is {size} bytes but its header describes {expected} "
                "(an incomplete download or a damaged copy)")
    return None


def _check_weights(folder: Path) -> bool:
    """Raise for missing or damaged weight files (case 12); True when they are safetensors."""
    safe = sorted(folder.glob("*.safetensors"))
    index_path = folder / _SAFE_INDEX
    if index_path.is_file():
        try:
            weight_map = json.loads(index_path.read_bytes())["weight_map"]
            shards = sorted(set(weight_map.values()))
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise ConfigError(f"{index_path} is damaged ({exc.__class__.__name__}); re-copy the model",
                              case=12) from None
        missing = [s for s in shards if not (folder / s).is_file()]
        if missing:
            raise ConfigError(f"{folder}: weight shards listed in {_SAFE_INDEX} are missing: "
                              f"{', '.join(missing[:5])}; the download is incomplete", case=12)
        safe = [folder / s for s in shards]
    for path in safe:
        problem = _check_safetensors(path)
        if problem:
            raise ConfigError(f"{folder}: {problem}; re-copy or re-download the model", case=12)
    if safe:
        return True
    bins = sorted(folder.glob("pytorch_model*.bin"))
    if (folder / _BIN_INDEX).is_file() or bins:
        empty = [p.name for p in bins if p.stat().st_size == 0]
        if empty or not bins:
            raise ConfigError(f"{folder}: weight files are empty or missing ({', '.join(empty)})", case=12)
        return False
    raise ConfigError(f"{folder} has no weight files (*.safetensors or pytorch_model*.bin)", case=12)


def fingerprint(cfg: Config, config_bytes: bytes, config: dict[str, Any]) -> dict[str, Any]:
    """What an adapter or a checkpoint must match to be used on this base."""
    return {
        "name": cfg.model.base_model,
        "revision": cfg.model.revision,
        "config_sha256": hashlib.sha256(config_bytes).hexdigest(),
        "layers": _first_int(config, _LAYER_KEYS),
        "hidden": _first_int(config, _HIDDEN_KEYS),
        "vocab": _first_int(config, ("vocab_size",)),
    }


def check_files(cfg: Config, max_length: int) -> BaseModel:
    """Everything that can be checked without loading tensors."""
    folder = locate(cfg)
    config_path = folder / "config.json"
    try:
        config_bytes = config_path.read_bytes()
        config = json.loads(config_bytes)
    except FileNotFoundError:
        raise ConfigError(f"{_key(cfg)}: {folder} has no config.json, so it is not a model folder",
                          case=12) from None
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{config_path} is not valid JSON ({exc}); re-copy the model", case=12) from None
    if not isinstance(config, dict):
        raise ConfigError(f"{config_path} is not a JSON object; re-copy the model", case=12)
    if config.get("auto_map") and not cfg.model.trust_remote_code:
        raise ConfigError(
            f"{_key(cfg)}: the model needs Python code shipped with it (auto_map in config.json); set "
            "model.trust_remote_code = true only if you trust the model's author")
    use_safetensors = _check_weights(folder)
    context = _first_int(config, _CONTEXT_KEYS)
    if context is not None and max_length > context:
        raise ConfigError(
            f"training.max_length = {max_length} in {cfg.source} is beyond the model's context "
            f"({context} tokens, from config.json); set it to at most {context}", case=34)
    return BaseModel(folder, config, fingerprint(cfg, config_bytes, config), use_safetensors, context)


def _brief(exc: BaseException, limit: int) -> str:
    """A library's multi-line message as one line: the report and the console show one line."""
    text = " ".join(str(exc).split())
    return f"{exc.__class__.__name__}: {text[:limit]}{'...' if len(text) > limit else ''}"


def load_tokenizer(cfg: Config, base: BaseModel) -> Any:
    """The tokenizer, checked against the embedding size and for a chat template (case 40)."""
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(
            str(base.path), trust_remote_code=cfg.model.trust_remote_code,
            revision=cfg.model.revision or None)
    except (OSError, ValueError, TypeError, KeyError) as exc:
        raise ConfigError(f"{_key(cfg)}: the tokenizer in {base.path} does not load "
                          f"({_brief(exc, 200)}); re-copy its tokenizer files (tokenizer.json, "
                          "tokenizer_config.json)", case=40) from None
    vocab = base.fingerprint["vocab"]
    if isinstance(vocab, int) and len(tokenizer) > vocab:
        raise ConfigError(
            f"{_key(cfg)}: the tokenizer has {len(tokenizer)} tokens but the model's embedding has "
            f"{vocab} rows, so they do not belong together; use the tokenizer shipped with the model",
            case=40)
    template = _training_template(cfg)
    if template is not None:
        tokenizer.chat_template = template
    if not getattr(tokenizer, "chat_template", None):
        raise ConfigError(f"{_key(cfg)}: the tokenizer has no chat template, so chat data cannot be "
                          "formatted; use a chat (instruct) model or add a chat_template", case=40)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def _training_template(cfg: Config) -> str | None:
    """The template data.chat_template names, or None for the model's own."""
    from trainconsole.engine.config import templates

    value = cfg.data.chat_template
    try:
        return templates.resolve(value, cfg.root)
    except ConfigError as exc:
        raise ConfigError(f"data.chat_template = {value!r} in {cfg.source} {exc.message}") from None


def _quantization(cfg: Config, dtype: Any) -> Any:
    """QLoRA's 4-bit NF4 loading (model.load_in_4bit), computing in the training precision."""
    if not cfg.model.load_in_4bit:
        return None
    try:
        import bitsandbytes  # noqa: F401 - transformers needs it; a missing extra is one line, not a traceback
    except ImportError:
        raise ConfigError(f"model.load_in_4bit = true in {cfg.source} needs bitsandbytes: pip install "
                          "'trainconsole[qlora]'") from None
    import transformers

    hf: Any = transformers  # untyped library
    return hf.BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=dtype)


def load_model(cfg: Config, base: BaseModel, *, dtype: Any, gradient_checkpointing: bool = False) -> Any:
    """The base model's weights. Out-of-memory propagates as itself (case 21); anything else wrong
    with the files is case 12."""
    import torch
    from transformers import AutoModelForCausalLM

    quantization = _quantization(cfg, dtype)
    try:
        model = AutoModelForCausalLM.from_pretrained(
            str(base.path), trust_remote_code=cfg.model.trust_remote_code, dtype=dtype,
            use_safetensors=base.use_safetensors, revision=cfg.model.revision or None,
            **({"quantization_config": quantization, "device_map": {"": torch.cuda.current_device()}}
               if quantization is not None else {}))
    except (torch.OutOfMemoryError, MemoryError):
        raise
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        if isinstance(exc, torch.AcceleratorError):
            raise
        raise ConfigError(f"{_key(cfg)}: the weights in {base.path} do not load "
                          f"({_brief(exc, 300)})", case=12) from None
    rows = int(model.get_input_embeddings().weight.shape[0])  # type: ignore[index]
    vocab = base.fingerprint["vocab"]
    if isinstance(vocab, int) and rows < vocab:
        raise ConfigError(f"{_key(cfg)}: the embedding has {rows} rows, config.json says {vocab}", case=40)
    if quantization is not None:
        import peft

        # Norms and the head in fp32, inputs that need grad for checkpointing: peft's QLoRA recipe.
        prepare: Any = peft.prepare_model_for_kbit_training
        model = prepare(model, use_gradient_checkpointing=gradient_checkpointing)
    return model
