"""What every runner of bench/queue.py shares: the task protocol and small helpers.

Stdlib only: it is imported from each library's own virtual environment. A runner is run
as `python <lib>_runner.py '<task JSON>'` and prints one JSON line: {"ok": true, ...} or
{"ok": false, "error": ...} (exit 1).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import platform
import sys
import time
import traceback
from collections.abc import Awaitable, Callable
from importlib import metadata
from typing import Any

Mode = Callable[[dict], dict | Awaitable[dict]]


def versions(*packages: str) -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in packages:
        with contextlib.suppress(metadata.PackageNotFoundError):
            out[name] = metadata.version(name)
    return out


class Countdown:
    """Counts the calls of an e2e run's no-op handler: at the n-th, `t_done` is stamped
    (time.perf_counter) and `done` is set."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.count = 0
        self.t_done = 0.0
        self.done = asyncio.Event()

    def hit(self) -> None:
        self.count += 1
        if self.count == self.n:
            self.t_done = time.perf_counter()
            self.done.set()

    async def wait(self, timeout: float) -> None:
        """Until the n-th call; RuntimeError after `timeout` seconds."""
        try:
            await asyncio.wait_for(self.done.wait(), timeout)
        except TimeoutError:
            raise RuntimeError(f"only {self.count}/{self.n} jobs ran in {timeout} s") from None

    async def drain(self, timeout: float, completed: Callable[[], Awaitable[bool]]) -> float | None:
        """Until the n-th call (as `wait`), then up to 10 s until `completed()` (the library
        reports every job completed): the seconds from the n-th call to that, else None."""
        await self.wait(timeout)
        if await wait_until(completed):
            return time.perf_counter() - self.t_done
        return None


async def wait_until(
    condition: Callable[[], Awaitable[bool]], seconds: float = 10, poll: float = 0.005
) -> bool:
    """Poll `condition` every `poll` seconds until it holds (True) or `seconds` pass (False)."""
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        if await condition():
            return True
        await asyncio.sleep(poll)
    return False


async def settle(run: asyncio.Task, timeout: float = 30) -> None:
    """Wait for a worker's run task to return (after it was told to stop, or in burst mode,
    once the queue is empty); cancel it if it does not in time."""
    try:
        await asyncio.wait_for(run, timeout)
    except (TimeoutError, asyncio.CancelledError):
        run.cancel()


def e2e_result(
    countdown: Countdown, t_start: float, enqueue_s: float, enqueue_method: str, **extra: Any
) -> dict:
    """An e2e task's result: `countdown.n` jobs enqueued in `enqueue_s` seconds, then run from
    `t_start` (the worker's start) until the handler's n-th call."""
    n = countdown.n
    e2e_s = countdown.t_done - t_start
    return {
        "enqueue_s": enqueue_s,
        "enqueue_rate": n / enqueue_s,
        "enqueue_method": enqueue_method,
        "e2e_s": e2e_s,
        "e2e_rate": n / e2e_s,
        "handled": countdown.count,
        **extra,
    }


async def used_memory(client: Any) -> int:
    """INFO `used_memory` of a redis.asyncio client (any library's)."""
    return int((await client.info("memory"))["used_memory"])


async def concurrently(n: int, lanes: int, fn: Callable[[int], Awaitable[Any]]) -> None:
    """Call fn(0..n-1) from `lanes` concurrent tasks."""
    numbers = iter(range(n))

    async def lane() -> None:
        for i in numbers:
            await fn(i)

    await asyncio.gather(*(lane() for _ in range(lanes)))


def serve_task(packages: tuple[str, ...], modes: dict[str, Mode]) -> None:
    """Run the task given on the command line and print its one JSON line."""
    task = json.loads(sys.argv[1])
    try:
        if task["mode"] == "versions":
            result: dict = {"versions": versions(*packages)}
        elif task["mode"] in modes:
            result = modes[task["mode"]](task)
            if inspect.isawaitable(result):
                result = asyncio.run(result)
        else:
            raise ValueError(f"unknown mode {task['mode']!r}")
    except Exception as exc:
        traceback.print_exc()
        print(json.dumps({"ok": False, "error": f"{type(exc).__name__}: {exc}"}), flush=True)
        sys.exit(1)
    print(json.dumps({"ok": True, **result}), flush=True)
