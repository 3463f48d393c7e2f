"""Names from outside (file names from the inbox, argv, a model folder) made safe to show.

A file name on Linux is bytes; Python hands undecodable bytes over as lone surrogates, and a name
may hold control characters that move a terminal's cursor. Everything the engine prints or puts
in JSON about such a name goes through ``display`` first. The store keeps the exact bytes; this is
only how a name is shown."""

from __future__ import annotations

import os


def display(name: str) -> str:
    """A name safe to print and to put in JSON: invalid bytes and control characters escaped."""
    if name.isprintable() and (name.isascii() or not any(0xDC80 <= ord(c) <= 0xDCFF for c in name)):
        return name  # the common case, without a per-character pass
    raw = os.fsencode(name).decode("utf-8", "backslashreplace")
    return "".join(ch if ch.isprintable() else repr(ch)[1:-1] for ch in raw)
