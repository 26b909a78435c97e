"""Every Redis key, channel and group name the Redis store uses, built in one place.

A run's keys carry its encoded id as a Redis Cluster hash tag (`stepline:run:{<id>}`, its
`:events`, `:steps`, `:items:<step id>` and a compacted run's `:z`), so one Lua script can
touch them all. Ids are percent-encoded (everything but `A-Z a-z 0-9 _ . - ~`), which is
injective and leaves no `{`, `}`, `:`, glob character or whitespace in a key, so no run id can
reach another run's keys.
"""

from __future__ import annotations

import functools
from urllib.parse import quote, unquote

__all__ = ["Keys", "decode", "encode"]


@functools.lru_cache(maxsize=65536)
def encode(value: str) -> str:
    """The percent-encoding used for every user-supplied part of a key."""
    # An empty hash tag (`{}`) makes Redis hash the whole key, which would split a run's keys
    # across slots; a lone `%` is never produced by quoting, so the mapping stays injective.
    return quote(value, safe="") or "%"


def decode(encoded: str) -> str:
    """The value `encode` turned into `encoded`."""
    return "" if encoded == "%" else unquote(encoded)


class Keys:
    """Names for one key prefix (one Stepline deployment per prefix)."""

    def __init__(self, prefix: str = "stepline") -> None:
        if not prefix or any(c in prefix for c in "{}"):
            # A brace in the prefix would become the hash tag of every key.
            raise ValueError(f"invalid key prefix {prefix!r}: must be non-empty, without braces")
        self.prefix = prefix
        self.queue = f"{prefix}:queue"
        self.group = f"{prefix}-workers"
        self.cancel_channel = f"{prefix}:cancel"
        self.index_all = f"{prefix}:idx:all"
        # Durable timers of WAITING runs: run id scored by its wake-up time.
        self.timers = f"{prefix}:timers"
        # Unsettled runs scored by when something must have happened to them (lease expiry,
        # or a claim's grace); `recover` re-queues the ones nothing holds past that time.
        self.watchdog = f"{prefix}:watchdog"
        # Finished runs scored by when their keys expire, so that `sweep_expired` can take
        # them out of the indexes (see `expiring`).
        self.expiring = f"{prefix}:expiring"
        # Finished runs scored by when they finished, until housekeeping compacts them
        # (`compact_finished`).
        self.compact = f"{prefix}:compact"

    def run(self, run_id: str) -> str:
        """The run's hash: snapshot JSON plus version, sequence, lease and cancel fields."""
        return f"{self.prefix}:run:{{{encode(run_id)}}}"

    def events(self, run_id: str) -> str:
        """The run's event stream; entry ids are `0-<sequence>`."""
        return f"{self.run(run_id)}:events"

    def steps(self, run_id: str) -> str:
        """The run's step records: step id -> StepRecord JSON."""
        return f"{self.run(run_id)}:steps"

    def items(self, run_id: str, step_id: str) -> str:
        """The iteration records of the run's foreach `step_id`: index -> IterationRecord
        JSON. (The WRITE script builds the same name from the run key and `encode(step_id)`.)"""
        return f"{self.run(run_id)}:items:{encode(step_id)}"

    def blob(self, run_id: str) -> str:
        """A compacted run's snapshot, records and events, deflated (`compacted.py`). (The
        scripts build the same name from the run key.)"""
        return f"{self.run(run_id)}:z"

    def index_workflow(self, workflow_id: str) -> str:
        return f"{self.prefix}:idx:wf:{encode(workflow_id)}"

    def index_resource(self, resource_id: str) -> str:
        return f"{self.prefix}:idx:res:{encode(resource_id)}"

    @staticmethod
    def expiring_member(run_id: str, workflow_id: str, resource_id: str) -> str:
        """The `expiring` entry of a run: its ids, encoded (so free of spaces), space-joined."""
        return " ".join(encode(value) for value in (run_id, workflow_id, resource_id))

    @staticmethod
    def parse_expiring_member(member: str) -> tuple[str, str, str]:
        run_id, workflow_id, resource_id = (decode(part) for part in member.split(" "))
        return run_id, workflow_id, resource_id

    def indexes(self, workflow_id: str, resource_id: str) -> list[str]:
        """Every sorted set a run with these ids is listed in (score = created_at)."""
        keys = [self.index_all, self.index_workflow(workflow_id)]
        if resource_id:
            keys.append(self.index_resource(resource_id))
        return keys
