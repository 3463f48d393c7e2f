"""Durable files: the one way the engine writes, replaces, copies and publishes files and folders,
and the one sweep that removes what a killed writer left behind.

A file is replaced whole: written to a temporary file in the same folder (or in a staging folder
on the same filesystem), fsynced, renamed over the target, and the folder fsynced; a reader sees
the old content or the new, never a mix, and after a power cut the new content is either there
in full or not at all. A folder is built under a staging name beside its final place and renamed
into place, the same way. ``durable=False`` keeps the atomic rename and skips the fsyncs (a
heartbeat rewritten four times a second needs readers to see whole files, not to survive power
loss).

Every temporary name carries its writer's pid, in one scheme::

    .<name>.<pid>.<random>.tmp          a file (``<tag>-<name>.<pid>.<random>.tmp`` in a tmp folder)
    .staging-<name>.<pid>.<random>      a folder being built
    .staging-discard-<name>.<pid>.<random>   a folder on its way out (renamed, then deleted)

so ``sweep`` can tell a dead writer's leftovers from a live writer's work in progress, without
guessing by age. Names of older versions are still recognised: with a pid by that pid, without one
by age (``stale_s``).

Torch-free, and imports nothing of the engine: every layer may use it.
"""

from __future__ import annotations

import contextlib
import errno
import fnmatch
import hashlib
import json
import os
import re
import shutil
import signal
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any, Final

TMP_SUFFIX: Final = ".tmp"
STAGING_PREFIX: Final = ".staging-"
DISCARD_PREFIX: Final = STAGING_PREFIX + "discard-"
# Older names: checkpoint pruning's rename, and the model and token caches' own schemes.
_LEGACY_DISCARD: Final = (STAGING_PREFIX + "pruned-",)
STALE_S: Final = 3600.0
# Tests only: "GLOB=FILE" stops (SIGSTOP) a writer right after it created the temporary file or
# staging folder for a target whose name matches GLOB, having written that temporary's path to
# FILE, so a test can SIGKILL it at exactly that point.
HALT_ENV: Final = "TRAINCONSOLE_FSIO_HALT"

_OURS = re.compile(r"\.(\d+)\.[0-9a-f]{8}(?:\.tmp)?$")
_LEGACY_PID = (
    re.compile(r"^\.staging-.+-(\d+)-[0-9a-f]{8}$"),  # checkpoint and adapter staging
    re.compile(r"^\..+\.staging-(\d+)-[0-9a-f]{8}$"),  # model and token cache staging
    re.compile(r"^store-(\d+)-"),  # the store's copies and sidecars
    re.compile(r"^\..+\.(\d+)\.(?:[0-9a-f]{6}\.)?tmp$"),  # atomic writes (spec, PID file, latest)
)
_LEGACY_AGED = (
    re.compile(r"^\..+\.(?:old|damaged)-[0-9a-f]{8}$"),  # cache folders moved aside
    re.compile(r"^\..+\.tmp$"),  # a temporary named without a pid (mkstemp)
)


# ---------------------------------------------------------------------------------------------
# names


def _suffix() -> str:
    return f".{os.getpid()}.{uuid.uuid4().hex[:8]}"


def temp_name(name: str, tag: str | None = None) -> str:
    """The temporary file's name for a target called ``name``: hidden beside it, or, in a folder
    of temporaries, ``<tag>-<name>`` (a tag says whose they are)."""
    return f"{tag}-{name}{_suffix()}{TMP_SUFFIX}" if tag else f".{name}{_suffix()}{TMP_SUFFIX}"


def writer_pid(name: str) -> int | None:
    """The pid in a temporary or staging name of ours (current or older scheme), else None."""
    match = _OURS.search(name)
    if match and (name.startswith(".") or name.endswith(TMP_SUFFIX)):
        return int(match.group(1))
    for pattern in _LEGACY_PID:
        match = pattern.match(name)
        if match:
            return int(match.group(1))
    return None


def writer_alive(pid: int) -> bool:
    """Whether the process that wrote a temporary may still write to it. A zombie nobody reaped
    (an orphan of a killed daemon waiting for init) writes nothing more: dead."""
    if pid == os.getpid():
        return True
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            state = fh.read().rsplit(b")", 1)[-1].split()[:1]
        return state != [b"Z"]
    except FileNotFoundError:
        return False
    except OSError:
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _halt_point(target_name: str, temp: Path) -> None:
    spec = os.environ.get(HALT_ENV)
    if not spec:
        return
    pattern, _, marker = spec.partition("=")
    if marker and fnmatch.fnmatchcase(target_name, pattern):
        with open(marker, "a") as fh:
            fh.write(f"{temp}\n")
        os.kill(os.getpid(), signal.SIGSTOP)


# ---------------------------------------------------------------------------------------------
# syncing


