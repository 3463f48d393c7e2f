"""Adapter lineage: each finished job publishes its adapter as ``adapters/<n>-<job>/`` and moves
the ``latest`` pointer to it; the next job continues from ``latest``.

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
from trainconsole.engine.adapters import LINEAGE_FILE, NUMBERED, resolve_latest
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


def check_parent(adapters: Path, fingerprint: dict[str, Any], events: EventLog,
                 job_id: str) -> Path | None:
    """The adapter to continue from, verified against this base; refused with an alert if not."""
    target = resolve_latest(adapters)
    if target is None:
        return None
    shown = f"{adapters / 'latest'} -> {target.name}"
    advice = (f"set model.base_model back to the base it was trained on, or move {adapters / 'latest'} "
              "aside to start a new adapter lineage")
    if not target.is_dir():
        message = f"adapter {shown} does not exist; point latest at an existing adapter or remove it"
        events.alert(13, message, severity="critical", job_id=job_id, key="adapter-missing")
        raise _alerted(ConfigError(message, case=13))
    verdict = ckpt.verify(target, fingerprint=fingerprint, require=ADAPTER_FILES)
    if isinstance(verdict, ckpt.Rejection):
        if verdict.case == 18:
            message = f"adapter {shown} was {verdict.reason}; {advice}"
            case = 13
        else:
            message = (f"adapter {shown} cannot be used: {verdict.reason}; point latest at a good "
                       "adapter, or move it aside to start a new adapter lineage")
            case = verdict.case
        events.alert(case, message, severity="critical", job_id=job_id, key="adapter-refused")
        raise _alerted(ConfigError(message, case=case))
    return target


def lora_shape(cfg: Config, parent: Path | None) -> str:
    """The adapter's shape (rank, scaling, target modules): the parent adapter's own when a job
    continues one, else the configured one."""
    if parent is not None:
        try:
            conf = json.loads((parent / ADAPTER_CONFIG).read_text())
            targets = conf.get("target_modules") or []
            return (f"r={conf.get('r')} alpha={conf.get('lora_alpha')} targets="
                    + ",".join(sorted([targets] if isinstance(targets, str) else targets)))
        except (OSError, ValueError, AttributeError) as exc:
            raise ConfigError(f"adapter {parent}: {ADAPTER_CONFIG} is unreadable ({exc})", case=13) from None
    lc = cfg.lora
    return f"r={lc.r} alpha={lc.alpha} targets=" + ",".join(sorted(lc.target_modules))


def next_name(adapters: Path, job_id: str) -> str:
    highest = 0
    if adapters.is_dir():
        for path in adapters.iterdir():
            match = _NUMBERED.match(path.name)
            if match:
                highest = max(highest, int(match.group(1)))
    return f"{highest + 1:04d}-{job_id}"


def _point_latest(adapters: Path, name: str) -> None:
    pointer = adapters / "latest"
    if pointer.is_dir() and not pointer.is_symlink():
        ckpt.quarantine(pointer, adapters, case=None, reason="a folder stood where the latest pointer goes")
    fsio.point_symlink(pointer, name)


def publish_adapter(source: Path, adapters: Path, *, job_id: str, fingerprint: dict[str, Any],
                    step: int, parent: str | None, extra: dict[str, Any] | None = None) -> Path:
    """Copy the adapter files of checkpoint ``source`` into a new numbered folder, sealed with a
    manifest, and point ``latest`` at it. Tensors are checked finite first."""
    from trainconsole.engine.train.guards import assert_finite_file

    assert_finite_file(source / ckpt.ADAPTER_WEIGHTS)
    adapters.mkdir(parents=True, exist_ok=True)
    name = next_name(adapters, job_id)
    with fsio.staged(adapters, name) as staging:
        for file_name in ADAPTER_FILES:
            shutil.copyfile(source / file_name, staging / file_name)
        lineage = {"schema": 1, "job_id": job_id, "parent": parent,
                   "global_step": step, "base": fingerprint, "created_at": round(time.time(), 3),
                   **(extra or {})}
        fsio.write_json(staging / LINEAGE, lineage, durable=False)
        ckpt.publish(staging, adapters / name, kind="adapter", step=step, fingerprint=fingerprint,
                     extra={"job_id": job_id})
    _point_latest(adapters, name)
    return adapters / name
