"""The workflow DSL: steps, the graph builder, and the registry of committed workflows.

@step(input=Order, output=Priced)
async def price(ctx: StepContext[Order]) -> Priced: ...

checkout = Workflow("checkout", input=Order, output=Receipt).then(price).then(pay).commit()
"""

from __future__ import annotations

import importlib
import inspect
import math
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Generic, TypeAlias, TypeVar

from .context import StepContext
from .schema import Schema, optional_schema

I = TypeVar("I")  # noqa: E741
O = TypeVar("O")  # noqa: E741

StepFn: TypeAlias = Callable[[StepContext[Any]], Awaitable[Any]]


class WorkflowDefinitionError(Exception):
    """A workflow or step was defined incorrectly (caught at definition or commit time)."""


@dataclass(frozen=True)
class RetryPolicy:
    """`attempts` retries after the first try; delay before retry n is delay * backoff**(n-1)."""

    attempts: int = 0
    delay: float = 0.0
    backoff: float = 1.0

    def __post_init__(self) -> None:
        if self.attempts < 0 or self.delay < 0 or self.backoff < 1:
            raise WorkflowDefinitionError(
                "retry policy needs attempts >= 0, delay >= 0, backoff >= 1"
            )

    def delay_before(self, retry: int) -> float:
        return self.delay * self.backoff ** (retry - 1)


def _check_timeout(timeout: float | None, what: str) -> float | None:
    """A step time limit: None (no limit) or a finite number of seconds above zero."""
    if timeout is None:
        return None
    if (
        isinstance(timeout, bool)
        or not isinstance(timeout, int | float)
        or not math.isfinite(timeout)
        or timeout <= 0
    ):
        raise WorkflowDefinitionError(f"{what}: timeout must be a number of seconds above 0")
    return float(timeout)


class Step(Generic[I, O]):
    """A unit of work with typed input and output. Create with `@step(...)` or directly.

    `timeout` limits each attempt of `execute` to that many seconds (None: the workflow's
    `step_timeout`, else no limit); an attempt that overruns fails with StepTimeoutError and
    is retried like any other failure.
    """

    def __init__(
        self,
        id: str,
        execute: StepFn,
        *,
        input: type[I],
        output: type[O],
        resume: type[Any] | None = None,
        suspend: type[Any] | None = None,
        state: type[Any] | None = None,
        retries: int | None = None,
        timeout: float | None = None,
        description: str = "",
    ) -> None:
        if not id or not isinstance(id, str):
            raise WorkflowDefinitionError("a step needs a non-empty string id")
        if "." in id:
            raise WorkflowDefinitionError(f"step id {id!r} must not contain '.' (used for nesting)")
        if not inspect.iscoroutinefunction(execute):
            raise WorkflowDefinitionError(f"step {id!r}: execute must be an async function")
        if retries is not None and retries < 0:
            raise WorkflowDefinitionError(f"step {id!r}: retries must be >= 0")
        self.timeout = _check_timeout(timeout, f"step {id!r}")
        self.id = id
        self.execute = execute
        self.description = description or (inspect.getdoc(execute) or "")
        self.input_schema: Schema[I] = Schema(input)
        self.output_schema: Schema[O] = Schema(output)
        self.resume_schema = optional_schema(resume)
        self.suspend_schema = optional_schema(suspend)
        self.state_schema = optional_schema(state)
        self.retries = retries

    def __repr__(self) -> str:
        return f"Step({self.id!r})"

    def effective_timeout(self, default: float | None) -> float | None:
        """The time limit of one attempt in a workflow whose `step_timeout` is `default`."""
        return self.timeout if self.timeout is not None else default

    def describe(self, default_timeout: float | None = None) -> dict[str, Any]:
        """Schemas and settings; `timeout` as it applies in a workflow whose `step_timeout`
        is `default_timeout`."""

        def schema(s: Schema[Any] | None) -> dict[str, Any] | None:
            return s.json_schema() if s is not None else None

        return {
            "id": self.id,
            "description": self.description,
            "input_schema": schema(self.input_schema),
            "output_schema": schema(self.output_schema),
            "resume_schema": schema(self.resume_schema),
            "suspend_schema": schema(self.suspend_schema),
            "state_schema": schema(self.state_schema),
            "retries": -1 if self.retries is None else self.retries,
            "timeout": self.effective_timeout(default_timeout),
        }


