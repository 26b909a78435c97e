"""Server bugs these suites found, and how to recognise a run they lost.

Each has a deterministic minimal reproduction in tests/test_reliability_quick.py, marked
`xfail(strict=True)` while `open` is True. When the server is fixed the reproduction passes,
strict xfail turns that into a failure, and whoever fixed it sets `open = False` here: that
also withdraws the allowance the quick chaos test makes for runs lost to the bug. RELIABILITY.md
counts such runs as lost whatever this file says; it only names the cause.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from . import flows
from .verify import Flagged


@dataclass(frozen=True)
class KnownBug:
    key: str
    title: str
    detail: str
    repro: str
    open: bool
    # Whether a flagged run (lost, duplicated, wrong, caller_mismatch) is this bug's doing.
    signature: Callable[[Flagged], bool]


def _cancel_lost(flag: Flagged) -> bool:
    return (
        flag.kind == "lost"
        and flag.outcome.spec.workflow_id == flows.CANCEL
        and flag.status == "running"
    )


def _watch_hangs(flag: Flagged) -> bool:
    return (
        flag.kind == "lost"
        and flag.outcome.spec.workflow_id == flows.APPROVAL
        and flag.status == "suspended"
        and any("no end within the budget" in problem for problem in flag.problems)
    )


def _failed_step_rerun(flag: Flagged) -> bool:
    """Every duplication is a step whose first recorded result is a failure."""
    return flag.kind == "duplicated" and all(
        re.fullmatch(r"step \S+ has \d+ recorded results: \['failed'.*", problem)
        for problem in flag.problems
    )


CANCEL_LOST = KnownBug(
    key="cancel-lost-while-resubscribing",
    title="A cancel published while a replica re-subscribes never reaches the running step",
    detail=(
        "Cancel of a held run sets the run's `cancel` flag and PUBLISHes on the cancel channel; "
        "the holder learns of it only from that message or from the reply to its next write. "
        "While its subscription is down (Redis restarted, connection dropped: the listener "
        "sleeps 1 s and re-subscribes) the message is lost, so a step awaiting "
        "`ctx.wait_canceled()` keeps waiting; the heartbeat keeps the lease alive, so nothing "
        "recovers it. The run stays RUNNING until the step ends by itself (then it finishes "
        "SUCCESS, though Cancel answered cancel_requested=true). Fix idea: have the lease "
        "renewal (RENEW script) return the cancel flag and set the event, and/or re-read the "
        "flags of held runs after re-subscribing."
    ),
    repro="test_cancel_reaches_a_step_while_its_replica_resubscribes",
    open=False,  # fixed in 77dd4be
    signature=_cancel_lost,
)

WATCH_HANGS = KnownBug(
    key="watch-hangs-at-end-of-suspended-run",
    title="Watch from the last event of a suspended run never ends",
    detail=(
        "`Watch(after_sequence=<last sequence>)` on a SUSPENDED run (keep_open_on_suspend "
        "false) tails forever instead of ending: `RunService.watch` returns early only for "
        "finished runs. From sequence 0 the same watch ends at the suspended finish. The typed "
        "client's Stream/Watch reconnect hits it whenever the connection breaks right after "
        "the suspended finish (seen when Redis restarted): the caller's stream then hangs until "
        "someone resumes the run."
    ),
    repro="test_watch_from_the_end_of_a_suspended_run_ends",
    open=False,  # fixed in 77dd4be
    signature=_watch_hangs,
)


def _loading_internal(flag: Flagged) -> bool:
    return flag.kind == "lost" and any("INTERNAL" in problem for problem in flag.problems)


LOADING_INTERNAL = KnownBug(
    key="redis-loading-is-internal",
    title="Starts while Redis loads its data answer INTERNAL, not UNAVAILABLE",
    detail=(
        "While a restarted redis-server loads its append-only file it answers `-LOADING`. "
        "Commands sent through `RedisStore._pipeline` (create: StartAsync, Start, Stream) get "
        "that back as a plain `ResponseError`, which `_reachable()` does not map to "
        '`StoreUnavailable`, so the caller gets INTERNAL ("internal error") and a client '
        "that retries only UNAVAILABLE gives the start up: nothing was stored, the run is lost "
        "to its caller. Outside the pipeline redis-py raises `BusyLoadingError` (a "
        "ConnectionError) and the answer is UNAVAILABLE, as SPEC §3 asks. Fix idea: map "
        "`LOADING`/`BUSY`/`MASTERDOWN`/`TRYAGAIN` error replies (and `BusyLoadingError`) to "
        "`StoreUnavailable` in `_pipeline`."
    ),
    repro="test_start_while_redis_loads_is_unavailable_not_internal",
    open=False,  # fixed while the chaos suite was being written
    signature=_loading_internal,
)

FAILED_STEP_RERUN = KnownBug(
    key="failed-step-runs-again-after-a-crash",
    title="A step recorded as failed runs again when its run is recovered",
    detail=(
        "If a replica dies after a step's failure is stored but before the run's finish is "
        "(the group commit writes them separately; or, in a parallel block, while a sibling "
        "is still running), the run is recovered RUNNING with that step FAILED, and "
        "`Execution._recorded()` treats only SUCCESS and SUSPENDED records as decided: the "
        "failed step is executed again and a second step-result is appended. Recorded results "
        "are no longer exactly-once, a non-retryable step (retries=0) runs twice, and a step "
        "that succeeds on the second try turns a failed run into a success. Fix idea: a "
        "FAILED record decides the step too (replay its error as Outcome(Kind.FAILED))."
    ),
    repro="test_a_failed_step_is_not_run_again_after_a_crash",
    open=False,  # fixed in 77dd4be
    signature=_failed_step_rerun,
)


def _nothing(flag: Flagged) -> bool:
    return False  # it delays runs (a caller's budget covers it); it flags none by itself


RECOVERY_FALLS_BEHIND = KnownBug(
    key="recovery-falls-behind-under-load",
    title="Orphan recovery falls behind under load: a crashed replica's runs wait minutes",
    detail=(
        "Every run keeps a watchdog entry (score: its lease expiry) until `recover` sees it "
        "settled and removes it, and `recover` reads only the 100 lowest due entries per "
        "pass, once a second, and every replica reads the same 100. Above ~100-200 finished "
        "runs/s the due backlog grows without bound (measured: 150 callers, 2 replicas, "
        "~2,000 due entries after 20 s), and a run orphaned by a SIGKILL sits behind it: in "
        "the full chaos run one waited 124 s (fence 2: nothing retried it meanwhile), "
        "p99 latency 15 s. Fix ideas: drop the watchdog entry in the script that settles a "
        "run (or on release), page through all due entries each pass, and shard or offset "
        "the scan per replica."
    ),
    repro="test_a_run_is_recovered_promptly_behind_a_watchdog_backlog",
    open=False,  # fixed in f6bfa9b
    signature=_nothing,
)


def _write_behind_lost(flag: Flagged) -> bool:
    return (
        flag.kind == "lost"
        and flag.status == "running"
        and any("no end within the budget" in problem for problem in flag.problems)
    )


WRITE_BEHIND_LOST = KnownBug(
    key="failed-write-behind-waits-for-the-next-commit",
    title="A start transition whose write-behind fails stays out of the log while its step runs",
    detail=(
        "The group-commit journal writes start transitions (workflow-start, step-start, "
        "step-output) 2 ms behind; when that write fails (Redis restarted or the connection "
        "dropped at that moment) `_flush_quietly` keeps the error for the next commit and "
        "nothing retries the write. The step goes on running, the heartbeat keeps the lease, "
        "the store is fine again, yet the run's log and snapshot do not show the step as "
        "started until the step itself commits, which for a step that waits (for a cancel, a "
        "webhook...) can be never: watchers stall, and a caller waiting for the step-start "
        "(as the chaos callers do before cancelling) waits with it. Only the step's next commit "
        "raises, ending the pass; its lease then expires and the step runs again. Seen once "
        "in four quick chaos runs (a cancel run whose stream stopped at sequence 3). Fix idea: "
        "retry a failed write-behind (with backoff, while the lease is held) instead of "
        "keeping the error, or end the pass at once."
    ),
    repro="test_a_failed_write_behind_reaches_the_log_while_the_step_runs",
    open=False,  # fixed in f6bfa9b
    signature=_write_behind_lost,
)

KNOWN: tuple[KnownBug, ...] = (
    WRITE_BEHIND_LOST,
    LOADING_INTERNAL,
    CANCEL_LOST,
    WATCH_HANGS,
    FAILED_STEP_RERUN,
    RECOVERY_FALLS_BEHIND,
)


def cause(flag: Flagged, bugs: Sequence[KnownBug] = KNOWN) -> KnownBug | None:
    """The open known bug that explains this flagged run, if any."""
    for bug in bugs:
        if bug.open and bug.signature(flag):
            return bug
    return None
