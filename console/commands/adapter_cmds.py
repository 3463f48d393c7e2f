"""``trainconsole adapters [--json]`` (lineages and their adapters) and ``trainconsole export
ADAPTER OUT [--merge]`` (an adapter, or the base model with it merged in, written atomically).

Listing reads the adapters folder only (``trainconsole.engine.adapters``, torch-free). Merging
needs torch, so it runs as its own process (``python -m trainconsole.engine.train.export``)."""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from trainconsole.engine.errors import ConfigError, UsageError

ADAPTERS_SCHEMA = 1
EXPORT_MODULE = "trainconsole.engine.train.export"
COPIED = ("adapter_model.safetensors", "adapter_config.json", "lineage.json")


def build(parser: argparse.ArgumentParser, name: str) -> None:
    if name == "adapters":
        parser.description = "List the lineages and their adapters (job, step, eval loss, parent)."
        parser.add_argument("--json", action="store_true", help=f"machine-readable (schema {ADAPTERS_SCHEMA})")
        return
    parser.description = ("Write an adapter to OUT (a new folder), or with --merge the base model with the "
                          "adapter merged in, in Hugging Face format. OUT appears whole or not at all.")
    parser.add_argument("adapter", metavar="ADAPTER",
                        help="an adapter folder's name (0003-j0007), a lineage (its newest adapter) or a path")
    parser.add_argument("out", metavar="OUT", type=Path, help="the folder to create")
    parser.add_argument("--merge", action="store_true",
                        help="merge into the base model (runs torch in a separate process)")


def run(args: argparse.Namespace) -> int:
    return _list(args) if args.command == "adapters" else _export(args)


def adapter_rows(adapters_dir: Path) -> dict[str, Any]:
    """What ``adapters --json`` prints (also what a console's lineage view can show)."""
    from trainconsole.engine.adapters import lineages, list_adapters, pointer_name
    from trainconsole.engine.isotime import iso

    found = list_adapters(adapters_dir)
    groups = lineages(adapters_dir, found)
    latest = {g.latest.name for g in groups if g.latest is not None}
    return {
        "schema": ADAPTERS_SCHEMA, "adapters_dir": os.fspath(adapters_dir),
        "lineages": [{"name": g.name, "pointer": os.fspath(adapters_dir / pointer_name(g.name)),
                      "latest": g.latest.name if g.latest else None, "adapters": len(g.adapters),
                      "base_model": g.base_model} for g in groups],
        "adapters": [{"name": a.name, "path": os.fspath(a.path), "lineage": a.lineage, "job_id": a.job_id,
                      "step": a.step, "eval_loss": a.eval_loss, "parent": a.parent,
                      "created_at": iso(a.created_at), "base_model": a.base_model, "latest": a.name in latest}
                     for a in found],
    }


def _list(args: argparse.Namespace) -> int:
    import orjson

    from trainconsole.console.common import load_layout

    _, layout = load_layout(args)
    doc = adapter_rows(layout.adapters)
    if args.json:
        sys.stdout.buffer.write(orjson.dumps(doc, option=orjson.OPT_INDENT_2) + b"\n")
        sys.stdout.flush()
        return 0
    if not doc["adapters"]:
        print(f"no adapters yet in {layout.adapters}")
        return 0
    for lineage in doc["lineages"]:
        print(f"lineage {lineage['name']}  ({lineage['adapters']} adapter(s), base {lineage['base_model'] or '?'}"
              f", newest {lineage['latest'] or '-'})")
        for a in (a for a in doc["adapters"] if a["lineage"] == lineage["name"]):
            loss = "-" if a["eval_loss"] is None else f"{a['eval_loss']:.4g}"
            mark = "*" if a["latest"] else " "
            print(f"  {mark} {a['name']:<16} job {a['job_id']:<6} step {a['step'] if a['step'] is not None else '-':<6} "
                  f"eval loss {loss:<8} parent {a['parent'] or '-'}")
    return 0


def _export(args: argparse.Namespace) -> int:
    from trainconsole.console.common import config_path, load_layout
    from trainconsole.engine import fsio
    from trainconsole.engine.adapters import find

    _, layout = load_layout(args)
    source = find(layout.adapters, args.adapter)
    if source is None:
        raise ConfigError(f"no adapter {args.adapter!r} (a folder name, a lineage or a path; see "
                          "`trainconsole adapters`)")
    out: Path = args.out.expanduser().absolute()
    if out.exists() or out.is_symlink():
        raise UsageError(f"{out}: already exists; give a new folder")
    if args.merge:
        proc = subprocess.run([sys.executable, "-m", EXPORT_MODULE, os.fspath(source), os.fspath(out),
                               os.fspath(config_path(args))], stdin=subprocess.DEVNULL)
        return proc.returncode
    with fsio.staged(out.parent, out.name) as staging:
        for name in COPIED:
            if (source / name).is_file():
                shutil.copyfile(source / name, staging / name)
        fsio.sync_tree(staging)
        fsio.publish_new_dir(staging, out)
    print(f"{out}  (adapter {source.name})")
    return 0
