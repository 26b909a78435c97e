"""Tailing and waiting on runs: what answers `RunService.wait` and `RunService.watch`.

A wait for a run executing on this replica is answered by that pass, from memory; every other
wait and every watch reads the run's durable event log. Readers of one run at one cursor share
a single blocking store read. `drain` ends every wait and watch in progress (and refuses new
ones) with ShuttingDown, so their callers reconnect to another replica.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Protocol

from .errors import CursorExpired, FieldViolation, InvalidArgument, ShuttingDown
from .events import Event, WorkflowFinish
from .model import RunStatus
from .store import RunHead, Store, StoredRun

__all__ = ["PassSource", "Tail"]

# Finish statuses after which a watch that keeps open on suspend stays open.
_PARKED = frozenset({RunStatus.SUSPENDED, RunStatus.PAUSED})
# How long one blocking read of the log lasts before a watch re-checks the run still exists.
_TAIL_BLOCK = 15.0


class PassSource(Protocol):
    """The passes this replica is executing (the worker, seen from a wait)."""

    def pass_of(self, run_id: str) -> asyncio.Future[StoredRun | None] | None: ...


class Tail:
    """Waits and watches over one store. `get` reads a run or raises RunNotFound."""

    def __init__(
        self,
        store: Store,
        get: Callable[[str], Awaitable[StoredRun]],
        *,
        passes: PassSource | None = None,
    ) -> None:
        self._store = store
        self._get = get
        self._passes = passes
        # Resolved by drain(): every wait and watch then ends with ShuttingDown.
        self._draining: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        # Blocking log reads in flight, by (run id, cursor), shared by their readers.
        self._reads: dict[tuple[str, int], asyncio.Future[list[Event]]] = {}

    def drain(self) -> None:
        """End every wait and watch in progress (and refuse new ones) with ShuttingDown."""
        if not self._draining.done():
            self._draining.set_result(None)

    async def wait(
        self, run_id: str, *, after_sequence: int = 0, timeout: float | None = None
    ) -> StoredRun:
        """Block (bounded by `timeout`; None = no bound) until a workflow-finish event with a
        sequence above `after_sequence` exists, then return the stored run. On timeout returns
        the current stored run, whatever its status. Raises RunNotFound."""
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        local = self._passes.pass_of(run_id) if self._passes is not None else None
        if local is not None:
            # Executing on this replica: its pass hands over the stored run when it ends.
            await self._until(local, timeout)
            ended = local.result() if local.done() else None
            if ended is not None and ended.last_sequence > after_sequence:
                return ended
        else:
            await self._get(run_id)
        cursor = after_sequence
        while True:
            block = _TAIL_BLOCK if deadline is None else min(_TAIL_BLOCK, deadline - loop.time())
            if block <= 0:
                break
            events = await self._next_events(run_id, cursor, block)
            if any(e.is_finish for e in events):
                break
            if events:
                cursor = events[-1].sequence
            else:
                await self._get(run_id)  # deleted meanwhile -> RunNotFound
        return await self._get(run_id)

    async def watch(
        self,
        run_id: str,
        *,
        after_sequence: int = 0,
        keep_open_on_suspend: bool = False,
        fresh: bool = False,
    ) -> AsyncIterator[Event]:
        """Replay events after `after_sequence`, then tail until the run settles (finishes,
        or suspends unless keep_open_on_suspend). Raises RunNotFound, CursorExpired.

        `fresh`: the caller has just created or claimed the run, whose log ended at
        `after_sequence`; it is running and nothing after the cursor is trimmed, so the
        watch starts reading events at once (a Stream's first event a round trip sooner)."""
        if after_sequence < 0:
            raise InvalidArgument(
                "invalid watch cursor", [FieldViolation("after_sequence", "must not be negative")]
            )
        # The run's head, not the run: a watch of a run with 100,000 records reads none.
        if fresh:
            head = RunHead(RunStatus.RUNNING, after_sequence, after_sequence + 1)
        else:
            head = await self._store.head(run_id)
        if after_sequence + 1 < head.first_kept_sequence:
            raise CursorExpired(run_id, after_sequence, head.first_kept_sequence)
        cursor = after_sequence
        while True:
            status = head.status
            ended = status.finished or (status.settled and not keep_open_on_suspend)
            if ended and head.last_sequence <= cursor:
                return  # a reconnect after the final event: nothing more will come
            events = await self._next_events(run_id, cursor, _TAIL_BLOCK)
            if not events:
                head = await self._store.head(run_id)  # deleted meanwhile -> RunNotFound
                continue
            for event in events:
                yield event
            cursor = events[-1].sequence
            last = events[-1]
            finish = last.data
            ends = isinstance(finish, WorkflowFinish) and (
                finish.status not in _PARKED or not keep_open_on_suspend
            )
            # A finish followed by more events (a resume already began) is not the end.
            if ends and not await self._store.read_events(run_id, cursor, limit=1):
                return

    async def _until(self, future: asyncio.Future[Any], timeout: float | None) -> None:
        """Wait (bounded) for `future` without cancelling it; a drain interrupts."""
        if self._draining.done():
            raise ShuttingDown
        waiters: set[asyncio.Future[Any]] = {future, self._draining}
        await asyncio.wait(waiters, timeout=timeout, return_when="FIRST_COMPLETED")
        if self._draining.done() and not future.done():
            raise ShuttingDown

    async def _next_events(self, run_id: str, cursor: int, block: float) -> list[Event]:
        """A blocking read of the log (up to `block` seconds) that a drain interrupts.

        Readers of one run at one cursor share a single store read: a thousand watchers of a
        run cost one blocking read per batch of events, not a thousand. A reader that stops
        waiting (its own deadline, a drain, a cancelled call) leaves the read to the others."""
        if self._draining.done():
            raise ShuttingDown  # before starting a read nobody would wait for
        key = (run_id, cursor)
        read = self._reads.get(key)
        if read is None:
            read = asyncio.ensure_future(self._store.wait_events(run_id, cursor, block))
            self._reads[key] = read
            read.add_done_callback(lambda done: self._read_over(key, done))
        await self._until(read, block)
        # Not done: this reader's block is over; the shared read goes on for the others.
        return read.result() if read.done() else []

    def _read_over(self, key: tuple[str, int], read: asyncio.Future[list[Event]]) -> None:
        if self._reads.get(key) is read:
            del self._reads[key]
        if not read.cancelled():
            read.exception()  # retrieved here, so an error nobody waited for is not reported
