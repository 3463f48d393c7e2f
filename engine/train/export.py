"""``python -m trainconsole.engine.train.export ADAPTER OUT CONFIG``: an adapter merged into its
base model (``merge_and_unload``), saved in Hugging Face format (safetensors weights, config,
tokenizer) as ``OUT``, atomically: written into a staging folder beside ``OUT``, synced, then
renamed, so ``OUT`` is whole or absent. Run as its own process by ``trainconsole export --merge``
(the console never imports torch). The base model is the one the adapter was trained on (its
``lineage.json``), checked against the adapter's fingerprint before anything is loaded; exit 0
done, 1 with one line on stderr naming what is wrong."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

from trainconsole.engine import checkpoints as ckpt
from trainconsole.engine import fsio
from trainconsole.engine.adapters import read_adapter
from trainconsole.engine.config import load_config
from trainconsole.engine.errors import ConfigError, TrainconsoleError
from trainconsole.engine.train import basecheck
from trainconsole.engine.train.lineage import ADAPTER_FILES


def merge(adapter: Path, out: Path, config: Path) -> Path:
    import torch
    from peft import PeftModel

    meta = read_adapter(adapter)
    cfg = load_config(config)
    if meta is not None and meta.base_model:
        cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, base_model=meta.base_model))
    base = basecheck.check_files(cfg, cfg.training.max_length)
    if (adapter / ckpt.MANIFEST).is_file():
        verdict = ckpt.verify(adapter, fingerprint=base.fingerprint, require=ADAPTER_FILES)
        if isinstance(verdict, ckpt.Rejection):
            raise ConfigError(f"adapter {adapter} cannot be merged into {cfg.model.base_model}: {verdict.reason}",
                              case=verdict.case)
    tokenizer = basecheck.load_tokenizer(cfg, base)
    model = basecheck.load_model(cfg, base, dtype=torch.float32)
    merged = PeftModel.from_pretrained(model, str(adapter)).merge_and_unload()
    out.parent.mkdir(parents=True, exist_ok=True)
    with fsio.staged(out.parent, out.name) as staging:
        merged.save_pretrained(str(staging), safe_serialization=True)
        tokenizer.save_pretrained(str(staging))
        fsio.sync_tree(staging)
        fsio.publish_new_dir(staging, out)
    return out


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 3:
        print("usage: python -m trainconsole.engine.train.export ADAPTER OUT CONFIG", file=sys.stderr)
        return 2
    try:
        out = merge(Path(args[0]), Path(args[1]), Path(args[2]))
    except TrainconsoleError as exc:
        print(f"trainconsole: {exc.message}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"trainconsole: {exc.filename or args[1]}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
