"""Checkpoints that are never half-written, and the scan that only trusts verified ones.

A checkpoint is written into a staging folder beside its final place; every file is fsynced; a
manifest (file sizes and sha256, global step, base-model fingerprint, format version) is written
LAST; the folder is renamed into place and the parent directory fsynced. A reader starts from the
manifest, so a folder without one was never finished. The same protocol publishes adapters.

Resume scans ``checkpoint-N`` folders newest to oldest and takes the first whose manifest
verifies and which holds optimizer, scheduler and RNG state (a folder with weights alone would
"resume" with a fresh optimizer and schedule). Everything rejected on the way is moved to
``quarantine/`` (never deleted: it may be the only copy of someone's work) with an alert naming
the memo case: empty (15), trainer state missing (16) or corrupt (17), another base model (18),
unknown format (19), partial or damaged (20), negative step (62).

Torch-free: the daemon and the console may read checkpoints without paying for torch.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import time
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from trainconsole.engine import fsio
from trainconsole.engine.events import EventLog

FORMAT_VERSION: Final = 1
MANIFEST: Final = "manifest.json"
PREFIX: Final = "checkpoint-"
QUARANTINE: Final = "quarantine"
TRAINER_STATE: Final = "trainer_state.json"
ADAPTER_WEIGHTS: Final = "adapter_model.safetensors"
# What a resume needs besides the weights: without these the Trainer silently restarts the
# optimizer and the schedule, or draws a different data order.
RESUME_FILES: Final = (TRAINER_STATE, "optimizer.pt", "scheduler.pt", "rng_state.pth")
# "lora" (the adapter's shape) is present in checkpoints only; adapters carry the base's keys.
FINGERPRINT_KEYS: Final = ("name", "revision", "config_sha256", "layers", "hidden", "vocab", "lora")

_NAME_RE: Final = re.compile(r"^checkpoint-(-?\d+)$")


@dataclass(frozen=True)
class Checkpoint:
    """A verified checkpoint: safe to resume from."""

    path: Path
    step: int
    manifest: dict[str, Any] = field(default_factory=dict)

    @property
    def extra(self) -> dict[str, Any]:
        value = self.manifest.get("extra")
        return value if isinstance(value, dict) else {}


@dataclass(frozen=True)
class Rejection:
    """Why a folder cannot be used, with the memo case it is."""

    path: Path
    case: int
    reason: str


# ---------------------------------------------------------------------------------------------
# hashing


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# ---------------------------------------------------------------------------------------------
# writing


def _file_table(folder: Path) -> dict[str, dict[str, Any]]:
    table: dict[str, dict[str, Any]] = {}
    for path in sorted(folder.rglob("*")):
        if path.is_file() and path.name != MANIFEST:
            rel = path.relative_to(folder).as_posix()
            table[rel] = {"size": path.stat().st_size, "sha256": sha256_file(path)}
    return table


def publish(
    staging: Path,
    final: Path,
    *,
    kind: str,
    step: int,
    fingerprint: Mapping[str, Any],
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Seal ``staging`` with its manifest and rename it to ``final``. A folder already at
    ``final`` is quarantined first (never deleted). Returns the manifest."""
    if step < 0:
        raise ValueError(f"refusing to publish {final.name} with a negative step {step}")
    fsio.sync_tree(staging)
    files = _file_table(staging)
    manifest: dict[str, Any] = {
        "kind": kind,
        "global_step": int(step),
        "fingerprint": dict(fingerprint),
        "files": files,
        "extra": dict(extra or {}),
        "written_at": round(time.time(), 3),
        # Written last within the manifest and the manifest last within the folder: a reader that
        # finds this key found a finished checkpoint.
        "format_version": FORMAT_VERSION,
    }
    fsio.write_json(staging / MANIFEST, manifest)
    if final.exists() or final.is_symlink():
        quarantine(final, final.parent, case=None, reason="replaced by a newer save of the same step")
    fsio.publish_dir(staging, final)
    return manifest


# ---------------------------------------------------------------------------------------------
# reading and verifying


def step_of(path: Path) -> int | None:
    match = _NAME_RE.match(path.name)
    return int(match.group(1)) if match else None


def fingerprint_diff(want: Mapping[str, Any], got: Mapping[str, Any]) -> list[str]:
    """Human-readable differences between two base-model fingerprints (empty when they match)."""
    diffs = []
    for key in FINGERPRINT_KEYS:
        if want.get(key) != got.get(key):
            diffs.append(f"{key}: expected {want.get(key)!r}, found {got.get(key)!r}")
    return diffs