def step(
    id: str | None = None,
    *,
    input: type[Any],
    output: type[Any],
    resume: type[Any] | None = None,
    suspend: type[Any] | None = None,
    state: type[Any] | None = None,
    retries: int | None = None,
    timeout: float | None = None,
    description: str = "",
) -> Callable[[StepFn], Step[Any, Any]]:
    """Decorate an async `execute(ctx)` function into a Step (id defaults to its name)."""

    def wrap(fn: StepFn) -> Step[Any, Any]:
        return Step(
            id or fn.__name__,
            fn,
            input=input,
            output=output,
            resume=resume,
            suspend=suspend,
            state=state,
            retries=retries,
            timeout=timeout,
            description=description,
        )

    return wrap


# A condition gets the previous output (JSON) and may be sync or async.
Condition: TypeAlias = Callable[["ConditionContext"], bool | Awaitable[bool]]
# A map function reshapes the previous output; it gets a StepContext whose input is that output.
MapFn: TypeAlias = Callable[[StepContext[Any]], Any]


@dataclass(frozen=True)
class ConditionContext:
    """What a branch or loop condition sees. For loops, `input` is the iteration's output."""

    input: Any
    state: dict[str, Any]
    request_context: dict[str, Any]
    init_data: Any
    # Outputs of the steps that succeeded so far, by step id (read-only).
    step_results: Mapping[str, Any]
    iteration_count: int = 0

    def get_step_result(self, step: Step[Any, Any] | str) -> Any:
        return self.step_results.get(step if isinstance(step, str) else step.id)


# -- graph nodes -----------------------------------------------------------------------------
# Each node is one entry of the workflow's chain; the executor dispatches on the node type.
# A "unit" is what runs in a slot: a Step, or a committed Workflow used as a step (nested).

Unit: TypeAlias = "Step[Any, Any] | Workflow"


@dataclass(frozen=True)
class StepNode:
    step: Unit
    # "step", or "mapping" for the synthetic step `map()` creates from `fn`.
    kind: str = "step"
    fn: Any = None


@dataclass(frozen=True)
class ParallelNode:
    steps: tuple[Unit, ...]


@dataclass(frozen=True)
class BranchNode:
    branches: tuple[tuple[Condition, Unit], ...]

    @property
    def steps(self) -> tuple[Unit, ...]:
        return tuple(s for _, s in self.branches)


@dataclass(frozen=True)
class LoopNode:
    step: Unit
    condition: Condition
    # dountil repeats until the condition holds; dowhile while it holds.
    until: bool


@dataclass(frozen=True)
class ForeachNode:
    step: Step[Any, Any]
    concurrency: int


@dataclass(frozen=True)
class SleepNode:
    id: str
    seconds: float | None = None
    # Absolute wake-up time (epoch seconds) for sleep_until.
    until: float | None = None


Node: TypeAlias = StepNode | ParallelNode | BranchNode | LoopNode | ForeachNode | SleepNode


def node_units(node: Node) -> tuple[Unit, ...]:
    """The units a node runs (a sleep runs none)."""
    if isinstance(node, StepNode | LoopNode | ForeachNode):
        return (node.step,)
    if isinstance(node, SleepNode):
        return ()
    return node.steps


def node_ids(node: Node) -> tuple[str, ...]:
    """The ids a node records results under."""
    if isinstance(node, SleepNode):
        return (node.id,)
    return tuple(u.id for u in node_units(node))


def _condition_source(cond: Condition) -> str:
    try:
        return inspect.getsource(cond).strip()[:1000]
    except (OSError, TypeError):
        return getattr(cond, "__qualname__", repr(cond))


def _describe_unit(unit: Unit, default_timeout: float | None) -> dict[str, Any]:
    if isinstance(unit, Workflow):
        return {
            "type": "workflow",
            "id": unit.id,
            "description": unit.description,
            "graph": [_describe_node(n, unit.step_timeout) for n in unit.nodes],
        }
    can_suspend = unit.resume_schema is not None or unit.suspend_schema is not None
    return {
        "type": "step",
        "step": {
            "id": unit.id,
            "description": unit.description,
            "can_suspend": can_suspend,
            "timeout": unit.effective_timeout(default_timeout),
        },
    }


