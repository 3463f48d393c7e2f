"""An event log read newest part first, so a console opened on a long run shows the present at once.

A job that has trained for 100k steps has a log of about 20 MB. Read from the start in 4 MB bites,
the console's panels lagged seconds behind on a cold start, and the plot redrew a growing history
each time. Here the first read takes only the last ``window`` bytes (a few hundred KB: the newest
thousand steps and alerts), and from then on the reader follows new lines as they are written
(``EventTail``, which also follows a rotation of the file: see its docstring). The older part is
read on later polls in bites of ``chunk`` bytes walking back towards the start, each bite handed
back on its own, so the caller builds it apart and puts it in front of what it shows
(``LossSeries.absorb_older``): the plot fills in from right to left, and the newest alerts come
first, so a long run's old ones never churn the alert panel. Each poll's work is bounded by
``chunk`` and the live rate, never by the log's length.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from trainconsole.engine.events import EventTail

WINDOW = 256 << 10
CHUNK = 2 << 20

Events = list[dict[str, Any]]


class TailFirst:
    def __init__(self, path: Path, window: int = WINDOW, chunk: int = CHUNK) -> None:
        self.path = path
        self.live = EventTail.from_end(path, window)
        self.chunk = chunk
        self.older_end: int | None = None  # the part of the log not read yet ends here
        self.bite_at_start = False  # the last bite handed back began at the log's first line
        self.older_bytes_read = 0

    @property
    def backfilling(self) -> bool:
        """The older part is still (or not yet known to be) to be read."""
        return self.older_end is None or self.older_end > 0

    @property
    def bytes_read(self) -> int:
        return self.live.bytes_read + self.older_bytes_read

    def read(self, with_older: bool = True) -> tuple[Events, Events]:
        """(new events, the next older bite, in log order). The first call reads only the newest
        window; ``with_older=False`` reads only what is new (a log nobody looks at closely need
        not have its history read)."""
        new = self.live.read_new()
        if self.older_end is None:
            if self.live.began_at is not None:
                self.older_end = self.live.began_at
            return new, []  # the first look shows the present: the history follows
        if not with_older or not self.older_end:
            return new, []
        start = max(0, self.older_end - self.chunk)
        bite = EventTail(self.path, start, self.older_end - start + 1, stop=self.older_end, align=True)
        bite.identity, bite.head = self.live.identity, self.live.head
        older = bite.read_new()
        self.older_bytes_read += bite.bytes_read
        self.bite_at_start = start == 0
        if bite.lost:  # the file is gone (rotated away twice): its history cannot be read
            self.older_end = 0
        elif bite.began_at is None or bite.began_at >= self.older_end:
            self.older_end = start  # no line starts in this bite: one longer than a bite
        else:
            self.older_end = bite.began_at
        return new, older