def _read_json(path: Path) -> Any:
    return json.loads(path.read_bytes())


def _state_problem(folder: Path) -> tuple[int, str] | None:
    """Checks trainer_state.json on its own: missing (16), unreadable (17), negative step (62)."""
    state_path = folder / TRAINER_STATE
    if not state_path.is_file():
        return 16, f"{TRAINER_STATE} is missing, so its global step is unknown"
    try:
        state = _read_json(state_path)
    except (OSError, ValueError) as exc:
        return 17, f"{TRAINER_STATE} is not valid JSON ({exc.__class__.__name__}: {exc})"
    if not isinstance(state, dict) or not isinstance(state.get("global_step"), int) \
            or isinstance(state.get("global_step"), bool):
        return 17, f"{TRAINER_STATE} has no integer global_step"
    if state["global_step"] < 0:
        return 62, f"{TRAINER_STATE} has a negative global_step ({state['global_step']})"
    return None


def verify(
    folder: Path,
    *,
    fingerprint: Mapping[str, Any] | None,
    require: Iterable[str] = (*RESUME_FILES, ADAPTER_WEIGHTS),
    check_hashes: bool = True,
) -> Checkpoint | Rejection:
    """Judge one checkpoint folder. ``fingerprint`` None skips the base-model comparison."""
    require = tuple(require)
    try:
        if not folder.is_dir():
            return Rejection(folder, 20, "not a folder")
        entries = list(folder.iterdir())
    except OSError as exc:
        return Rejection(folder, 20, f"unreadable ({exc})")
    if not entries:
        return Rejection(folder, 15, "the folder is empty")
    name_step = step_of(folder)
    if name_step is not None and name_step < 0:
        return Rejection(folder, 62, f"the folder name says step {name_step}, a negative step")
    manifest_path = folder / MANIFEST
    if not manifest_path.is_file():
        problem = _state_problem(folder) if TRAINER_STATE in require else None
        if problem is not None:
            return Rejection(folder, *problem)
        empty = sorted(p.name for p in entries if p.is_file() and p.stat().st_size == 0)
        missing = [name for name in require if not (folder / name).is_file()]
        if empty or missing:
            what = ", ".join([*(f"{n} is empty" for n in empty), *(f"{n} is missing" for n in missing)])
            return Rejection(folder, 20, f"no {MANIFEST} and {what}: the save did not finish")
        return Rejection(folder, 19, f"no {MANIFEST}: written by an older version or another tool, so "
                                     "its contents cannot be verified")
    try:
        manifest = _read_json(manifest_path)
    except (OSError, ValueError) as exc:
        return Rejection(folder, 20, f"{MANIFEST} is unreadable ({exc.__class__.__name__})")
    if not isinstance(manifest, dict):
        return Rejection(folder, 20, f"{MANIFEST} is not a JSON object")
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        return Rejection(folder, 19, f"format version {version!r}; this version of trainconsole reads "
                                     f"{FORMAT_VERSION}")
    if fingerprint is not None:
        got = manifest.get("fingerprint")
        diffs = fingerprint_diff(fingerprint, got if isinstance(got, dict) else {})
        if diffs:
            return Rejection(folder, 18, "trained on another base model (" + "; ".join(diffs) + ")")
    step = manifest.get("global_step")
    if not isinstance(step, int) or isinstance(step, bool):
        return Rejection(folder, 20, f"{MANIFEST} has no integer global_step")
    if step < 0:
        return Rejection(folder, 62, f"{MANIFEST} records a negative global step ({step})")
    files = manifest.get("files")
    if not isinstance(files, dict):
        return Rejection(folder, 20, f"{MANIFEST} lists no files")
    if TRAINER_STATE in files or TRAINER_STATE in require:
        problem = _state_problem(folder)
        if problem is not None:
            return Rejection(folder, *problem)
        state_step = _read_json(folder / TRAINER_STATE)["global_step"]
        if state_step != step:
            return Rejection(folder, 17, f"{TRAINER_STATE} says step {state_step}, the manifest {step}")
    if name_step is not None and name_step != step:
        return Rejection(folder, 20, f"the folder name says step {name_step}, the manifest {step}")
    # Under torchrun the RNG state is saved per rank (rng_state_0.pth, ...).
    absent = [name for name in require if name not in files and not (
        name == "rng_state.pth" and any(re.fullmatch(r"rng_state_\d+\.pth", f) for f in files))]
    if absent:
        return Rejection(folder, 20, "saved without " + ", ".join(absent)
                         + ": resuming would silently restart that state")
    for rel, want in sorted(files.items()):
        path = folder / rel
        if not isinstance(want, dict) or Path(rel).is_absolute() or ".." in Path(rel).parts:
            return Rejection(folder, 20, f"{MANIFEST} entry for {rel!r} is malformed")
        try:
            size = path.stat().st_size
        except OSError:
            return Rejection(folder, 16 if rel == TRAINER_STATE else 20, f"{rel} is missing")
        if size != want.get("size"):
            return Rejection(folder, 17 if rel == TRAINER_STATE else 20,
                             f"{rel} has {size} bytes, the manifest says {want.get('size')} (partial write)")
        try:
            digest = sha256_file(path) if check_hashes else want.get("sha256")
        except OSError as exc:
            return Rejection(folder, 20, f"{rel} is unreadable ({exc.__class__.__name__})")
        if digest != want.get("sha256"):
            return Rejection(folder, 17 if rel == TRAINER_STATE else 20,
                             f"{rel} does not match its recorded sha256 (corrupted)")
    return Checkpoint(folder, step, manifest)