def _describe_node(node: Node, default_timeout: float | None) -> dict[str, Any]:
    """One graph entry; `default_timeout` is the workflow's `step_timeout`."""

    def unit(u: Unit) -> dict[str, Any]:
        return _describe_unit(u, default_timeout)

    if isinstance(node, StepNode):
        if node.kind == "mapping":
            return {
                "type": "mapping",
                "id": node.step.id,
                "source": _condition_source(node.fn),
                "timeout": node.step.effective_timeout(default_timeout)
                if isinstance(node.step, Step)
                else None,
            }
        return unit(node.step)
    if isinstance(node, ParallelNode):
        return {"type": "parallel", "steps": [unit(s) for s in node.steps]}
    if isinstance(node, BranchNode):
        return {
            "type": "conditional",
            "steps": [unit(s) for s in node.steps],
            "conditions": [
                {"id": f"{s.id}-condition", "source": _condition_source(c)}
                for c, s in node.branches
            ],
        }
    if isinstance(node, LoopNode):
        return {
            "type": "loop",
            "loop_type": "dountil" if node.until else "dowhile",
            "step": unit(node.step),
            "condition": {
                "id": f"{node.step.id}-condition",
                "source": _condition_source(node.condition),
            },
        }
    if isinstance(node, ForeachNode):
        return {"type": "foreach", "step": unit(node.step), "concurrency": node.concurrency}
    if node.until is not None:
        return {"type": "sleep_until", "id": node.id, "until": node.until}
    return {"type": "sleep", "id": node.id, "seconds": node.seconds}


@dataclass
class Workflow:
    """A chain of graph entries; `commit()` freezes it so it can run.

    A committed workflow can itself be used as a step of another workflow (nested).
    `step_timeout` is the time limit (seconds) of each attempt of every step of this graph that
    sets none itself (`map` steps included; a nested workflow's steps follow its own).
    """

    id: str
    input: type[Any]
    output: type[Any]
    state: type[Any] | None = None
    description: str = ""
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    step_timeout: float | None = None
    nodes: list[Node] = field(default_factory=list)
    committed: bool = False

    def __post_init__(self) -> None:
        if not self.id or not isinstance(self.id, str):
            raise WorkflowDefinitionError("a workflow needs a non-empty string id")
        if "." in self.id:
            raise WorkflowDefinitionError(f"workflow id {self.id!r} must not contain '.'")
        self.step_timeout = _check_timeout(self.step_timeout, f"workflow {self.id!r}")
        self.input_schema: Schema[Any] = Schema(self.input)
        self.output_schema: Schema[Any] = Schema(self.output)
        self.state_schema = optional_schema(self.state)

    def __hash__(self) -> int:
        return id(self)

    # -- builder ---------------------------------------------------------------------------
    def _add(self, node: Node) -> Workflow:
        if self.committed:
            raise WorkflowDefinitionError(f"workflow {self.id!r} is committed; it can't change")
        for unit in node_units(node):
            if isinstance(unit, Workflow) and not unit.committed:
                raise WorkflowDefinitionError(
                    f"nested workflow {unit.id!r} must be committed before it is used"
                )
        self.nodes.append(node)
        return self

    def then(self, step: Unit) -> Workflow:
        """Run `step` (or a committed workflow) on the previous entry's output."""
        return self._add(StepNode(step))

    def parallel(self, steps: Sequence[Unit]) -> Workflow:
        """Run all `steps` concurrently; the next entry gets {step_id: output}."""
        if not steps:
            raise WorkflowDefinitionError("parallel() needs at least one step")
        return self._add(ParallelNode(tuple(steps)))

    def branch(self, branches: Sequence[tuple[Condition, Unit]]) -> Workflow:
        """Evaluate every condition; run all steps whose condition is true, in parallel.

        The next entry gets {step_id: output} for the steps that ran ({} if none did).
        A condition that raises counts as false.
        """
        if not branches:
            raise WorkflowDefinitionError("branch() needs at least one (condition, step)")
        return self._add(BranchNode(tuple(branches)))

    def dowhile(self, step: Unit, condition: Condition) -> Workflow:
        """Run `step`, then again on its own output while `condition` holds."""
        return self._add(LoopNode(step, condition, until=False))

    def dountil(self, step: Unit, condition: Condition) -> Workflow:
        """Run `step`, then again on its own output until `condition` holds."""
        return self._add(LoopNode(step, condition, until=True))

    def foreach(self, step: Step[Any, Any], *, concurrency: int = 1) -> Workflow:
        """Run `step` once per element of the previous output (a list), at most
        `concurrency` at a time; the next entry gets the outputs in input order."""
        if concurrency < 1:
            raise WorkflowDefinitionError("foreach concurrency must be at least 1")
        return self._add(ForeachNode(step, concurrency))

    def map(self, fn: MapFn, *, id: str | None = None) -> Workflow:
        """Reshape the previous output with `fn(ctx)` (sync or async) in a synthetic step.

        Its id is `map_<workflow id>_<n>` (n counts map entries from 1) unless given, so it
        is the same across restarts and deployments.
        """
        ordinal = 1 + sum(1 for n in self.nodes if isinstance(n, StepNode) and n.kind == "mapping")

        async def execute(ctx: StepContext[Any]) -> Any:
            result = fn(ctx)
            if inspect.isawaitable(result):
                result = await result
            return result

        mapping: Step[Any, Any] = Step(
            id or f"map_{self.id}_{ordinal}", execute, input=_AnyJson, output=_AnyJson
        )
        return self._add(StepNode(mapping, kind="mapping", fn=fn))

    def sleep(self, seconds: float, *, id: str | None = None) -> Workflow:
        """Wait durably; the run is WAITING meanwhile and the previous output passes through."""
        if seconds < 0:
            raise WorkflowDefinitionError("sleep duration must not be negative")
        return self._add(SleepNode(id or self._sleep_id(), seconds=seconds))

    def sleep_until(self, when: datetime | float, *, id: str | None = None) -> Workflow:
        """Wait durably until `when` (an aware datetime or epoch seconds)."""
        at = when.timestamp() if isinstance(when, datetime) else float(when)
        return self._add(SleepNode(id or self._sleep_id(), until=at))

    def _sleep_id(self) -> str:
        return f"sleep_{self.id}_{1 + sum(1 for n in self.nodes if isinstance(n, SleepNode))}"

    def commit(self) -> Workflow:
        """Freeze the graph; checks it is non-empty and step ids are unique."""
        if not self.nodes:
            raise WorkflowDefinitionError(f"workflow {self.id!r} has no steps")
        seen: set[str] = set()
        for node in self.nodes:
            for uid in node_ids(node):
                if uid in seen:
                    raise WorkflowDefinitionError(
                        f"workflow {self.id!r}: duplicate step id {uid!r}"
                    )
                seen.add(uid)
        self.committed = True
        return self

    # -- introspection ---------------------------------------------------------------------
    def steps(self) -> Iterator[Step[Any, Any]]:
        """Every Step of this workflow's own graph (nested workflows not expanded)."""
        for node in self.nodes:
            for unit in node_units(node):
                if isinstance(unit, Step):
                    yield unit

    def find(self, unit_id: str) -> tuple[int, Node, Unit | None] | None:
        """The entry index and node holding `unit_id` (and the unit; None for a sleep)."""
        for index, node in enumerate(self.nodes):
            if isinstance(node, SleepNode) and node.id == unit_id:
                return index, node, None
            for unit in node_units(node):
                if unit.id == unit_id:
                    return index, node, unit
        return None

    def describe(self) -> dict[str, Any]:
        """Schemas, steps and the step graph (see docs/graph.md)."""
        return {
            "id": self.id,
            "description": self.description,
            "input_schema": self.input_schema.json_schema(),
            "output_schema": self.output_schema.json_schema(),
            "state_schema": self.state_schema.json_schema() if self.state_schema else None,
            "steps": [s.describe(self.step_timeout) for s in self.steps()],
            "graph": [_describe_node(n, self.step_timeout) for n in self.nodes],
        }


