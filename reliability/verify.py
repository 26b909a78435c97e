"""Check every run against the store itself (the run hash and its event stream in Redis, read
raw; for a run compacted by housekeeping, its blob) and against what its caller saw.

Per run:
- lost: no run hash, or the run never reached a final status;
- duplicated: more than one terminal workflow-finish, more than one "start" pass, more resumes
  than the caller made, or a step whose result is recorded twice (steps are at-least-once,
  recorded results exactly-once);
- wrong: the final status, result or error is not the one the workflow must produce, the log
  is not dense (entry ids 0-1 … 0-seq, as many as the hash's `seq`), the terminal finish is not
  the last event, or the run is missing from the ListRuns indexes;
- caller mismatch: the caller's final status/result differs from the store's, the caller was
  handed a final outcome other than exactly once, or its streamed sequences have gaps.
Plus, for the whole suite: run hashes under the prefix that no caller started (extra runs).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote

from redis.asyncio import ConnectionPool, Redis

from stepline.server.store import scripts
from stepline.server.store.compacted import unpack
from stepline.server.store.keys import Keys

from . import flows
from .traffic import Outcome

FINISHED = ("success", "failed", "canceled")
BATCH = 500
SAMPLES = 20  # problems quoted in the report, per kind


@dataclass(frozen=True)
class Flagged:
    """One run that failed a check: `kind` is lost, duplicated, wrong or caller."""

    kind: str
    outcome: Outcome
    # The stored status ("" when the run is missing from the store).
    status: str
    problems: tuple[str, ...]


@dataclass
class Verdict:
    runs: int = 0
    completed: int = 0
    lost: int = 0
    duplicated: int = 0
    wrong: int = 0
    caller_mismatch: int = 0
    extra_runs: int = 0
    # Execution passes that continued a run after its holder died or stalled.
    recovered_passes: int = 0
    resumes_found_claimed: int = 0
    statuses: Counter[str] = field(default_factory=Counter)
    problems: dict[str, list[str]] = field(default_factory=dict)
    # Every run that failed a check, once per kind of failure.
    flagged: list[Flagged] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        return not (
            self.lost or self.duplicated or self.wrong or self.caller_mismatch or self.extra_runs
        )

    def of(self, kind: str) -> list[Flagged]:
        return [flag for flag in self.flagged if flag.kind == kind]

    def flag(self, kind: str, outcome: Outcome, status: str, problems: list[str]) -> None:
        setattr(self, kind, getattr(self, kind) + 1)
        self.flagged.append(Flagged(kind, outcome, status, tuple(problems)))
        self.note(kind, f"{outcome.spec.run_id}: {'; '.join(problems)}")

    def note(self, kind: str, message: str) -> None:
        samples = self.problems.setdefault(kind, [])
        if len(samples) < SAMPLES:
            samples.append(message)

    def merge(self, other: Verdict) -> None:
        for name in (
            "runs",
            "completed",
            "lost",
            "duplicated",
            "wrong",
            "caller_mismatch",
            "extra_runs",
            "recovered_passes",
            "resumes_found_claimed",
        ):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.statuses.update(other.statuses)
        self.flagged += other.flagged
        for kind, messages in other.problems.items():
            for message in messages:
                self.note(kind, message)


async def verify(
    redis: Redis, prefix: str, outcomes: Sequence[Outcome], *, check_extra: bool = True
) -> Verdict:
    """Check `outcomes` against the store; with `check_extra`, also look for run hashes under
    `prefix` that none of them accounts for."""
    keys = Keys(prefix)
    verdict = Verdict()
    for start in range(0, len(outcomes), BATCH):
        batch = outcomes[start : start + BATCH]
        pipe = redis.pipeline(transaction=False)
        for outcome in batch:
            run_id, workflow_id = outcome.spec.run_id, outcome.spec.workflow_id
            pipe.hmget(keys.run(run_id), ["snap", "status", "seq", "layout"])
            pipe.xrange(keys.events(run_id))
            pipe.zscore(keys.index_all, run_id)
            pipe.zscore(keys.index_workflow(workflow_id), run_id)
        replies = await pipe.execute()
        read = [replies[4 * i : 4 * i + 4] for i in range(len(batch))]
        await _expand(redis, keys, batch, read)
        for outcome, (fields, entries, listed_all, listed_wf) in zip(batch, read, strict=True):
            _check(verdict, outcome, fields[:3], entries, None not in (listed_all, listed_wf))
    if check_extra:
        verdict.merge(await extra_runs(redis, prefix, {o.spec.run_id for o in outcomes}))
    return verdict


async def _expand(
    redis: Redis, keys: Keys, batch: Sequence[Outcome], read: list[list[Any]]
) -> None:
    """Put a compacted run's snapshot and log (its blob) where an uncompacted run has them."""
    compacted = [i for i, (fields, *_rest) in enumerate(read) if fields[3] == scripts.COMPACTED]
    if not compacted:
        return
    options = {**redis.connection_pool.connection_kwargs, "decode_responses": False}
    pool = ConnectionPool(connection_class=redis.connection_pool.connection_class, **options)
    raw = Redis.from_pool(pool)  # the blob is binary
    try:
        pipe = raw.pipeline(transaction=False)
        for i in compacted:
            pipe.get(keys.blob(batch[i].spec.run_id))
        blobs = await pipe.execute()
    finally:
        await raw.aclose()
    for i, blob in zip(compacted, blobs, strict=True):
        if blob is None:
            continue
        run = unpack(blob)
        read[i][0] = [run.snap, *read[i][0][1:]]
        read[i][1] = [(f"0-{run.first + n}", {"e": event}) for n, event in enumerate(run.events)]


