"""Small shared helpers for the tests."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import TypeVar, overload

from watcher.queue import Queue
from watcher.worker import Worker

TESTS = Path(__file__).resolve().parent
T = TypeVar("T")


@overload
async def wait_for(
    predicate: Callable[[], Awaitable[T]], timeout: float, step: float = ..., *, what: str = ...
) -> T: ...


@overload
async def wait_for(
    predicate: Callable[[], T], timeout: float, step: float = ..., *, what: str = ...
) -> T: ...


async def wait_for(
    predicate: Callable[[], Awaitable[T] | T],
    timeout: float,
    step: float = 0.02,
    *,
    what: str = "condition",
) -> T:
    """Poll `predicate()` (sync or async) every `step` seconds until it returns something
    truthy, and return that; after `timeout` seconds fail the test, naming `what`."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout}s")
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
