"""The checks that read several keys together, or the machine: steps to train, retry delays, the
folders, the launcher's own sbatch options, the files a key names, 4-bit loading. Each problem goes
to ``add(message, section, key)``, the collector of ``check.validate_document``."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from trainconsole.engine.config.parse import show
from trainconsole.engine.config.schema import KEYS


def cross_checks(out: dict[str, dict[str, Any]], add: Any, root: Path) -> None:
    def get(section: str, name: str) -> Any:
        return out.get(section, {}).get(name, KEYS[section][name].default)

    if get("training", "epochs") == 0 and get("training", "max_steps") == 0:
        where = "max_steps" if "max_steps" in out.get("training", {}) else "epochs"
        add("training.epochs and training.max_steps are both 0, so nothing would be trained; set "
            "epochs >= 1, or max_steps >= 1", "training", where)
    if get("queue", "backoff_max_s") < get("queue", "backoff_s"):
        add(f"queue.backoff_max_s = {show(get('queue', 'backoff_max_s'))} is below queue.backoff_s = "
            f"{show(get('queue', 'backoff_s'))}; the longest retry delay must be at least the first",
            "queue", "backoff_max_s")
    warmup = get("training", "warmup_steps")
    if warmup >= 1 and warmup != int(warmup):
        add(f"training.warmup_steps = {show(warmup)} must be a whole number of steps from 1 on (below 1 "
            "it is a share of all steps)", "training", "warmup_steps")
    _check_paths(out, add, root)
    _check_launcher(out, add)
    _check_files(out, add, root)
    if get("model", "load_in_4bit"):
        why = _no_4bit(get("hardware", "device"))
        if why:
            add(f"model.load_in_4bit = true {why}", "model", "load_in_4bit")


def _check_files(out: dict[str, dict[str, Any]], add: Any, root: Path) -> None:
    from trainconsole.engine.config import templates

    template = out.get("data", {}).get("chat_template", "")
    why = templates.problem(template, root) if template else None
    if why:
        add(f"data.chat_template = {show(template)} {why}", "data", "chat_template")
    eval_file = out.get("data", {}).get("eval_file", "")
    if eval_file:
        where = Path(os.path.normpath(root / Path(eval_file).expanduser()))
        if not where.is_file():
            add(f"data.eval_file = {show(eval_file)} names no such file ({where}); give a .jsonl file of "
                'held-out examples, or "" to hold out training.eval_fraction of each file', "data", "eval_file")


def _no_4bit(device: str) -> str | None:
    """Why 4-bit loading cannot work on this machine, or None. bitsandbytes' 4-bit kernels are CUDA's."""
    import importlib.util

    from trainconsole.engine.sysmon import Sysmon

    if device == "cpu":
        return 'needs a CUDA GPU, and hardware.device = "cpu"; set load_in_4bit = false to train on the CPU'
    mon = Sysmon()
    sample = mon.sample()
    if sample.gpu_state != "ok" or not sample.gpus:
        return (f"needs a CUDA GPU and none is visible ({mon.gpu_detail or sample.gpu_state}); set "
                "load_in_4bit = false to train in full precision")
    if importlib.util.find_spec("bitsandbytes") is None:
        return "needs bitsandbytes, which is not installed: pip install 'trainconsole[qlora]'"
    return None


def _check_paths(out: dict[str, dict[str, Any]], add: Any, root: Path) -> None:
    seen: dict[Path, str] = {}
    for name in KEYS["paths"]:
        if name not in out.get("paths", {}) and name != "queue":
            continue  # defaults are distinct, and an absent folder is created at start
        value = out.get("paths", {}).get(name, KEYS["paths"][name].default)
        where = Path(os.path.normpath(root / Path(value).expanduser()))
        why = _folder_problem(where)
        if why:
            add(f"paths.{name} = {show(value)} {why}", "paths", name)
        if name == "cache":
            continue  # the cache may share a folder with anything
        if where in seen:
            add(f"paths.{name} = {show(value)} is the same folder as paths.{seen[where]}; each needs "
                "its own", "paths", name)
        seen[where] = name


def _folder_problem(where: Path) -> str | None:
    """Why ``where`` cannot be (or become) a folder we use, or None. stat only, never raises."""
    try:
        if where.is_dir():
            return None
        if where.exists():
            return f"names a file ({where}); it must be a folder"
        # Created at start; under a file that fails later, far from the config.
        blocker = next((p for p in where.parents if p.exists()), None)
    except OSError as exc:  # a parent without search permission: Path.exists raises, not False
        return f"cannot be checked ({where}): {exc.strerror or exc}"
    if blocker is not None and not blocker.is_dir():
        return f"cannot be created: {blocker} is a file, not a folder"
    return None


# sbatch options the Slurm launcher sets itself: given again in extra_args they would break how the
# daemon follows the job (its log, its name, the warning signal, no requeue by Slurm behind our back).
OWN_SBATCH_OPTIONS = ("--parsable", "--job-name", "-J", "--output", "-o", "--error", "-e", "--open-mode",
                      "--signal", "--requeue", "--no-requeue", "--chdir", "-D", "--wrap", "--export",
                      "--array", "-a", "--wait", "-W", "--hold", "-H")


def _check_launcher(out: dict[str, dict[str, Any]], add: Any) -> None:
    def get(name: str) -> Any:
        return out.get("launcher", {}).get(name, KEYS["launcher"][name].default)

    if get("kind") == "local" and get("max_parallel") > 1:
        add(f"launcher.max_parallel = {show(get('max_parallel'))} needs launcher.kind = \"slurm\"; the "
            "local launcher runs one job at a time", "launcher", "max_parallel")
    for arg in get("extra_args"):
        name = arg.split("=", 1)[0]
        if name in OWN_SBATCH_OPTIONS or (len(name) > 2 and name[:2] in OWN_SBATCH_OPTIONS
                                           and not name.startswith("--")):
            add(f"launcher.extra_args: {show(arg)} is set by the engine itself (it follows each job "
                "by its name, log and signal); remove it", "launcher", "extra_args")