async def extra_runs(redis: Redis, prefix: str, started: set[str]) -> Verdict:
    """Run hashes under `prefix` that are not in `started` (a start that made a second run)."""
    verdict = Verdict()
    for run_id in await stored_run_ids(redis, Keys(prefix)):
        if run_id not in started:
            verdict.extra_runs += 1
            verdict.note("extra", f"run {run_id!r} is in the store but no caller started it")
    return verdict


async def stored_run_ids(redis: Redis, keys: Keys) -> list[str]:
    """Ids of every run hash under the prefix."""
    head = keys.run("")[: -len("{%}")]  # "<prefix>:run:"
    found: list[str] = []
    async for key in redis.scan_iter(match=f"{head}*", count=1000):
        name = str(key)
        if name.endswith("}"):
            found.append(unquote(name[len(head) + 1 : -1]))
    return found


def _check(
    verdict: Verdict, outcome: Outcome, fields: list[Any], entries: Any, listed: bool
) -> None:
    spec = outcome.spec
    verdict.runs += 1
    verdict.resumes_found_claimed += outcome.resume_retried_after_claim
    snap_json, hash_status, seq = fields
    if snap_json is None:
        problems = [f"no run in the store (caller saw {outcome.status})", *outcome.problems]
        verdict.flag("lost", outcome, "", problems)
        return
    snap = json.loads(snap_json)
    status = str(snap.get("status"))
    verdict.statuses[f"{spec.workflow_id} {status}"] += 1
    if status not in FINISHED:
        verdict.flag("lost", outcome, status, [f"stuck {status}", *outcome.problems])
        return
    verdict.completed += 1
    want_status, want = flows.expected(spec.workflow_id, spec.n)
    # Stored events leave out default fields (an empty `data`, for one).
    events = [
        (str(entry_id), {"data": {}, **json.loads(data["e"])}) for entry_id, data in entries or []
    ]
    wrong: list[str] = []
    duplicated: list[str] = []

    # The log: dense and as long as the hash says.
    ids = [entry_id for entry_id, _ in events]
    if ids != [f"0-{n}" for n in range(1, len(ids) + 1)] or str(len(ids)) != str(seq):
        wrong.append(f"log not dense: {len(ids)} entries, seq {seq}, ids {ids[:3]}…")
    if hash_status != status:
        wrong.append(f"hash status {hash_status} != snapshot status {status}")

    # Finishes, passes and recorded step results.
    finishes = [e["data"].get("status") for _, e in events if e["type"] == "workflow-finish"]
    terminal = [s for s in finishes if s in FINISHED]
    reasons = Counter(e["data"].get("reason") for _, e in events if e["type"] == "workflow-start")
    results = Counter(e["data"].get("step_id") for _, e in events if e["type"] == "step-result")
    verdict.recovered_passes += reasons["restart"]
    want_finishes = [want_status]
    if spec.workflow_id == flows.APPROVAL:
        want_finishes.insert(0, "suspended")
    if len(terminal) > 1:
        duplicated.append(f"{len(terminal)} terminal finishes {finishes}")
    if reasons["start"] > 1:
        duplicated.append(f"{reasons['start']} start passes")
    if reasons["resume"] > (1 if spec.workflow_id == flows.APPROVAL else 0):
        duplicated.append(f"{reasons['resume']} resume passes")
    twice = sorted(step for step, count in results.items() if count > 1)
    for step in twice:
        recorded = [
            e["data"].get("status")
            for _, e in events
            if e["type"] == "step-result" and e["data"].get("step_id") == step
        ]
        duplicated.append(f"step {step} has {len(recorded)} recorded results: {recorded}")
    if not duplicated:
        if finishes != want_finishes:
            wrong.append(f"finishes {finishes}, expected {want_finishes}")
        elif events[-1][1]["type"] != "workflow-finish":
            wrong.append(f"last event is {events[-1][1]['type']}, not the finish")
    missing = [step for step in flows.required_steps(spec.workflow_id) if results[step] == 0]
    if missing and status == want_status:
        wrong.append(f"steps without a recorded result: {missing}")

    # The outcome itself.
    if status != want_status:
        wrong.append(f"ended {status}, expected {want_status}")
    elif status == "success" and snap.get("result") != want:
        wrong.append(f"result {snap.get('result')!r}, expected {want!r}")
    elif status == "failed" and (snap.get("error") or {}).get("message") != want:
        wrong.append(f"error {snap.get('error')!r}, expected message {want!r}")
    if not listed:
        wrong.append("missing from the ListRuns indexes")

    # What the caller saw.
    mismatch = list(_caller_problems(outcome, status, snap))

    if duplicated:
        verdict.flag("duplicated", outcome, status, duplicated)
    if wrong:
        verdict.flag("wrong", outcome, status, wrong)
    if mismatch:
        verdict.flag("caller_mismatch", outcome, status, mismatch)


def _caller_problems(outcome: Outcome, status: str, snap: dict[str, Any]) -> Iterable[str]:
    if outcome.status != status:
        yield f"caller saw {outcome.status}, store has {status}"
    elif status == "success" and outcome.result != snap.get("result"):
        yield f"caller saw result {outcome.result!r}, store has {snap.get('result')!r}"
    elif status == "failed" and outcome.error_message != (snap.get("error") or {}).get("message"):
        yield f"caller saw error {outcome.error_message!r}"
    if outcome.finals != 1:
        yield f"caller was handed {outcome.finals} final outcomes"
    if outcome.sequences and outcome.sequences != list(range(1, len(outcome.sequences) + 1)):
        yield f"caller's stream not dense: {outcome.sequences[:12]}"
    yield from outcome.problems
