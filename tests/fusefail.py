"""A read-only FUSE filesystem whose reads fail with a real EIO (case 44), for tests as root.

``python tests/fusefail.py MOUNTPOINT SPEC_JSON`` mounts, prints ``ready`` and serves until the
mount point is unmounted. Files can be read and unlinked, nothing else. SPEC_JSON: ``{"files": {"name": {"text": "...", "fail_from": 0,
"fail_times": -1}}}``: reads at or past byte ``fail_from`` fail with EIO, ``fail_times`` times
(-1: always), so a disk can be bad for good or fail then recover, as a flaky device does.

No libfuse is needed: the kernel's FUSE protocol is spoken directly on ``/dev/fuse`` (struct
layouts from include/uapi/linux/fuse.h, protocol 7.31 replies, which every newer kernel accepts),
and the mount is one mount(2) call naming the descriptor. Files are served with direct I/O, so
every read reaches this process and none is answered from the page cache.
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
import stat
import struct
import sys
import time

LOOKUP, FORGET, GETATTR, UNLINK, OPEN, READ, STATFS, RELEASE = 1, 2, 3, 10, 14, 15, 17, 18
GETXATTR, LISTXATTR, FLUSH, INIT, OPENDIR, READDIR, RELEASEDIR = 22, 23, 25, 26, 27, 28, 29
ACCESS, INTERRUPT, DESTROY, BATCH_FORGET, READDIRPLUS = 34, 36, 38, 42, 44
NO_REPLY = {FORGET, BATCH_FORGET, INTERRUPT}
IN_HEADER = struct.Struct("<IIQQIIII")
OUT_HEADER = struct.Struct("<IiQ")
ATTR = struct.Struct("<QQQQQQIIIIIIIIII")
FOPEN_DIRECT_IO = 1
ROOT = 1


class Files:
    def __init__(self, spec: dict[str, dict[str, object]]) -> None:
        self.inos = {name: i + 2 for i, name in enumerate(spec)}
        self.data = {n: str(v.get("text", "")).encode() for n, v in spec.items()}
        self.fail_from = {n: int(v.get("fail_from", 0)) for n, v in spec.items()}  # type: ignore[call-overload]
        self.fail_times = {n: int(v.get("fail_times", -1)) for n, v in spec.items()}  # type: ignore[call-overload]
        self.now = int(time.time())

    @property
    def names(self) -> list[str]:
        return list(self.inos)

    def ino(self, name: str) -> int:
        return self.inos[name]

    def name(self, ino: int) -> str:
        return next(n for n, i in self.inos.items() if i == ino)

    def attr(self, ino: int) -> bytes:
        if ino == ROOT:
            mode, size, nlink = stat.S_IFDIR | 0o755, 0, 2
        else:
            mode, size, nlink = stat.S_IFREG | 0o644, len(self.data[self.name(ino)]), 1
        return ATTR.pack(ino, size, (size + 511) // 512, self.now, self.now, self.now, 0, 0, 0, mode,
                         nlink, 0, 0, 0, 4096, 0)

    def read(self, ino: int, offset: int, size: int) -> bytes | int:
        name = self.name(ino)
        if offset + size > self.fail_from[name] and self.fail_times[name] != 0:
            self.fail_times[name] -= 1
            return -errno.EIO
        return self.data[name][offset:offset + size]


def handle(files: Files, opcode: int, node: int, body: bytes) -> bytes | int | None:
    if opcode in NO_REPLY:
        return None
    if opcode == INIT:
        major, minor = struct.unpack_from("<II", body)
        return struct.pack("<IIIIHHIIHHI7I", 7, min(minor, 31), 0, 0, 16, 12, 1 << 17, 1, 32, 0, 0,
                           *([0] * 7))
    if opcode == LOOKUP:
        name = body.split(b"\0", 1)[0].decode()
        if node != ROOT or name not in files.names:
            return -errno.ENOENT
        ino = files.ino(name)
        return struct.pack("<QQQQII", ino, 0, 1, 1, 0, 0) + files.attr(ino)
    if opcode == UNLINK:  # the inbox takes a file by moving it: across filesystems, copy + unlink
        name = body.split(b"\0", 1)[0].decode()
        if node != ROOT or files.inos.pop(name, None) is None:
            return -errno.ENOENT
        return b""
    if opcode == GETATTR:
        if node != ROOT and node not in files.inos.values():
            return -errno.ENOENT
        return struct.pack("<QII", 1, 0, 0) + files.attr(node)
    if opcode in (OPEN, OPENDIR):
        return struct.pack("<QII", 0, FOPEN_DIRECT_IO if opcode == OPEN else 0, 0)
    if opcode == READ:
        offset, size = struct.unpack_from("<QQI", body)[1:]
        return files.read(node, offset, size)
    if opcode == READDIR:
        offset, size = struct.unpack_from("<QQI", body)[1:]
        entries = [(ROOT, ".", stat.S_IFDIR), (ROOT, "..", stat.S_IFDIR)]
        entries += [(files.ino(n), n, stat.S_IFREG) for n in files.names]
        out = b""
        for index in range(offset, len(entries)):
            ino, name, kind = entries[index]
            raw = name.encode()
            dirent = struct.pack("<QQII", ino, index + 1, len(raw), kind >> 12) + raw
            dirent += b"\0" * (-len(dirent) % 8)
            if len(out) + len(dirent) > size:
                break
            out += dirent
        return out
    if opcode == STATFS:
        return struct.pack("<QQQQQIIII6I", 1024, 0, 0, len(files.names) + 1, 0, 4096, 255, 4096, 0,
                           *([0] * 6))
    if opcode in (RELEASE, RELEASEDIR, FLUSH, ACCESS, DESTROY):
        return b""
    if opcode in (GETXATTR, LISTXATTR):
        return -errno.ENODATA
    return -errno.ENOSYS


def main(mountpoint: str, spec_text: str) -> int:
    files = Files(json.loads(spec_text)["files"])
    fd = os.open("/dev/fuse", os.O_RDWR)
    libc = ctypes.CDLL(None, use_errno=True)
    options = f"fd={fd},rootmode=40000,user_id=0,group_id=0,allow_other".encode()
    if libc.mount(b"fusefail", mountpoint.encode(), b"fuse", 2 | 4, options) != 0:  # nosuid|nodev
        code = ctypes.get_errno()
        print(f"mount failed: {os.strerror(code)}", flush=True)
        return 1
    print("ready", flush=True)
    while True:
        try:
            request = os.read(fd, (1 << 17) + 4096)
        except OSError as exc:
            if exc.errno == errno.EINTR:
                continue
            return 0  # ENODEV: unmounted
        length, opcode, unique, node = IN_HEADER.unpack_from(request)[:4]
        reply = handle(files, opcode, node, request[IN_HEADER.size:length])
        if reply is None:
            continue
        if isinstance(reply, int):
            os.write(fd, OUT_HEADER.pack(OUT_HEADER.size, reply, unique))
        else:
            try:
                os.write(fd, OUT_HEADER.pack(OUT_HEADER.size + len(reply), 0, unique) + reply)
            except OSError:
                pass  # the request was interrupted meanwhile (ENOENT)
        if opcode == DESTROY:
            return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))
