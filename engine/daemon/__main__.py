"""``python -m trainconsole.engine.daemon CONFIG``: the engine's own entry point, as
``trainconsole daemon`` runs it (how ``trainconsole.engine.daemon.start`` starts it detached)."""

import sys

from trainconsole.engine.daemon.main import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "config.toml"))
