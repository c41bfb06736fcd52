"""Small shared helpers for the tests."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import os
import signal
import subprocess
import sys
import tempfile
import threading
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


WATCHER = str(Path(sys.executable).parent / "watcher")


class Watcher:
    """A `watcher` command running in the background; its output (stdout and the log on
    stderr) is collected line by line as it comes."""

    def __init__(self, *args: str, cwd: Path) -> None:
        environment = {k: v for k, v in os.environ.items() if k != "WATCHER_REDIS_URL"}
        environment.update({"COLUMNS": "400", "NO_COLOR": "1"})
        self.process = subprocess.Popen(
            [WATCHER, *args],
            cwd=cwd,
            env=environment,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line.rstrip("\n"))

    def saying(self, text: str) -> list[str]:
        return [line for line in self.lines if text in line]

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    def stop(self, within: float = 45.0) -> int:
        """SIGTERM, then the exit code (the output is complete afterwards). A command that
        has not stopped `within` seconds is killed, and the test fails with its output."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            code = self.process.wait(within)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)
            self._reader.join(5)
            raise AssertionError(f"not stopped {within}s after SIGTERM:\n{self.output}") from None
        self._reader.join(5)
        return code
