"""``trainconsole demo``: a demo workspace (``./demo-workspace`` unless ``--dir``) on the built-in
tiny model, the bundled sample data queued once (two small tasks the model learns in a few dozen
steps: single-digit sums and numbers written as words; and one broken file, queued first so its
alert shows at once), then the console."""

from __future__ import annotations

import argparse
from importlib import resources
from pathlib import Path

from trainconsole.engine import fsio
from trainconsole.engine.errors import UsageError

MARKER = ".demo-queued"
# Small enough to train on a laptop CPU in about a minute a job, loud enough to show a falling
# curve and held-out answers coming right (tests/worker/test_demo_learns.py holds it to that).
DEMO_SETTINGS: dict[str, object] = {
    "training.max_steps": 80,
    "training.learning_rate": 1e-2,  # the built-in model has random weights: it needs a push
    "training.batch_size": 8,
    "training.max_length": 128,
    # One evaluation, at the end (every job ends with one): the second task continues the first
    # one's adapter and is only half-learnt by step 40, where a 0% would raise the low-accuracy
    # alert (case 69) about a job that is going well.
    "training.eval_steps": 80,
    "training.save_steps": 20,
    # Random embeddings and output head are noise a LoRA cannot fix: they train in full (65k
    # weights on this model), and every linear layer gets an adapter.
    "lora.target_modules": "all-linear",
    "lora.modules_to_save": ["embed_tokens", "lm_head"],
    "lora.r": 16,
    "lora.alpha": 32,
    "guards.first_step_grace_s": 300.0,
    "queue.stable_s": 0.2,
}


def build(parser: argparse.ArgumentParser, name: str) -> None:
    parser.add_argument("--dir", default="demo-workspace", metavar="DIR",
                        help="the demo workspace (default ./demo-workspace; made if missing)")
    parser.add_argument("--readonly", action="store_true", help="open the console read-only")
    parser.add_argument("--no-console", action="store_true",
                        help="set up, queue and start the engine, but do not open the console")
    parser.add_argument("--refresh", type=float, default=1.0, metavar="SECONDS",
                        help="seconds between console refreshes")


def demo_files() -> list[tuple[str, bytes]]:
    folder = resources.files("trainconsole.console") / "demo_data"
    return sorted((entry.name, entry.read_bytes()) for entry in folder.iterdir()
                  if entry.name.endswith(".jsonl"))


def prepare(root: Path) -> tuple[Path, bool]:
    """Make the workspace and queue the sample data once. Returns (config path, queued now)."""
    from trainconsole.engine.config import default_config_text, load_config, set_value

    if root.exists() and not root.is_dir():
        raise UsageError(f"--dir {root}: exists and is not a folder")
    root.mkdir(parents=True, exist_ok=True)
    config = root / "config.toml"
    if not config.exists():
        fsio.write_bytes(config, default_config_text().encode())
        for key, value in DEMO_SETTINGS.items():
            set_value(config, key, value)
    layout = load_config(config).layout()
    layout.ensure()
    if (root / MARKER).exists():
        return config, False
    for name, data in demo_files():
        # Through the inbox, as an operator would drop them: written aside, then renamed in, so
        # the engine never sees a half-written file.
        fsio.write_bytes(layout.incoming / name, data, tmp_dir=layout.tmp, tag="demo")
    fsio.write_bytes(root / MARKER, b"the sample data was queued; delete this file to queue it again\n")
    return config, True


def run(args: argparse.Namespace) -> int:
    root = Path(args.dir).expanduser().absolute()
    try:
        config, queued = prepare(root)
    except OSError as exc:  # a read-only folder, a path through a file: the operator's to fix
        where = exc.filename or root
        raise UsageError(f"--dir {args.dir}: cannot set up the demo workspace at {where}: "
                         f"{exc.strerror or exc}") from None
    names = ", ".join(name for name, _ in demo_files())
    print(f"demo workspace: {root}")
    print(f"sample data {'queued' if queued else 'already queued'}: {names}")
    from trainconsole.engine.config import load_config

    cfg = load_config(config)
    if args.no_console:
        from trainconsole.engine.daemon.start import start_detached

        pid = start_detached(config)
        print(f"engine running, pid {pid}; watch it with `trainconsole --config {config}`")
        return 0
    from trainconsole.console.commands.console_cmd import open_console

    return open_console(cfg, config, readonly=args.readonly, start=True, refresh=args.refresh)