def fsync_dir(path: Path) -> None:
    """Make the entries of folder ``path`` (a rename, a new file) survive a power cut.

    The one error policy: an error is raised, since a caller that asked for durability must not
    be told it has it when it has not, with two exceptions that are not failures: a folder that
    no longer exists (moved or removed meanwhile: nothing in it is left to make durable), and
    EINVAL or ENOTSUP, with which a filesystem says it does not sync folders at all (some FUSE and
    network mounts; the rename is already as durable as that filesystem makes anything)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except FileNotFoundError:
        return
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP):
            raise
    finally:
        os.close(fd)


def sync_file(fh: IO[bytes] | IO[str]) -> None:
    """Flush an open file to the disk (for writers that stream into a staging folder)."""
    fh.flush()
    os.fsync(fh.fileno())


def sync_tree(folder: Path) -> None:
    """fsync every file under ``folder``, then every folder from the deepest up."""
    folders = [folder]
    for path in sorted(folder.rglob("*")):
        if path.is_symlink():
            continue
        if path.is_dir():
            folders.append(path)
        elif path.is_file():
            with open(path, "rb") as fh:
                os.fsync(fh.fileno())
    for sub in sorted(folders, key=lambda p: len(p.parts), reverse=True):
        fsync_dir(sub)


# ---------------------------------------------------------------------------------------------
# files


def _open_temp(path: Path, tmp_dir: Path | None, tag: str | None) -> tuple[Path, int]:
    folder = path.parent if tmp_dir is None else tmp_dir
    if tmp_dir is not None:
        tmp_dir.mkdir(parents=True, exist_ok=True)
    beside = folder == path.parent  # then hidden, whatever the tag: never mistaken for a real file
    tmp = folder / temp_name(path.name, None if beside else tag)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666)
    _halt_point(path.name, tmp)
    return tmp, fd


def _finish(tmp: Path, fd: int, path: Path, write: Any, *, durable: bool, mode: int | None,
            sync_dir: bool) -> Any:
    try:
        with os.fdopen(fd, "wb") as fh:
            if mode is not None:
                os.fchmod(fh.fileno(), mode)  # exactly this mode, whatever the umask
            result = write(fh)
            if durable:
                sync_file(fh)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    if durable and sync_dir:
        fsync_dir(path.parent)
    return result


def write_bytes(path: Path, data: bytes, *, durable: bool = True, mode: int | None = None,
                tmp_dir: Path | None = None, tag: str | None = None, sync_dir: bool = True) -> None:
    """Replace ``path`` whole with ``data``. ``mode``: the file's exact permission bits (default:
    0666 less the umask). ``tmp_dir`` (same filesystem): where the temporary goes when it must not
    appear beside the target, named ``<tag>-...``. ``sync_dir=False`` leaves the folder's fsync to
    a caller that makes one for a whole batch."""
    tmp, fd = _open_temp(path, tmp_dir, tag)
    _finish(tmp, fd, path, lambda fh: fh.write(data), durable=durable, mode=mode, sync_dir=sync_dir)


def write_json(path: Path, obj: Any, *, durable: bool = True) -> None:
    """``obj`` as indented, key-sorted JSON, replaced whole."""
    write_bytes(path, (json.dumps(obj, indent=1, sort_keys=True) + "\n").encode(), durable=durable)


def write_new(path: Path, data: bytes) -> None:
    """Create ``path`` complete or not at all, and never over a file that appeared meanwhile
    (raises FileExistsError)."""
    tmp, fd = _open_temp(path, None, None)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            sync_file(fh)
        try:
            os.link(tmp, path)  # fails with FileExistsError instead of replacing
        except FileExistsError:
            raise
        except OSError:  # a filesystem without hard links: exclusive create is the next best
            with open(path, "xb") as fh:
                fh.write(data)
                sync_file(fh)
    finally:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
    fsync_dir(path.parent)


def copy_into(src: IO[bytes], dst: Path, *, tmp_dir: Path | None = None, tag: str | None = None,
              sync_dir: bool = True) -> tuple[str, int]:
    """Copy the open file ``src`` to ``dst`` durably. Returns the sha256 and size of exactly what
    was copied (the source may change meanwhile; the hash is of what landed)."""
    tmp, fd = _open_temp(dst, tmp_dir, tag)

    def copy(fout: IO[bytes]) -> tuple[str, int]:
        digest = hashlib.sha256()
        size = 0
        while chunk := src.read(1 << 20):
            digest.update(chunk)
            size += len(chunk)
            fout.write(chunk)
        return digest.hexdigest(), size

    result: tuple[str, int] = _finish(tmp, fd, dst, copy, durable=True, mode=None, sync_dir=sync_dir)
    return result


def point_symlink(link: Path, target: str) -> None:
    """Make ``link`` a symlink to ``target``, replacing what is there atomically (a reader finds
    the old target or the new one, never no link)."""
    tmp = link.with_name(temp_name(link.name))
    os.symlink(target, tmp)
    _halt_point(link.name, tmp)
    try:
        os.replace(tmp, link)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    fsync_dir(link.parent)


def move(src: Path, dst: Path, *, missing_ok: bool = False) -> bool:
    """Rename ``src`` to ``dst`` (replacing it), on one filesystem. With ``missing_ok``, False when
    the source is gone (already moved by an earlier, killed try). The caller fsyncs both folders,
    once for a batch."""
    try:
        os.replace(src, dst)
    except FileNotFoundError:
        if not missing_ok:
            raise
        return False
    return True


# ---------------------------------------------------------------------------------------------
# folders


def new_staging(parent: Path, name: str) -> Path:
    """An empty folder beside the final one (same filesystem, so the rename is atomic)."""
    parent.mkdir(parents=True, exist_ok=True)
    staging = parent / f"{STAGING_PREFIX}{name}{_suffix()}"
    staging.mkdir()
    _halt_point(name, staging)
    return staging


def is_discarded(name: str) -> bool:
    """A folder ``discard`` was deleting when it was killed: no longer anyone's."""
    return name.startswith((DISCARD_PREFIX, *_LEGACY_DISCARD))


