"""Reliability suites for Stepline: load, soak and chaos against real `stepline serve`
replicas sharing one redis-server. Run `python -m reliability --help`; the results go to
RELIABILITY.md at the repository root. Quick variants run in CI (tests/test_reliability_quick.py).
"""
