"""The job store (``queue/state.db`` and the queue folders). Importers take the names below from here;
the parts (``db``, the database object they all share; ``schema``, ``add``, ``repair``, ``view``,
``files``, ``scheduling``, ``types``) are the store's own."""

from trainconsole.engine.store.store import ACTIVE, SCHEMA_VERSION, STATUSES, Command, Job, QueueError, Store
from trainconsole.engine.store.types import Experiment

__all__ = ["ACTIVE", "SCHEMA_VERSION", "STATUSES", "Command", "Experiment", "Job", "QueueError", "Store"]