def list_checkpoints(root: Path) -> list[tuple[int, Path]]:
    """``checkpoint-N`` entries under ``root``, newest (highest N) first."""
    if not root.is_dir():
        return []
    found = []
    for path in root.iterdir():
        step = step_of(path)
        if step is not None:
            found.append((step, path))
    return sorted(found, key=lambda item: item[0], reverse=True)


def quarantine(path: Path, root: Path, *, case: int | None, reason: str) -> Path:
    """Move ``path`` into ``root/quarantine/`` with a note saying why. Never deletes."""
    qdir = root / QUARANTINE
    qdir.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
    dest = qdir / f"{path.name.lstrip('.')}.{stamp}.{uuid.uuid4().hex[:6]}"
    fsio.move(path, dest)
    note = {"original": str(path), "case": case, "reason": reason, "at": round(time.time(), 3)}
    fsio.write_json(qdir / f"{dest.name}.why.json", note, durable=False)
    fsio.fsync_dir(root)
    return dest


def scan(
    root: Path,
    *,
    fingerprint: Mapping[str, Any] | None,
    events: EventLog | None = None,
    job_id: str | None = None,
    quarantine_bad: bool = True,
) -> tuple[Checkpoint | None, list[Rejection]]:
    """The newest checkpoint under ``root`` that verifies. Bad ones met on the way, and staging
    folders a killed save left behind, are quarantined with an alert each (unless
    ``quarantine_bad`` is off: the other ranks of a distributed job only read)."""
    rejected: list[Rejection] = []
    if not root.is_dir():
        return None, rejected
    for leftover in sorted(root.glob(fsio.STAGING_PREFIX + "*")):
        if fsio.is_discarded(leftover.name):
            shutil.rmtree(leftover, ignore_errors=True)  # an old checkpoint a kill interrupted deleting
            continue
        rejected.append(Rejection(leftover, 20, "a save that was interrupted before its manifest"))
    chosen: Checkpoint | None = None
    for _, path in list_checkpoints(root):
        verdict = verify(path, fingerprint=fingerprint)
        if isinstance(verdict, Checkpoint):
            chosen = verdict
            break
        rejected.append(verdict)
    for bad in rejected if quarantine_bad else []:
        dest = quarantine(bad.path, root, case=bad.case, reason=bad.reason)
        if events is not None:
            events.alert(bad.case, f"checkpoint {bad.path.name} skipped: {bad.reason}; moved to "
                                   f"{dest.relative_to(root.parent)}", severity="warning",
                         job_id=job_id, key=f"ckpt-{bad.path.name}")
    return chosen, rejected


def prune(root: Path, *, keep_last: int, keep_steps: Iterable[int] = ()) -> list[Path]:
    """Remove older verified-at-write checkpoints beyond the newest ``keep_last`` (and any step in
    ``keep_steps``, e.g. the best one). Only our own finished checkpoints are deleted."""
    keep = set(keep_steps)
    removed = []
    for index, (step, path) in enumerate(list_checkpoints(root)):
        if index < keep_last or step in keep or not (path / MANIFEST).is_file():
            continue
        # Discarded, not deleted in place: a kill mid-delete leaves a staging folder (swept),
        # never a half-emptied checkpoint-N that a later scan would have to quarantine.
        fsio.discard(path)
        removed.append(path)
    return removed
