"""The inbox: ``queue/incoming/`` (normal priority), ``incoming/high/`` and ``incoming/low/``.

Whatever a user or a filesystem puts there, a scan never hangs, never leaves the queue folder,
never loses or doubles a file:

- entries are examined with ``lstat`` only; FIFOs, sockets and devices are never opened (opening a
  FIFO for reading blocks until a writer appears), so they are passed over with one notice;
- a symlink is followed only when its fully resolved target is a regular file inside the queue
  folder; a loop (``ELOOP``) or a target outside is refused with one notice (case 54);
- any name works (spaces, quotes, newlines, a leading dash, bytes that are not UTF-8): names stay
  ``str`` with surrogate escapes end to end, no shell is ever involved, and the engine's copy gets
  a sanitised name (case 55);
- a file is taken only once its size, mtime and inode have stayed the same for ``queue.stable_s``
  (measured on the monotonic clock, so a wall-clock jump neither rushes nor stalls it) and, on
  Linux, no process has it open for writing; hidden names (``.name``, how rsync and editors stage
  a transfer) are passed over in silence;
- a name not ending in ``.jsonl`` is left in place with one notice per file, not one per scan (56);
- a file is hashed a slice per scan (``hash_budget_s``), so a huge or sparse file never stalls the
  daemon's loop;
- the files ready in one scan are taken as one batch (``trainconsole.engine.store.add``): each is renamed into
  ``jobs/`` (copied, fsynced and renamed across filesystems, or when it is a link or hard link)
  via the store's intent record, so a kill at any instant is completed or undone at the next open, and
  the user deleting or moving their file afterwards changes nothing (51, 52);
- the same name twice makes two jobs; the same content twice makes one, with a notice, unless
  ``queue.dedupe`` is off (53);
- a sidecar ``NAME.toml`` beside ``NAME.jsonl`` holds that job's own settings (the sections of
  ``trainconsole add --settings``): it is taken with its data file (and must be as settled), and a
  sidecar alone waits for its file, silently. A bad sidecar fails that job alone, at once, naming
  the key; the sidecar is kept beside the failed job's report as ``<file>.settings.toml``. The duplicate stays in the inbox for the operator to delete or
  force with ``trainconsole add --force``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import os
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trainconsole.engine import fsio
from trainconsole.engine.config import Config
from trainconsole.engine.errors import ErrorClass, TrainconsoleError
from trainconsole.engine.events import EventLog, NullEventLog
from trainconsole.engine.layout import Layout
from trainconsole.engine.names import display
from trainconsole.engine.store import Experiment, Job, Store
from trainconsole.engine.store import files as sf
from trainconsole.engine.store.add import NewFile

_PRIORITY_DIRS = ("normal", "high", "low")


@dataclass
class _Seen:
    sig: tuple[int, int, int, int]  # size, mtime_ns, inode, device
    since: float  # monotonic time the signature was first seen
    settled: bool = False  # a decision was made (refused, duplicate): wait for a change
    digest: Any = None  # a hash in progress, carried across scans for a large file
    offset: int = 0


class Inbox:
    """Remembers, between scans, what each file looked like and what it has been told about, so
    stability is measured and notices are given once."""

    def __init__(self, layout: Layout, clock: Callable[[], float] = time.monotonic,
                 hash_budget_s: float = 0.25, hash_budget_bytes: int | None = None) -> None:
        """Hashing is spread over scans, at most ``hash_budget_s`` (and ``hash_budget_bytes``) per
        scan, so a huge file (a sparse terabyte costs the same to read) never stalls the daemon's
        loop: commands, heartbeats and the watchdog keep their pace."""
        self.layout = layout
        self.clock = clock
        self.hash_budget_s = hash_budget_s
        self.hash_budget_bytes = hash_budget_bytes
        self._time_left = 0.0
        self._budget_left = 0
        self._seen: dict[str, _Seen] = {}
        self._noticed: set[tuple[str, str]] = set()
        self._cfg: Config | None = None

    def scan(self, store: Store, stable_s: float = 1.0, dedupe: bool = True,
             events: EventLog | None = None, cfg: Config | None = None) -> list[Job]:
        """``cfg``: with it, each job's settings are fixed as it is taken (config.toml's per-job
        sections and its sidecar); without it, the job reads config.toml when it runs."""
        events = events or NullEventLog()
        self._cfg = cfg
        self._time_left = self.hash_budget_s  # time spent reading, not moving: many small files
        self._budget_left = self.hash_budget_bytes if self.hash_budget_bytes is not None else 1 << 62
        root = os.path.realpath(self.layout.queue)
        present: set[str] = set()
        taken: list[Job] = []
        candidates: list[tuple[str, NewFile]] = []
        for priority in _PRIORITY_DIRS:
            folder = self.layout.incoming_for(priority)
            real = os.path.realpath(folder)
            if os.path.commonpath([root, real]) != root:
                # A priority folder replaced by a link to elsewhere would make us move other
                # people's files into the queue: refuse it.
                self._notice(events, str(folder), "folder-outside", 54,
                             f"inbox folder {folder} leads outside the queue folder (to {real}); not "
                             "scanned (make it a plain folder)")
                present.add(str(folder))
                continue
            try:
                entries = list(os.scandir(folder))
            except FileNotFoundError:
                continue
            except OSError as exc:
                self._notice(events, str(folder), "unreadable", None,
                             f"inbox folder {folder} cannot be read ({exc.strerror}); check its permissions")
                continue
            ready = []
            for entry in entries:
                present.add(entry.path)
                candidate = self._consider(entry, priority, root, stable_s, events)
                if candidate is not None:
                    ready.append(candidate)
            # Taken by name, not in the folder's own order: files dropped together (01-, 02-,
            # ...) become jobs, and so run, in the order their names give.
            candidates += sorted(ready, key=lambda candidate: candidate[0])
        if candidates:
            taken = self._take(store, candidates, dedupe, events)
        for gone in set(self._seen) - present:
            del self._seen[gone]
        self._noticed = {n for n in self._noticed if n[0] in present}
        return taken

    def _take(self, store: Store, candidates: list[tuple[str, NewFile]], dedupe: bool,
              events: EventLog) -> list[Job]:
        """All files ready in this scan, taken as one batch; then each outcome told once."""
        taken: list[Job] = []
        candidates, bad = self._experiments(store, candidates)
        results = store.add_files([c[1] for c in candidates], force=not dedupe)
        for (path, f), result in zip(candidates, results, strict=True):
            shown = display(path)
            seen = self._seen.get(path)
            if result.error is not None:
                exc = result.error
                self._seen.pop(path, None)
                if isinstance(exc, TrainconsoleError):
                    self._notice(events, path, "error", exc.case, exc.message)
                else:
                    if seen is not None:
                        seen.settled = True
                    reason = exc.strerror if isinstance(exc, OSError) else str(exc)
                    self._notice(events, path, "unmovable", 50, f"{shown} cannot be moved into the queue "
                                 f"({reason}); left where it is (check the inbox folder's permissions)")
                continue
            if result.job is None:
                if seen is not None:
                    seen.settled = True
                dup = store.duplicate_of(f.sha256)
                what = f"{dup.id} ({dup.status})" if dup else "a job being added"
                self._notice(events, path, "dup", 53, f"{shown} has the same content as {what}; not "
                             "queued again (use `trainconsole add --force FILE` to queue a second copy)",
                             severity="info")
                continue
            if not f.move:
                try:
                    os.unlink(path)  # the content is now the engine's own copy; the link has served
                except OSError:
                    if seen is not None:
                        seen.settled = True
                    continue
            self._seen.pop(path, None)
            job = result.job
            sidecar = _sidecar(path)
            if path in bad:
                # Queued to be failed at once: the operator sees the job, its report and the key.
                report_copy = self.layout.failed / f"{job.path.name}.settings.toml"
                self.layout.failed.mkdir(parents=True, exist_ok=True)
                with contextlib.suppress(OSError):
                    fsio.move(Path(sidecar), report_copy)
                job = store.fail_attempt(job.id, ErrorClass.CONFIG, f"{display(str(sidecar))}: {bad[path]} "
                                         f"(kept as {report_copy}; fix it and add the file again)")
            else:
                with contextlib.suppress(OSError):
                    os.unlink(sidecar)  # its settings are the job's now
            taken.append(job)
        return taken

    def _experiments(self, store: Store, candidates: list[tuple[str, NewFile]]
                     ) -> tuple[list[tuple[str, NewFile]], dict[str, str]]:
        """Each file's settings fixed now; a sidecar that fails its check marks that file alone."""
        if self._cfg is None:
            return candidates, {}
        from trainconsole.engine.store.experiments import Request, plan

        jobs = store.jobs()
        out, bad = [], {}
        for path, f in candidates:
            sidecar = _sidecar(path)
            request = Request(sidecar=Path(sidecar) if os.path.isfile(sidecar) else None, cwd=self.layout.incoming)
            try:
                (experiment,) = plan(self._cfg, self.layout, jobs, request, stem=Path(f.name).stem)
            except TrainconsoleError as exc:
                bad[path] = exc.message
                experiment = Experiment()
            out.append((path, dataclasses.replace(f, experiment=experiment)))
        return out, bad

    def _consider(self, entry: os.DirEntry[str], priority: str, root: str, stable_s: float,
                  events: EventLog) -> tuple[str, NewFile] | None:
        path = entry.path
        name = entry.name
        shown = display(path)
        try:
            st = entry.stat(follow_symlinks=False)
        except FileNotFoundError:
            return None  # gone between listing and looking
        if name in ("high", "low") and Path(path).parent == self.layout.incoming:
            return None  # a priority folder: scanned in its own right (or refused, if a link out)
        if name.startswith("."):
            return None  # hidden: by convention a transfer in progress (rsync, editors); not ours
        if stat.S_ISDIR(st.st_mode):
            self._notice(events, path, "dir", 56, f"{shown}: a folder in the inbox is not scanned; "
                         "put .jsonl files directly in incoming/, incoming/high/ or incoming/low/")
            return None
        link = stat.S_ISLNK(st.st_mode)
        target: str | None = None
        if link:
            target = self._resolve(path, root, shown, events)
            if target is None:
                return None
            try:
                st = os.stat(target)
            except OSError:
                return None
        if not stat.S_ISREG(st.st_mode):
            kind = ("a FIFO" if stat.S_ISFIFO(st.st_mode) else "a socket" if stat.S_ISSOCK(st.st_mode)
                    else "a device" if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode) else "not a file")
            self._notice(events, path, "special", None, f"{shown} is {kind}; ignored (never opened)")
            return None
        if name.lower().endswith(".toml"):
            return None  # a sidecar: taken with its NAME.jsonl; alone, it waits for it
        if not name.lower().endswith(".jsonl"):
            self._notice(events, path, "ext", 56, f"{shown} does not end in .jsonl; left where it is "
                         "(rename it to NAME.jsonl to queue it)")
            return None
        sig = (st.st_size, st.st_mtime_ns, st.st_ino, st.st_dev)
        now = self.clock()
        seen = self._seen.get(path)
        if seen is None or seen.sig != sig:
            self._seen[path] = _Seen(sig, now)
            if stable_s > 0:
                return None  # just appeared or still changing: look again next scan
            seen = self._seen[path]
        if seen.settled or now - seen.since < stable_s:
            return None
        source = Path(target if target is not None else path)
        try:
            hashed = self._hash(source, sig, seen)
            if hashed is None:
                return None  # a large file, hashed over several scans
            sha, size, same = hashed
        except FileNotFoundError:
            return None  # deleted between the look and the read (case 51): nothing to do
        except OSError as exc:
            if exc.errno not in (errno.EACCES, errno.EPERM):
                # EIO and its kin: the disk, not the file. The scan backs off (case 44) and the
                # file is read again from its start when it is due, never skipped for good.
                seen.digest, seen.offset = None, 0
                raise
            seen.settled = True
            self._notice(events, path, "unreadable", 50, f"{shown} cannot be read ({exc.strerror}); "
                         "left where it is (check its permissions)")
            return None
        if not same:
            self._seen[path] = _Seen((size, 0, 0, 0), now)  # changed while we read it: wait again
            return None
        if not _sidecar_settled(_sidecar(path), stable_s):
            return None  # its settings are still being written: the file waits with them
        # A hard link shares its inode with a file elsewhere that may be edited later: copy it.
        copy = link or st.st_nlink > 1
        return path, NewFile(name, source if link else Path(path), sha, size, priority, move=not copy)

    def _resolve(self, path: str, root: str, shown: str, events: EventLog) -> str | None:
        try:
            target = os.path.realpath(path, strict=True)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                self._notice(events, path, "loop", 54, f"{shown} is a symlink loop; ignored")
            else:
                self._notice(events, path, "dangling", 54, f"{shown} is a symlink to nothing; ignored")
            return None
        if os.path.commonpath([root, target]) != root:
            self._notice(events, path, "outside", 54, f"{shown} is a symlink to {display(target)}, "
                         "outside the queue folder; not followed (copy the file in, or use "
                         "`trainconsole add`)")
            return None
        return target

    def _hash(self, path: Path, sig: tuple[int, int, int, int], seen: _Seen
              ) -> tuple[str, int, bool] | None:
        """Continue hashing through a descriptor opened without following links and without
        blocking; None while unfinished. The result says whether it is still the very file
        examined, unchanged, and not open for writing."""
        import hashlib

        flags = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
        fd = os.open(path, flags)  # an unreadable file raises: the caller tells the operator
        try:
            st = os.fstat(fd)
            now_sig = (st.st_size, st.st_mtime_ns, st.st_ino, st.st_dev)
            if not stat.S_ISREG(st.st_mode) or now_sig != sig or _open_for_writing(fd):
                seen.digest, seen.offset = None, 0
                return "", st.st_size, False
            if seen.digest is None:
                seen.digest, seen.offset = hashlib.sha256(), 0
            os.lseek(fd, seen.offset, os.SEEK_SET)
            while True:
                if self._budget_left <= 0 or self._time_left <= 0:
                    return None
                began = time.monotonic()
                chunk = os.read(fd, min(1 << 20, max(1, self._budget_left)))
                if not chunk:
                    break
                seen.digest.update(chunk)
                seen.offset += len(chunk)
                self._budget_left -= len(chunk)
                self._time_left -= time.monotonic() - began
            after = os.fstat(fd)
        finally:
            os.close(fd)
        digest, size = seen.digest, seen.offset
        seen.digest, seen.offset = None, 0
        same = (after.st_size, after.st_mtime_ns, after.st_ino, after.st_dev) == sig and size == sig[0]
        return str(digest.hexdigest()), size, same

    def _notice(self, events: EventLog, path: str, kind: str, case: int | None, message: str,
                severity: str = "warning") -> None:
        key = (path, kind)
        if key in self._noticed:
            return
        self._noticed.add(key)
        events.alert(case, message, severity=severity, key=f"inbox-{kind}-{sf.name_to_hex(path)[:64]}")


