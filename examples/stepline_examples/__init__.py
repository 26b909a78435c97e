"""Example workflows served by `stepline serve` by default (`--workflows stepline_examples`)."""

from .flows import approval, greet, onboarding

__all__ = ["approval", "greet", "onboarding"]
