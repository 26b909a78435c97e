"""The walk: one pass of a run through its workflow's entries, in order, from the snapshot.

`Execution` holds the pass's state (the workflow, the live snapshot, the journal, the cancel
event), writes every transition through the journal, and is the runtime behind each
StepContext. It walks the entries, dispatching each by node kind (steps, parallel and branch
entries here; foreach, loops, sleeps and nested workflows in their own modules), and ends the
pass through `transitions`.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from typing import Any

from ..model import ChangeSet, Event, RunStatus, Snapshot, StepStatus, now
from ..workflows import (
    BranchNode,
    ForeachNode,
    LoopNode,
    Node,
    ParallelNode,
    SleepNode,
    StepNode,
    Unit,
    Workflow,
)
from . import transitions
from .attempt import plain_json, run_attempts
from .base import Journal, Kind, Outcome, combine
from .conditions import condition_context, holds
from .failures import StepOutputInvalid
from .foreach import run_foreach
from .loop import run_loop
from .nested import run_child
from .sleep import run_sleep


class Execution:
    """One pass of a run through its workflow; also the runtime behind each StepContext."""

    def __init__(
        self,
        workflow: Workflow,
        snapshot: Snapshot,
        journal: Journal,
        *,
        cancel_event: asyncio.Event | None = None,
    ) -> None:
        self.workflow = workflow
        self.snap = snapshot
        self.journal = journal
        self.cancel_event = cancel_event or asyncio.Event()
        self.run_id = snapshot.run_id
        self.workflow_id = snapshot.workflow_id
        self.resource_id = snapshot.resource_id
        self.request_context = snapshot.request_context
        # Records changed since the last commit; the pass's first commit writes them all.
        self.changes = ChangeSet()

    # -- StepRuntime -----------------------------------------------------------------------
    def init_data(self) -> Any:
        return self.snap.input

    def step_output(self, step_id: str) -> Any:
        rec = self.snap.steps.get(step_id)
        return rec.output if rec is not None and rec.status is StepStatus.SUCCESS else None

    def state(self) -> dict[str, Any]:
        return dict(self.snap.state)

    async def emit_output(self, step_id: str, value: Any) -> None:
        try:
            data = plain_json(value, "value")
        except StepOutputInvalid as err:
            raise TypeError(f"ctx.write() needs plain JSON: {err}") from None
        await transitions.write_output(self, step_id, data)

    def abort(self) -> None:
        self.cancel_event.set()

    # -- the pass's state ------------------------------------------------------------------
    async def commit(
        self, events: Sequence[Event], *, release: bool = False, wake_at: float | None = None
    ) -> None:
        self.snap.updated_at = now()
        self.changes.note(events)
        if await self.journal.commit(
            self.snap, events, release=release, wake_at=wake_at, changes=self.changes
        ):
            self.cancel_event.set()

    async def cancelled_within(self, delay: float) -> bool:
        """Sleep up to `delay`; True if the run was canceled meanwhile."""
        if delay > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.cancel_event.wait(), delay)
        return self.cancel_event.is_set()

    def spawn(self, workflow: Workflow, snapshot: Snapshot, journal: Journal) -> Execution:
        """An execution of a nested workflow, canceled with this one."""
        child = Execution(workflow, snapshot, journal, cancel_event=self.cancel_event)
        # The run's own first commit of the pass was full; the child marks what it changes.
        child.changes = ChangeSet(full=False)
        return child

    # -- the run ---------------------------------------------------------------------------
    async def run(self) -> Snapshot:
        """Execute until the run settles or waits; returns the final (persisted) snapshot."""
        snap = self.snap
        if snap.status is RunStatus.PENDING:
            snap.status = RunStatus.RUNNING
            await transitions.start(self, "start")
        elif snap.pass_announced:
            snap.pass_announced = False
        elif snap.status is RunStatus.RUNNING:
            # A pass that died or was handed back: continue from the recorded steps.
            await transitions.start(self, "restart")
        snap.status = RunStatus.RUNNING
        snap.wake_at = None
        outcome = await self.walk()
        if self.cancel_event.is_set() and outcome.kind in (Kind.SUSPENDED, Kind.WAITING):
            outcome = Outcome(Kind.CANCELED)  # canceled while parking: the cancel ends the run
        if outcome.kind is Kind.WAITING:
            return await transitions.hand_to_timer(self, outcome.wake_at or now())
        return await transitions.finish(self, outcome)

    # -- the walk --------------------------------------------------------------------------
    async def walk(self) -> Outcome:
        """Run the graph's entries in order from the snapshot; stop at the first that does
        not complete, or (per_step) after the entry the snapshot names, unless it is the
        last."""
        value: Any = self.snap.input
        last = len(self.workflow.nodes) - 1
        for index, node in enumerate(self.workflow.nodes):
            if self.cancel_event.is_set():
                return Outcome(Kind.CANCELED)
            entry = self.snap.entry_state.get(str(index), {})
            if "input" in entry:  # time travel replaced this entry's input
                value = entry["input"]
            outcome = await self._run_node(index, node, value)
            if outcome.kind is not Kind.OK:
                return outcome
            value = outcome.value
            paused = index == self.snap.pause_after and index < last
            if paused and not self.cancel_event.is_set():  # a cancel wins: it ends the run
                return Outcome(Kind.PAUSED, value)
        if self.cancel_event.is_set():
            return Outcome(Kind.CANCELED)
        return Outcome(Kind.OK, value)

    async def _run_node(self, index: int, node: Node, value: Any) -> Outcome:
        if isinstance(node, StepNode):
            return await self.run_unit(node.step, [index], value)
        if isinstance(node, LoopNode):
            return await run_loop(self, index, node, value)
        if isinstance(node, ForeachNode):
            return await run_foreach(self, index, node, value)
        if isinstance(node, SleepNode):
            return await run_sleep(self, index, node, value)
        if isinstance(node, ParallelNode):
            units: Sequence[Unit] = node.steps
        else:
            units = await self._select_branches(index, node, value)
            if not units:
                return Outcome(Kind.OK, {})
        positions = {u.id: i for i, u in enumerate(node.steps)}
        outcomes = await asyncio.gather(
            *(self.run_unit(u, [index, positions[u.id]], value) for u in units)
        )
        combined = combine(outcomes)
        if combined is not None:
            return combined
        return Outcome(Kind.OK, {u.id: o.value for u, o in zip(units, outcomes, strict=True)})

    async def _select_branches(self, index: int, node: BranchNode, value: Any) -> list[Unit]:
        """Evaluate every condition once per run; the choice is kept in the snapshot."""
        entry = self.snap.entry_state.setdefault(str(index), {})
        if "branches" not in entry:
            ctx = condition_context(self, value)
            chosen = await asyncio.gather(*(holds(cond, ctx) for cond, _ in node.branches))
            entry["branches"] = [
                u.id for (_, u), ok in zip(node.branches, chosen, strict=True) if ok
            ]
        return [u for u in node.steps if u.id in entry["branches"]]

    # -- one unit (a step or a nested workflow) ---------------------------------------------
    async def run_unit(
        self, unit: Unit, position: list[int], payload: Any, *, iteration: int | None = None
    ) -> Outcome:
        """Run a step or nested workflow at `position`, unless its record already decides
        it; `iteration` is the loop iteration it runs for, if any."""
        prior = self.snap.steps.get(unit.id)
        if (
            prior is not None
            and iteration is not None
            and (prior.metadata.get("iteration_count") != iteration)
        ):
            prior = None  # a record of an earlier loop iteration
        done, resume = transitions.recorded(self, unit.id, prior)
        if done is not None:
            return done
        if prior is not None:
            payload = prior.payload
        metadata = {"iteration_count": iteration} if iteration is not None else {}
        rec = await transitions.open_step(self, unit.id, position, payload, prior, resume, metadata)
        if isinstance(unit, Workflow):
            # A fresh run of the child (e.g. the next loop iteration): the records of the
            # earlier one go with its snapshot, which takes a full write.
            if prior is None and self.snap.children.pop(unit.id, None) is not None:
                self.changes.full = True
            return await run_child(self, unit, position, rec, resume)
        attempt = await run_attempts(self, unit, payload, rec.resume_payload, rec.suspend_payload)
        return await transitions.close(self, unit.id, position, rec, attempt)


__all__ = ["Execution"]