def _sidecar(path: str) -> str:
    """``NAME.toml`` beside ``NAME.jsonl``."""
    base, _ = os.path.splitext(path)
    return base + ".toml"


def _sidecar_settled(path: str, stable_s: float) -> bool:
    """No sidecar, or one unchanged for ``stable_s`` (by its mtime: it is small, never hashed)."""
    try:
        st = os.stat(path)
    except OSError:
        return True
    return time.time() - st.st_mtime >= stable_s


_LEASE_PROBE: bool | None = None


def _open_for_writing(fd: int) -> bool:
    """Whether any process holds the file open for writing (Linux): a read lease is refused with
    EAGAIN exactly then. This catches a slow copy that pauses longer than ``queue.stable_s``.

    A lease held when a writer opens the file makes the kernel send us SIGIO, whose default action
    ends the process; the lease is dropped at once, and SIGIO is ignored first. Where that cannot
    be done (not the main thread, not Linux), the stability wait alone decides."""
    global _LEASE_PROBE
    import fcntl

    setlease = getattr(fcntl, "F_SETLEASE", None)
    if setlease is None:
        return False
    if _LEASE_PROBE is None:
        import signal
        import threading

        _LEASE_PROBE = False
        if threading.current_thread() is threading.main_thread() and hasattr(signal, "SIGIO"):
            try:
                if signal.getsignal(signal.SIGIO) in (signal.SIG_DFL, signal.SIG_IGN):
                    signal.signal(signal.SIGIO, signal.SIG_IGN)
                    _LEASE_PROBE = True
            except (ValueError, OSError):
                pass
    if not _LEASE_PROBE:
        return False
    try:
        fcntl.fcntl(fd, setlease, fcntl.F_RDLCK)
    except OSError as exc:
        return exc.errno == errno.EAGAIN  # EACCES, EINVAL (not ours, NFS, ...): cannot tell
    fcntl.fcntl(fd, setlease, fcntl.F_UNLCK)
    return False


_INBOXES: dict[Path, Inbox] = {}


def scan(layout: Layout, store: Store, cfg: Config, events: EventLog | None = None) -> list[Job]:
    """One look at the inbox; returns the jobs taken. Call it every ``queue.poll_s``: state kept
    between calls (per queue folder, in this process) is what makes the stability wait and the
    one-notice-per-file rule work."""
    inbox = _INBOXES.get(layout.queue)
    if inbox is None:
        inbox = _INBOXES[layout.queue] = Inbox(layout)
    queue_cfg = getattr(cfg, "queue", cfg)
    return inbox.scan(store, stable_s=float(getattr(queue_cfg, "stable_s", 1.0)),
                      dedupe=bool(getattr(queue_cfg, "dedupe", True)), events=events,
                      cfg=cfg if isinstance(cfg, Config) else None)
