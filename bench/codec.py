"""The run log's event codec, alone: µs per event to encode and decode a typical run's events.

    python bench/codec.py                 # 5 rounds of 20000 runs' events, best round kept
    python bench/codec.py --runs 2000 --rounds 3

The run is a three-step sequence as the engine logs it: workflow-start, then step-start and
step-result for each step, then workflow-finish (8 events). "encode" is what a store does at
each transition (the event to the JSON it keeps, without the sequence), "decode" what it does
on each read (the JSON and the entry's sequence back to an event).

"pydantic" is the codec before typed payloads, rebuilt here as it was: a frozen pydantic
model whose `data` is a dict, `model_dump_json(exclude={"sequence"}, exclude_defaults=True)`
and `model_validate_json(...).model_copy(update={"sequence": ...})`. "msgspec" is the
engine's codec (stepline.server.events). Both must write the same JSON, or the script fails.
Prints a table, then as its last line one JSON object.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable, Sequence
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from stepline.server.events import (
    Event,
    StepResult,
    StepStart,
    WorkflowFinish,
    WorkflowStart,
    decode_event,
    encode_event,
)
from stepline.server.jsonvalue import JSON
from stepline.server.status import RunStatus, StepStatus


class PydanticEvent(BaseModel):
    """The event model before typed payloads (data keys by string)."""

    model_config = ConfigDict(frozen=True)

    type: str
    data: dict[str, Any] = Field(default_factory=dict)
    sequence: int = 0
    timestamp: float = Field(default_factory=time.time)


def typical_run(at: float = 1_796_304_565.880) -> list[Event]:
    """A three-step run's events, as the engine builds them."""
    events = [Event(data=WorkflowStart(workflow_id="sequence", reason="start"), timestamp=at)]
    value: dict[str, JSON] = {"value": 1, "note": "a typical step payload", "tags": ["a", "b"]}
    for i, step_id in enumerate(("add_one", "double", "square")):
        started = at + 0.001 * (2 * i + 1)
        output: dict[str, JSON] = {**value, "value": i + 2}
        events.append(
            Event(
                data=StepStart(step_id=step_id, payload=value, started_at=started),
                timestamp=started,
            )
        )
        result = StepResult(
            step_id=step_id,
            status=StepStatus.SUCCESS,
            started_at=started,
            ended_at=started + 0.0004,
            attempts=1,
            payload=value,
            output=output,
        )
        events.append(Event(data=result, timestamp=started + 0.0005))
        value = output
    finish = WorkflowFinish(status=RunStatus.SUCCESS, result=value)
    events.append(Event(data=finish, timestamp=at + 0.01))
    return events


def per_event(action: Callable[[], object], events: int, runs: int, rounds: int) -> float:
    """µs per event of `action` (one run's events each call), best of `rounds`."""
    best = float("inf")
    for _ in range(rounds):
        started = time.perf_counter()
        for _ in range(runs):
            action()
        best = min(best, time.perf_counter() - started)
    return best / (runs * events) * 1e6


def measure(runs: int, rounds: int) -> dict[str, dict[str, float]]:
    events = typical_run()
    stored = [encode_event(event) for event in events]
    models = [PydanticEvent.model_validate_json(raw) for raw in stored]
    before = [m.model_dump_json(exclude={"sequence"}, exclude_defaults=True) for m in models]
    if [json.loads(raw) for raw in stored] != [json.loads(raw) for raw in before]:
        raise SystemExit("the two codecs write different JSON")
    seqs = list(range(1, len(events) + 1))

    def pydantic_encode() -> Sequence[str]:
        return [m.model_dump_json(exclude={"sequence"}, exclude_defaults=True) for m in models]

    def pydantic_decode() -> Sequence[PydanticEvent]:
        return [
            PydanticEvent.model_validate_json(raw).model_copy(update={"sequence": seq})
            for raw, seq in zip(before, seqs, strict=True)
        ]

    def msgspec_encode() -> Sequence[bytes]:
        return [encode_event(event) for event in events]

    def msgspec_decode() -> Sequence[Event]:
        return [decode_event(raw, seq) for raw, seq in zip(stored, seqs, strict=True)]

    n = len(events)
    return {
        "pydantic": {
            "encode_us": per_event(pydantic_encode, n, runs, rounds),
            "decode_us": per_event(pydantic_decode, n, runs, rounds),
        },
        "msgspec": {
            "encode_us": per_event(msgspec_encode, n, runs, rounds),
            "decode_us": per_event(msgspec_decode, n, runs, rounds),
        },
    }


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--runs", type=int, default=20000, help="runs' events per round")
    parser.add_argument("--rounds", type=int, default=5, help="rounds; the best is kept")
    args = parser.parse_args(argv)
    results = measure(args.runs, args.rounds)
    before, after = results["pydantic"], results["msgspec"]
    print(f"{'codec':<10} {'encode µs/event':>16} {'decode µs/event':>16}")
    for name, row in results.items():
        print(f"{name:<10} {row['encode_us']:>16.3f} {row['decode_us']:>16.3f}")
    speedup = {
        "encode_x": before["encode_us"] / after["encode_us"],
        "decode_x": before["decode_us"] / after["decode_us"],
    }
    print(f"{'speed-up':<10} {speedup['encode_x']:>15.1f}x {speedup['decode_x']:>15.1f}x")
    print(json.dumps({"events_per_run": 8, "runs": args.runs, **results, **speedup}))


if __name__ == "__main__":
    main()
