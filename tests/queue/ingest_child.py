"""Run by the kill -9 test: open the store (finishing whatever the last killed run left), say
"ready", then take every file in the inbox, as the daemon's scan loop does, until it is empty."""

from __future__ import annotations

import sys
from pathlib import Path

from trainconsole.engine.daemon.inbox import Inbox
from trainconsole.engine.layout import Layout
from trainconsole.engine.store import Store


def main(root: Path) -> None:
    layout = Layout(root / "queue", root / "runs", root / "adapters", root / "cache")
    store = Store.open(layout)
    inbox = Inbox(layout)
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    while inbox.scan(store, stable_s=0.0):
        pass
    store.close()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
