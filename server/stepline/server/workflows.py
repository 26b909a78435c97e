"""The workflow DSL: steps, the graph builder, and the registry of committed workflows.

@step(input=Order, output=Priced)
async def price(ctx: StepContext[Order]) -> Priced: ...

checkout = Workflow("checkout", input=Order, output=Receipt).then(price).then(pay).commit()
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
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


class Step(Generic[I, O]):
    """A unit of work with typed input and output. Create with `@step(...)` or directly."""

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

    def describe(self) -> dict[str, Any]:
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
            description=description,
        )

    return wrap


# A branch condition gets the previous output (JSON) and may be sync or async.
Condition: TypeAlias = Callable[["ConditionContext"], bool | Awaitable[bool]]


@dataclass(frozen=True)
class ConditionContext:
    input: Any
    state: dict[str, Any]
    request_context: dict[str, Any]
    init_data: Any
    step_results: dict[str, Any]

    def get_step_result(self, step: Step[Any, Any] | str) -> Any:
        return self.step_results.get(step if isinstance(step, str) else step.id)


# -- graph nodes -----------------------------------------------------------------------------
# Each node is one entry of the workflow's chain. Later kinds (loops, foreach, map, sleep,
# nested workflows) join this union; the executor dispatches on the node type.


@dataclass(frozen=True)
class StepNode:
    step: Step[Any, Any]


@dataclass(frozen=True)
class ParallelNode:
    steps: tuple[Step[Any, Any], ...]


@dataclass(frozen=True)
class BranchNode:
    branches: tuple[tuple[Condition, Step[Any, Any]], ...]

    @property
    def steps(self) -> tuple[Step[Any, Any], ...]:
        return tuple(s for _, s in self.branches)


Node: TypeAlias = StepNode | ParallelNode | BranchNode


def node_steps(node: Node) -> tuple[Step[Any, Any], ...]:
    if isinstance(node, StepNode):
        return (node.step,)
    return node.steps


def _condition_source(cond: Condition) -> str:
    try:
        return inspect.getsource(cond).strip()[:1000]
    except (OSError, TypeError):
        return getattr(cond, "__qualname__", repr(cond))


def _describe_node(node: Node) -> dict[str, Any]:
    def leaf(s: Step[Any, Any]) -> dict[str, Any]:
        can_suspend = s.resume_schema is not None or s.suspend_schema is not None
        return {
            "type": "step",
            "step": {"id": s.id, "description": s.description, "can_suspend": can_suspend},
        }

    if isinstance(node, StepNode):
        return leaf(node.step)
    if isinstance(node, ParallelNode):
        return {"type": "parallel", "steps": [leaf(s) for s in node.steps]}
    return {
        "type": "conditional",
        "steps": [leaf(s) for s in node.steps],
        "conditions": [
            {"id": f"{s.id}-condition", "source": _condition_source(c)} for c, s in node.branches
        ],
    }


@dataclass
class Workflow:
    """A chain of graph entries; `commit()` freezes it so it can run."""

    id: str
    input: type[Any]
    output: type[Any]
    state: type[Any] | None = None
    description: str = ""
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    nodes: list[Node] = field(default_factory=list)
    committed: bool = False

    def __post_init__(self) -> None:
        if not self.id or not isinstance(self.id, str):
            raise WorkflowDefinitionError("a workflow needs a non-empty string id")
        self.input_schema: Schema[Any] = Schema(self.input)
        self.output_schema: Schema[Any] = Schema(self.output)
        self.state_schema = optional_schema(self.state)

    # -- builder ---------------------------------------------------------------------------
    def _add(self, node: Node) -> Workflow:
        if self.committed:
            raise WorkflowDefinitionError(f"workflow {self.id!r} is committed; it can't change")
        self.nodes.append(node)
        return self

    def then(self, step: Step[Any, Any]) -> Workflow:
        """Run `step` on the previous entry's output."""
        return self._add(StepNode(step))

    def parallel(self, steps: Sequence[Step[Any, Any]]) -> Workflow:
        """Run all `steps` concurrently; the next entry gets {step_id: output}."""
        if not steps:
            raise WorkflowDefinitionError("parallel() needs at least one step")
        return self._add(ParallelNode(tuple(steps)))

    def branch(self, branches: Sequence[tuple[Condition, Step[Any, Any]]]) -> Workflow:
        """Evaluate every condition; run all steps whose condition is true, in parallel.

        The next entry gets {step_id: output} for the steps that ran ({} if none did).
        A condition that raises counts as false.
        """
        if not branches:
            raise WorkflowDefinitionError("branch() needs at least one (condition, step)")
        return self._add(BranchNode(tuple(branches)))

    def commit(self) -> Workflow:
        """Freeze the graph; checks it is non-empty and step ids are unique."""
        if not self.nodes:
            raise WorkflowDefinitionError(f"workflow {self.id!r} has no steps")
        seen: set[str] = set()
        for s in self.steps():
            if s.id in seen:
                raise WorkflowDefinitionError(f"workflow {self.id!r}: duplicate step id {s.id!r}")
            seen.add(s.id)
        self.committed = True
        return self

    # -- introspection ---------------------------------------------------------------------
    def steps(self) -> Iterator[Step[Any, Any]]:
        for node in self.nodes:
            yield from node_steps(node)

    def find_step(self, step_id: str) -> tuple[Step[Any, Any], list[int]] | None:
        """The step with `step_id` and its position (entry index, child index)."""
        for index, node in enumerate(self.nodes):
            for child, s in enumerate(node_steps(node)):
                if s.id == step_id:
                    return s, ([index] if isinstance(node, StepNode) else [index, child])
        return None

    def describe(self) -> dict[str, Any]:
        """Schemas, steps and the step graph (see docs/graph.md)."""
        return {
            "id": self.id,
            "description": self.description,
            "input_schema": self.input_schema.json_schema(),
            "output_schema": self.output_schema.json_schema(),
            "state_schema": self.state_schema.json_schema() if self.state_schema else None,
            "steps": [s.describe() for s in self.steps()],
            "graph": [_describe_node(n) for n in self.nodes],
        }


class Registry:
    """The committed workflows a server runs, by id."""

    def __init__(self, workflows: Iterable[Workflow] = ()) -> None:
        self._workflows: dict[str, Workflow] = {}
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
        """Import `name` and register every committed Workflow at its top level."""
        module = importlib.import_module(name)
        found = [v for v in vars(module).values() if isinstance(v, Workflow) and v.committed]
        for wf in found:
            self.register(wf)
        return found

    def get(self, workflow_id: str) -> Workflow | None:
        return self._workflows.get(workflow_id)

    def __iter__(self) -> Iterator[Workflow]:
        return iter(sorted(self._workflows.values(), key=lambda w: w.id))

    def __len__(self) -> int:
        return len(self._workflows)
