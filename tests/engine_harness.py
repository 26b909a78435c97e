"""The engine without gRPC: a RunService and a Worker over one store, for engine tests."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, TypeVar

from stepline.server.events import Event, EventData, StepData
from stepline.server.runs import ResumeParams, RunService, StartParams
from stepline.server.store import Store, StoredRun
from stepline.server.worker import Worker
from stepline.server.workflows import Registry


@dataclass
class Engine:
    service: RunService
    worker: Worker
    store: Store

    async def run(self, workflow_id: str, input_data: Any = None, **kw: Any) -> StoredRun:
        started = await self.service.start(StartParams(workflow_id, input_data, **kw))
        return await self.service.wait(started.run_id, timeout=10)

    async def resume(self, run_id: str, **kw: Any) -> StoredRun:
        resumed = await self.service.resume(ResumeParams(run_id, **kw))
        return await self.service.wait(run_id, after_sequence=resumed.after_sequence, timeout=10)

    async def events(self, run_id: str) -> list[Event]:
        return await self.store.read_events(run_id, 0)


def registry() -> Registry:
    reg = Registry()
    reg.load_module("tests.flows")
    return reg


def kinds(events: list[Event]) -> list[str]:
    return [
        f"{e.type.value}:{e.data.step_id}" if isinstance(e.data, StepData) else e.type.value
        for e in events
    ]


Payload = TypeVar("Payload", bound=EventData)


def data_of(event: Event, kind: type[Payload]) -> Payload:
    """The event's payload, which must be a `kind`."""
    assert isinstance(event.data, kind), event
    return event.data
