"""The run log's stored form: what the previous release wrote reads back, what this one
writes is the same JSON, and a log from a later release (extra keys) still reads."""

from __future__ import annotations

import json
from typing import Any

import msgspec
import pytest

from stepline.server.events import (
    Event,
    EventError,
    EventType,
    StepProgress,
    StepResult,
    StepStart,
    StepSuspended,
    Suspension,
    WorkflowCanceled,
    WorkflowFinish,
    decode_event,
    encode_event,
)
from stepline.server.model import RunStatus, StepStatus

# As a release before typed payloads stored them (tests/fixtures/redis-v1 holds such runs).
STORED = [
    '{"type":"workflow-start","data":{"workflow_id":"up_chain","reason":"start"},'
    '"timestamp":1796304565.8800263}',
    '{"type":"step-start","data":{"step_id":"add_one","payload":{"value":2},'
    '"started_at":1796304565.8802125},"timestamp":1796304565.880238}',
    '{"type":"step-result","data":{"step_id":"refuse","status":"failed","payload":{"value":2},'
    '"started_at":1796304565.887972,"ended_at":1796304565.8881814,"attempts":1,"error":'
    '{"message":"refused 2","name":"NonRetryableError","details":null}},'
    '"timestamp":1796304565.8881977}',
    '{"type":"step-progress","data":{"step_id":"item_gate","completed_count":1,"total_count":4,'
    '"current_index":1,"iteration_status":"success","iteration_output":{"value":20}},'
    '"timestamp":1796304565.9230306}',
    '{"type":"step-suspended","data":{"step_id":"gate","payload":{"value":5},'
    '"suspend_payload":{"asked":5},"labels":["gate"],"suspended_at":1796304565.9177337},'
    '"timestamp":1796304565.9177883}',
    '{"type":"step-waiting","data":{"step_id":"nap","payload":{"value":2},'
    '"started_at":1796304565.9340537,"wake_at":1796304625.9340537},"timestamp":1796304565.93}',
    '{"type":"workflow-canceled","timestamp":1796304566.049939}',
    '{"type":"workflow-finish","data":{"status":"suspended","suspended":[{"path":["up_inner",'
    '"gate"],"payload":{"asked":9},"labels":["gate"]}]},"timestamp":1796304565.9298787}',
]


@pytest.mark.parametrize("stored", STORED)
def test_a_stored_event_reads_back_and_writes_the_same_json(stored: str) -> None:
    event = decode_event(stored, 7)
    assert event.sequence == 7
    assert event.type.value == json.loads(stored)["type"]
    assert json.loads(encode_event(event)) == json.loads(stored)


def test_payloads_read_back_typed() -> None:
    result = decode_event(STORED[2], 3).data
    assert result == StepResult(
        step_id="refuse",
        status=StepStatus.FAILED,
        payload={"value": 2},
        started_at=1796304565.887972,
        ended_at=1796304565.8881814,
        attempts=1,
        error=EventError(message="refused 2", name="NonRetryableError"),
    )
    finish = decode_event(STORED[-1], 9).data
    assert isinstance(finish, WorkflowFinish) and finish.status is RunStatus.SUSPENDED
    assert finish.suspended == (
        Suspension(path=("up_inner", "gate"), payload={"asked": 9}, labels=("gate",)),
    )
    assert decode_event(STORED[6], 8).data == WorkflowCanceled()


def test_keys_a_later_release_adds_are_skipped() -> None:
    stored = (
        '{"type":"step-suspended","data":{"step_id":"gate","payload":null,'
        '"suspend_payload":1,"labels":[],"suspended_at":2.5,"new_key":{"x":1}},'
        '"timestamp":3.0,"trace":"abc"}'
    )
    assert decode_event(stored, 1) == Event(
        data=StepSuspended(step_id="gate", payload=None, suspend_payload=1, suspended_at=2.5),
        sequence=1,
        timestamp=3.0,
    )


def test_optional_keys_are_left_out_and_null_values_kept() -> None:
    start = Event(data=StepStart(step_id="a", payload=None, started_at=1.0), timestamp=2.0)
    assert json.loads(encode_event(start)) == {
        "type": "step-start",
        "data": {"step_id": "a", "payload": None, "started_at": 1.0},
        "timestamp": 2.0,
    }
    resumed = StepStart(step_id="a", started_at=1.0, resume_payload=None)
    assert "resume_payload" in json.loads(encode_event(Event(data=resumed)))["data"]
    progress = StepProgress(step_id="f", current_index=2, iteration_status=StepStatus.CANCELED)
    assert "iteration_output" not in json.loads(encode_event(Event(data=progress)))["data"]
    failed = WorkflowFinish(status=RunStatus.FAILED, error=None)
    assert json.loads(encode_event(Event(data=failed)))["data"] == {
        "status": "failed",
        "error": None,
    }


def test_what_is_not_an_event_is_refused_clearly() -> None:
    with pytest.raises(msgspec.DecodeError, match="type"):
        decode_event('{"type":"step-teleported","data":{},"timestamp":1.0}', 1)
    with pytest.raises(ValueError, match="step_id"):
        decode_event('{"type":"step-start","data":{"payload":1},"timestamp":1.0}', 1)
    not_json: Any = object()
    with pytest.raises(TypeError):
        encode_event(Event(data=StepStart(step_id="a", payload={"t": not_json})))


def test_every_event_type_has_a_payload() -> None:
    for event_type in EventType:
        assert (
            decode_event(
                f'{{"type":"{event_type.value}","data":{{"step_id":"s","workflow_id":"w",'
                '"status":"success","iteration_status":"success"},"timestamp":1}',
                1,
            ).type
            is event_type
        )
