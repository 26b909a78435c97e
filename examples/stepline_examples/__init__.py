"""Example workflows served by `stepline serve` by default (`--workflows stepline_examples`)."""

from .flows import EXAMPLE_RUNS, approval, greet, onboarding

__all__ = ["EXAMPLE_RUNS", "approval", "greet", "onboarding"]