def discard(path: Path) -> None:
    """Delete a folder (or file) so that a kill midway leaves a name the sweep removes, never a
    half-emptied folder under its real name."""
    doomed = path.with_name(f"{DISCARD_PREFIX}{path.name.lstrip('.')}{_suffix()}")
    os.rename(path, doomed)
    _halt_point(path.name, doomed)
    _remove(doomed)


def publish_dir(staging: Path, final: Path, *, durable: bool = True) -> None:
    """Rename a finished staging folder to ``final``; whatever stood there is discarded. The
    folder's contents must already be synced (``sync_tree``) where durability matters."""
    aside: Path | None = None
    if final.exists() or final.is_symlink():
        aside = final.with_name(f"{DISCARD_PREFIX}{final.name.lstrip('.')}{_suffix()}")
        os.rename(final, aside)
    os.rename(staging, final)
    if durable:
        fsync_dir(final.parent)
    if aside is not None:
        _remove(aside)


def publish_new_dir(staging: Path, final: Path) -> None:
    """Rename a finished, synced staging folder to ``final``, which must not exist yet: an export
    never replaces what stands there (FileExistsError; a non-empty folder that appears in between
    makes the rename itself fail). Then the parent is synced."""
    if final.exists() or final.is_symlink():
        raise FileExistsError(errno.EEXIST, "already exists", str(final))
    os.rename(staging, final)
    fsync_dir(final.parent)


@contextlib.contextmanager
def staged(parent: Path, name: str) -> Iterator[Path]:
    """A staging folder that is removed if the block fails (a kill is left to ``sweep``)."""
    staging = new_staging(parent, name)
    try:
        yield staging
    finally:
        if staging.exists():
            _remove(staging)


# ---------------------------------------------------------------------------------------------
# the sweep


def _remove(path: Path) -> bool:
    try:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()
        return True
    except FileNotFoundError:
        return True
    except OSError:
        return False


def is_leftover(name: str, age_s: float, *, stale_s: float = STALE_S, every_name: bool = False) -> bool:
    """Whether an entry called ``name``, last changed ``age_s`` ago, is a dead writer's leftover:
    a name of ours whose writer is gone; an older pid-less temporary name past ``stale_s``; or,
    with ``every_name`` (a folder that only ever holds temporaries), anything past ``stale_s``."""
    pid = writer_pid(name)
    if pid is not None:
        return not writer_alive(pid) or (every_name and age_s > stale_s)
    if every_name or any(p.match(name) for p in _LEGACY_AGED):
        return age_s > stale_s
    return False


def sweep(folder: Path, *, only: str | None = None, stale_s: float = STALE_S,
          every_name: bool = False) -> list[Path]:
    """Remove the leftovers of dead writers in ``folder`` (not below it): temporary files and
    staging folders whose writer's pid is gone, and pid-less older ones by age (see
    ``is_leftover``). ``only``: just entries whose name starts with it (a folder that is the
    operator's, such as the config's). Never raises; returns what it removed."""
    removed: list[Path] = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    now = time.time()
    for entry in entries:
        if only is not None and not entry.name.startswith(only):
            continue
        try:
            age = now - entry.stat(follow_symlinks=False).st_mtime
        except OSError:
            continue
        if is_leftover(entry.name, age, stale_s=stale_s, every_name=every_name):
            path = Path(entry.path)
            if _remove(path):
                removed.append(path)
    return removed