_AnyJson: Any = Any


@dataclass(frozen=True)
class ExampleRun:
    """A sample run a workflows module offers (`EXAMPLE_RUNS`), started by `--example-runs`."""

    workflow_id: str
    input_data: Any


class Registry:
    """The committed workflows a server runs, by id."""

    def __init__(self, workflows: Iterable[Workflow] = ()) -> None:
        self._workflows: dict[str, Workflow] = {}
        self.example_runs: list[ExampleRun] = []
        for wf in workflows:
            self.register(wf)

    def register(self, workflow: Workflow) -> None:
        if not workflow.committed:
            raise WorkflowDefinitionError(
                f"workflow {workflow.id!r} is not committed; call .commit() first"
            )
        existing = self._workflows.get(workflow.id)
        if existing is not None and existing is not workflow:
            raise WorkflowDefinitionError(f"two workflows share the id {workflow.id!r}")
        self._workflows[workflow.id] = workflow

    def load_module(self, name: str) -> list[Workflow]:
        """Import `name` and register every committed Workflow at its top level, and the
        module's `EXAMPLE_RUNS` (a sequence of `(workflow_id, input)` pairs), if it has one."""
        module = importlib.import_module(name)
        found = [v for v in vars(module).values() if isinstance(v, Workflow) and v.committed]
        for wf in found:
            self.register(wf)
        for workflow_id, input_data in getattr(module, "EXAMPLE_RUNS", ()):
            self.example_runs.append(ExampleRun(str(workflow_id), input_data))
        return found

    def get(self, workflow_id: str) -> Workflow | None:
        return self._workflows.get(workflow_id)

    def __iter__(self) -> Iterator[Workflow]:
        return iter(sorted(self._workflows.values(), key=lambda w: w.id))

    def __len__(self) -> int:
        return len(self._workflows)
