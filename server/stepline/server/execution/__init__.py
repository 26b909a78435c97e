"""Walks a committed workflow graph for one run, writing every transition through a journal.

The walk is driven by the snapshot: an entry whose steps already succeeded is replayed from
its recorded output, a suspended step runs again only when the pending resume targets it, a
sleep whose timer has not fired hands the run back, and a step recorded as running (a crashed
or handed-back pass) runs again with its recorded payload. So start, resume, wake-up and
re-drive after a crash are one code path.

Modules: `walk` (the pass and its entries), `attempt` (one step's attempts), `transitions`
(how records move; every event built), `foreach`, `loop`, `sleep`, `nested` (one per node
kind), `conditions`, `failures` (errors as recorded) and `base` (shared types).
"""

from .base import Journal, Kind, Outcome
from .failures import serialize_error
from .sleep import INLINE_SLEEP
from .walk import Execution

__all__ = ["INLINE_SLEEP", "Execution", "Journal", "Kind", "Outcome", "serialize_error"]
