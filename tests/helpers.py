"""Small shared helpers for the tests."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

from watcher.queue import Queue
from watcher.worker import Worker

TESTS = Path(__file__).resolve().parent


async def wait_for(
    predicate: Callable[[], Awaitable[bool]], timeout: float, step: float = 0.02
) -> None:
    deadline = time.monotonic() + timeout
    while not await predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        await asyncio.sleep(step)


@contextlib.asynccontextmanager
async def running(worker: Worker) -> AsyncIterator[Worker]:
    task = asyncio.create_task(worker.run())
    try:
        yield worker
    finally:
        worker.stop()
        await asyncio.wait_for(task, 30)


def start_worker_process(
    url: str, queue: Queue | str, mode: str, *args: str
) -> subprocess.Popen[str]:
    name = queue.name if isinstance(queue, Queue) else queue
    proc = subprocess.Popen(
        [sys.executable, str(TESTS / "worker_proc.py"), url, name, mode, *args],
        stdout=subprocess.PIPE,
        stderr=tempfile.TemporaryFile(),  # noqa: SIM115 -- not a pipe: a chatty worker must not block
        text=True,
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "ready"
    return proc
