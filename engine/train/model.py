"""The built-in base model `builtin:tiny-chat` and the mapping from `model.base_model` to a loadable
location.

The tiny model exists so every test and the demo run the real Trainer with no download: a
two-layer Llama with random weights and a byte-level BPE tokenizer trained on a short built-in
text. It is built once per cache folder, deterministically (same bytes on every build), in a
staging folder that is renamed into place, and a manifest written last records every file's size
and hash: a folder whose manifest is missing or disagrees with its files is rebuilt.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from trainconsole.engine import fsio
from trainconsole.engine.checkpoints import sha256_file
from trainconsole.engine.config import Config
from trainconsole.engine.data.builtin import BUILTIN_PREFIX, MANIFEST, RECIPE_VERSION, is_intact
from trainconsole.engine.errors import ConfigError

IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
PAD = "<|pad|>"
ENDOFTEXT = "<|endoftext|>"
SPECIAL_TOKENS = [ENDOFTEXT, IM_START, IM_END, PAD]

# ChatML. Assistant content and its closing marker sit inside {% generation %} so transformers (and
# engine/train/tokens.py) can tell which characters the model is trained to produce. Strings are
# emitted by expressions, never by template text, because trim_blocks/lstrip_blocks would eat the
# newlines of literal text.
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if message['role'] not in ['system', 'user', 'assistant', 'tool'] -%}"
    "{{- raise_exception('unknown role ' + message['role'] + ': use system, user, assistant or tool') -}}"
    "{%- endif -%}"
    "{%- if message['role'] == 'assistant' -%}"
    "{{- '<|im_start|>assistant\\n' -}}"
    "{%- generation -%}"
    "{{- message['content'] + '<|im_end|>' -}}"
    "{%- endgeneration -%}"
    "{{- '\\n' -}}"
    "{%- else -%}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}"
    "{{- '<|im_start|>assistant\\n' -}}"
    "{%- endif -%}"
)

# What the tokenizer's merges are learnt from: everyday English, digits and the chat markup's
# words, so common words become single tokens while digits and rare strings stay near-bytes (which
# keeps arithmetic and character tasks learnable for a model this small).
_CORPUS = """\
system user assistant tool
You are a helpful assistant. Answer the question in one short sentence.
The quick brown fox jumps over the lazy dog. The dog sleeps in the sun.
What is the capital of France? The capital of France is Paris.
Please reverse the words in this sentence. Here is the answer you asked for.
What is two plus three? It is five. What is the sum of these numbers?
Question: what is the result? Answer: the result is the number shown above.
It is a good day to learn something new, and we will try again tomorrow.
The model reads the text, then it writes a reply that should be correct.
Thank you for asking. I do not know, but I will find out and tell you.
one two three four five six seven eight nine ten eleven twelve hundred
red green blue yellow black white orange purple brown pink grey
Monday Tuesday Wednesday Thursday Friday Saturday Sunday morning evening night
cat dog bird fish horse cow sheep mouse lion tiger bear wolf fox rabbit
apple banana cherry grape lemon orange pear peach plum melon berry
0 1 2 3 4 5 6 7 8 9 + - * / = ( ) . , ? ! : ; " ' \n
"""

MODEL_DIMS: dict[str, Any] = {
    "vocab_size": 512,
    "hidden_size": 64,
    "intermediate_size": 192,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    # The config allows max_length up to 32768; RoPE has no table of that size to pay for.
    "max_position_embeddings": 32768,
}
SEED = 1234
KNOWN = ("tiny-chat",)


def _build_tokenizer() -> Any:
    import transformers
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    hf: Any = transformers  # untyped library: keep its calls out of mypy's typed-call checks

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=MODEL_DIMS["vocab_size"],
        min_frequency=2,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    # The chat markup's role words are repeated so each becomes one token rather than several.
    lines = _CORPUS.splitlines(keepends=True) * 4 + ["system\nuser\nassistant\ntool\n"] * 50
    tok.train_from_iterator(lines, trainer=trainer)
    return hf.PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=ENDOFTEXT,
        eos_token=IM_END,
        pad_token=PAD,
        chat_template=CHAT_TEMPLATE,
        model_max_length=MODEL_DIMS["max_position_embeddings"],
        padding_side="right",
    )


def _build_into(folder: Path) -> None:
    import torch
    import transformers

    hf: Any = transformers

    tokenizer = _build_tokenizer()
    vocab = len(tokenizer)
    if vocab > MODEL_DIMS["vocab_size"]:
        raise RuntimeError(f"built-in tokenizer has {vocab} tokens, more than {MODEL_DIMS['vocab_size']}")
    config = hf.LlamaConfig(
        **MODEL_DIMS,
        initializer_range=0.1,
        rms_norm_eps=1e-5,
        tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    # A private generator state: seeding the global one would disturb the caller's randomness.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(SEED)
        model = hf.LlamaForCausalLM(config)
    model.generation_config = hf.GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        do_sample=False,
        max_new_tokens=64,
    )
    hf_logging: Any = hf.utils.logging
    # The shard-writing progress bar would land in the operator's terminal and the job logs.
    bars_on = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        model.save_pretrained(folder, safe_serialization=True)
    finally:
        if bars_on:
            hf_logging.enable_progress_bar()
    tokenizer.save_pretrained(folder)
    _write_manifest(folder)


def _write_manifest(folder: Path) -> None:
    files = {
        p.name: {"size": p.stat().st_size, "sha256": sha256_file(p)}
        for p in sorted(folder.iterdir())
        if p.is_file() and p.name != MANIFEST
    }
    fsio.sync_tree(folder)
    body = {"schema": 1, "name": "builtin:tiny-chat", "recipe": RECIPE_VERSION, "files": files}
    fsio.write_json(folder / MANIFEST, body)


def ensure_builtin(name: str, cache: Path) -> Path:
    """Build `builtin:<name>` into `cache/models/<name>` unless an intact copy is there; return
    the folder. Safe to call from several processes at once: each builds in its own staging folder
    under a lock, and the folder in place is only ever a complete build."""
    from filelock import FileLock

    short = name.removeprefix(BUILTIN_PREFIX)
    if short not in KNOWN:
        raise ConfigError(
            f"model.base_model: unknown built-in model {name!r}; available: "
            + ", ".join(BUILTIN_PREFIX + k for k in KNOWN)
        )
    models_dir = Path(cache).expanduser().resolve() / "models"
    final = models_dir / short
    fsio.sweep(models_dir)  # a build killed midway left its staging folder
    if is_intact(final):
        return final
    models_dir.mkdir(parents=True, exist_ok=True)
    with FileLock(str(models_dir / f".{short}.lock")):
        if is_intact(final):  # another process finished it while we waited
            return final
        with fsio.staged(models_dir, short) as staging:
            _build_into(staging)
            fsio.publish_dir(staging, final)  # a damaged copy in place is discarded
    return final


def resolve_base_model(cfg: Config) -> Path | str:
    """Where `model.base_model` loads from: the cache folder of a built-in model, a local folder,
    or (anything else) a hub id passed through unchanged."""
    base: str = cfg.model.base_model
    if base.startswith(BUILTIN_PREFIX):
        return ensure_builtin(base, cfg.layout().cache)
    local = Path(base).expanduser()
    if not local.is_absolute():
        relative = Path(cfg.root) / local
        if relative.exists():
            return relative.resolve()
    if local.exists():
        return local.resolve()
    return base
