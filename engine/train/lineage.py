"""Adapter lineage: each finished job publishes its adapter as ``adapters/<n>-<job>/`` and moves
its lineage's pointer to it (``latest`` for ``main``, ``latest-<name>`` for any other; see
``trainconsole.engine.adapters``); the lineage's next job continues from there.

An adapter folder is a plain PEFT adapter (``PeftModel.from_pretrained`` loads it) plus
``lineage.json`` (job, parent adapter, step, the base fingerprint) and the manifest of
``engine/checkpoints.py`` (so a half-copied adapter is never continued). An adapter whose base
fingerprint differs from the configured base is refused (cases 13 and 18), including where PEFT
itself would load it without complaint (a base with the same module names but fewer layers).

``latest`` is a relative symlink, replaced atomically (a new link renamed over the old one), so
a reader sees the old adapter or the new one and ``PeftModel.from_pretrained("adapters/latest")``
works for anyone.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

from trainconsole.engine import checkpoints as ckpt
from trainconsole.engine import fsio
from trainconsole.engine.adapters import (
    LINEAGE_FILE,
    MAIN,
    NUMBERED,
    pointer_name,
    read_adapter,
    resolve_latest,
)
from trainconsole.engine.adapters import published_for as published_for
from trainconsole.engine.config import Config
from trainconsole.engine.errors import ConfigError
from trainconsole.engine.events import EventLog

LINEAGE = LINEAGE_FILE
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_FILES = (ckpt.ADAPTER_WEIGHTS, ADAPTER_CONFIG)
_NUMBERED = NUMBERED


def _alerted(exc: ConfigError) -> ConfigError:
    exc.alerted = True  # type: ignore[attr-defined]  # the worker need not alert a second time
    return exc


START_BASE = "base"  # a job's start_from: train a new adapter from the base model


def check_parent(adapters: Path, fingerprint: dict[str, Any], events: EventLog, job_id: str, *,
                 lineage: str = MAIN, start_from: str | None = None) -> Path | None:
    """The adapter to continue from, verified against this base; refused with an alert if not.

    ``start_from``: None continues the lineage's newest adapter; ``"base"`` starts a new adapter
    from the base model; a path starts from that adapter (``--from-adapter``)."""
    if start_from == START_BASE:
        return None
    pointer = adapters / pointer_name(lineage)
    if start_from:
        target: Path | None = Path(start_from)
        shown = str(start_from)
        advice = "give --from-adapter an adapter trained on this base model"
    else:
        target = resolve_latest(adapters, lineage)
        shown = f"{pointer} -> {target.name}" if target is not None else str(pointer)
        advice = ("set model.base_model back to the base it was trained on, or start a new lineage "
                  "(trainconsole add --new-lineage) for this base")
    if target is None:
        return None
    if not target.is_dir():
        message = f"adapter {shown} does not exist; point {pointer.name} at an existing adapter or remove it"
        events.alert(13, message, severity="critical", job_id=job_id, key="adapter-missing")
        raise _alerted(ConfigError(message, case=13))
    if start_from and not (target / ckpt.MANIFEST).is_file():
        # An adapter from elsewhere (no manifest of ours): PEFT checks its shapes when it loads.
        missing = [f for f in ADAPTER_FILES if not (target / f).is_file()]
        if missing:
            message = f"--from-adapter {shown} is not a PEFT adapter folder (no {', '.join(missing)})"
            events.alert(13, message, severity="critical", job_id=job_id, key="adapter-refused")
            raise _alerted(ConfigError(message, case=13))
        return target
    verdict = ckpt.verify(target, fingerprint=fingerprint, require=ADAPTER_FILES)
    if isinstance(verdict, ckpt.Rejection):
        if verdict.case == 18:
            theirs = read_adapter(target)
            message = (f"lineage {lineage}: adapter {shown} was trained on base model "
                       f"{theirs.base_model if theirs and theirs.base_model else '(unknown)'}, but this job's "
                       f"base model is {fingerprint.get('name')} ({verdict.reason}); {advice}")
            case = 13
        else:
            message = (f"adapter {shown} cannot be used: {verdict.reason}; point {pointer.name} at a good "
                       "adapter, or start a new lineage")
            case = verdict.case
        events.alert(case, message, severity="critical", job_id=job_id, key="adapter-refused")
        raise _alerted(ConfigError(message, case=case))
    return target


def _targets_text(targets: Any) -> str:
    return targets if isinstance(targets, str) else ",".join(sorted(targets))


def _extras(rslora: Any, dora: Any, to_save: Any) -> str:
    """The options beyond rank and targets, only when set: a default adapter's shape reads as it
    always did, so checkpoints written before these options existed still match."""
    parts = []
    if rslora:
        parts.append("rslora")
    if dora:
        parts.append("dora")
    if to_save:
        parts.append("save=" + ",".join(sorted(to_save)))
    return "".join(" " + p for p in parts)


def lora_shape(cfg: Config, parent: Path | None) -> str:
    """The adapter's shape (rank, scaling, target modules): the parent adapter's own when a job
    continues one, else the configured one."""
    if parent is not None:
        conf = _adapter_config(parent)
        targets = conf.get("target_modules") or []
        return (f"r={conf.get('r')} alpha={conf.get('lora_alpha')} targets=" + _targets_text(targets)
                + _extras(conf.get("use_rslora"), conf.get("use_dora"), conf.get("modules_to_save")))
    lc = cfg.lora
    return (f"r={lc.r} alpha={lc.alpha} targets=" + _targets_text(lc.target_modules)
            + _extras(lc.use_rslora, lc.use_dora, lc.modules_to_save))


def _adapter_config(parent: Path) -> dict[str, Any]:
    try:
        conf = json.loads((parent / ADAPTER_CONFIG).read_text())
        if not isinstance(conf, dict):
            raise ValueError("not a JSON object")
        return conf
    except (OSError, ValueError) as exc:
        raise ConfigError(f"adapter {parent}: {ADAPTER_CONFIG} is unreadable ({exc})", case=13) from None


Shape = dict[str, Any]


def adapter_shape(parent: Path) -> Shape:
    """What a continued adapter is, in the terms of [lora]."""
    conf = _adapter_config(parent)
    targets = conf.get("target_modules") or []
    # peft records "all-linear" as the full paths of the layers it matched; [lora] names them short.
    short = {str(t).rsplit(".", 1)[-1] for t in ([targets] if isinstance(targets, str) else targets)}
    return {"r": conf.get("r"), "alpha": conf.get("lora_alpha"), "target_modules": sorted(short),
            "use_rslora": bool(conf.get("use_rslora")), "use_dora": bool(conf.get("use_dora")),
            "modules_to_save": sorted(conf.get("modules_to_save") or [])}


def configured_shape(cfg: Config, linear: list[str]) -> Shape:
    """What [lora] asks for; "all-linear" is expanded to the model's ``linear`` module names, as
    peft records it in the adapter."""
    lc = cfg.lora
    targets = linear if lc.target_modules == "all-linear" else lc.target_modules
    return {"r": lc.r, "alpha": lc.alpha, "target_modules": sorted(targets), "use_rslora": lc.use_rslora,
            "use_dora": lc.use_dora, "modules_to_save": sorted(lc.modules_to_save)}


def linear_names(model: Any) -> list[str]:
    """The short names of a model's linear layers but the output head (peft's "all-linear")."""
    import torch

    head = model.get_output_embeddings()
    return sorted({name.rsplit(".", 1)[-1] for name, module in model.named_modules()
                   if isinstance(module, torch.nn.Linear) and module is not head})


def describe(shape: Shape) -> str:
    return (f"r={shape['r']} alpha={shape['alpha']} target_modules={','.join(shape['target_modules'])}"
            + _extras(shape["use_rslora"], shape["use_dora"], shape["modules_to_save"]))


def next_name(adapters: Path, job_id: str) -> str:
    highest = 0
    if adapters.is_dir():
        for path in adapters.iterdir():
            match = _NUMBERED.match(path.name)
            if match:
                highest = max(highest, int(match.group(1)))
    return f"{highest + 1:04d}-{job_id}"


def _point_latest(adapters: Path, name: str, lineage: str = MAIN) -> None:
    pointer = adapters / pointer_name(lineage)
    if pointer.is_dir() and not pointer.is_symlink():
        ckpt.quarantine(pointer, adapters, case=None, reason="a folder stood where the latest pointer goes")
    fsio.point_symlink(pointer, name)


def publish_adapter(source: Path, adapters: Path, *, job_id: str, fingerprint: dict[str, Any],
                    step: int, parent: str | None, extra: dict[str, Any] | None = None,
                    lineage: str = MAIN) -> Path:
    """Copy the adapter files of checkpoint ``source`` into a new numbered folder, sealed with a
    manifest, and point the lineage's pointer at it. Tensors are checked finite first."""
    from trainconsole.engine.train.guards import assert_finite_file

    assert_finite_file(source / ckpt.ADAPTER_WEIGHTS)
    adapters.mkdir(parents=True, exist_ok=True)
    name = next_name(adapters, job_id)
    with fsio.staged(adapters, name) as staging:
        for file_name in ADAPTER_FILES:
            shutil.copyfile(source / file_name, staging / file_name)
        meta = {"schema": 1, "job_id": job_id, "lineage": lineage, "parent": parent,
                "global_step": step, "base": fingerprint, "created_at": round(time.time(), 3),
                **(extra or {})}
        fsio.write_json(staging / LINEAGE, meta, durable=False)
        ckpt.publish(staging, adapters / name, kind="adapter", step=step, fingerprint=fingerprint,
                     extra={"job_id": job_id})
    _point_latest(adapters, name, lineage)
    return adapters / name
