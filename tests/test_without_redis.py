"""The engine on the memory store needs no redis package: an embedding that never talks to
Redis imports the run API and runs workflows with redis uninstalled (here: its import
blocked in a fresh interpreter)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

_ROOT = Path(__file__).resolve().parent.parent

_SCRIPT = """
import asyncio, json, sys
sys.modules["redis"] = None  # `import redis` now raises ImportError

from stepline.server.runs import ResumeParams, RunService, StartParams
from stepline.server.store import MemoryStore
from stepline.server.worker import Worker
from stepline.server.workflows import Registry


async def main() -> None:
    registry = Registry()
    registry.load_module("tests.flows")
    store = MemoryStore()
    worker = Worker(store, registry, lease_ttl=5.0, poll_block=0.2)
    await worker.start()
    service = RunService(store, registry, runner=worker)
    try:
        started = await service.start(StartParams("sequence", {"value": 1}))
        done = await service.wait(started.run_id, timeout=30)
        asked = await service.start(StartParams("approval", {"question": "ship?"}))
        suspended = await service.wait(asked.run_id, timeout=30)
        resumed = await service.resume(
            ResumeParams(asked.run_id, label="approval", resume_data={"approved": True})
        )
        approved = await service.wait(
            asked.run_id, after_sequence=resumed.after_sequence, timeout=30
        )
    finally:
        await worker.stop(grace=1.0)
    print(json.dumps({
        "redis_loaded": sys.modules.get("redis") is not None,
        "sequence": [done.snapshot.status.value, done.snapshot.result],
        "suspended": suspended.snapshot.status.value,
        "approval": [approved.snapshot.status.value, approved.snapshot.result],
    }))


asyncio.run(main())
"""


def test_the_engine_runs_on_the_memory_store_without_the_redis_package() -> None:
    finished = subprocess.run(
        [sys.executable, "-c", _SCRIPT],
        cwd=_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert finished.returncode == 0, finished.stderr
    report = json.loads(finished.stdout.strip().splitlines()[-1])
    assert report == {
        "redis_loaded": False,
        "sequence": ["success", {"value": 4}],
        "suspended": "suspended",
        "approval": ["success", {"approved": True, "note": "none", "question": "ship?"}],
    }
