"""The real daemon (``trainconsole daemon``, its own process) whose local launcher starts the fake
worker (tests/daemon/fake_worker.py) instead of the torch worker: supervision tests that need many
worker lives (poison jobs among healthy ones) pay a tenth of a second per life, not an import of
torch. Everything else (the lock, the store, retries, recovery) is the engine's own code.

    python tests/daemon/fake_daemon.py --config PATH daemon
"""

from __future__ import annotations

import sys
from pathlib import Path

FAKE_WORKER = Path(__file__).resolve().with_name("fake_worker.py")


def main() -> int:
    from trainconsole.console.cli import main as cli_main
    from trainconsole.engine.daemon.launcher import LocalLauncher

    LocalLauncher.command = lambda self, spec: [sys.executable, str(FAKE_WORKER), str(spec)]  # type: ignore[method-assign]
    return cli_main(sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())
