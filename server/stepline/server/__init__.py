"""Stepline server: the workflow DSL for authors, and the engine behind `stepline serve`."""

from .context import NonRetryableError, StepContext
from .workflows import (
    ConditionContext,
    Registry,
    RetryPolicy,
    Step,
    Workflow,
    WorkflowDefinitionError,
    step,
)

__all__ = [
    "ConditionContext",
    "NonRetryableError",
    "Registry",
    "RetryPolicy",
    "Step",
    "StepContext",
    "Workflow",
    "WorkflowDefinitionError",
    "step",
]
