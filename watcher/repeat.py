"""Repeating a worker's steps until stopped, riding out Redis outages.

The worker's loops (fetch, tick, keep) share one `Repeater`: one stop signal, and one
outage at a time, said once when it starts and once when it ends, however many loops
notice it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable

from watcher.backoff import backoff
from watcher.queue import UNAVAILABLE

__all__ = ["Repeater"]

log = logging.getLogger("watcher.worker")

QUIET_AFTER_RECOVERY = 5.0
"""Seconds after Redis came back in which a failure is the same outage (stale pooled
connections fail once more right after a reconnect): logged at debug, not again."""


class Repeater:
    def __init__(self) -> None:
        self.stopping = asyncio.Event()
        self._down_since: float | None = None
        self._back_at = -60.0

    def stop(self) -> None:
        self.stopping.set()

    @property
    def stopped(self) -> bool:
        return self.stopping.is_set()

    async def repeat(self, step: Callable[[], Awaitable[float]]) -> None:
        """Run `step` until stopped, pausing for the seconds it returns."""
        failures = 0
        while not self.stopped:
            try:
                pause = await step()
            except UNAVAILABLE as exc:
                failures += 1
                await self.redis_failed(exc, failures)
                continue
            except Exception:  # a bug or a script error must not silently stop a loop
                log.exception("worker step %s failed; retrying in 1 s", step.__name__)
                pause = 1.0
            failures = 0
            self.redis_ok()
            await self.sleep(pause)

    async def sleep(self, seconds: float) -> None:
        """Sleep, or less when stopped meanwhile."""
        if seconds > 0:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.stopping.wait(), seconds)

    async def redis_failed(self, exc: BaseException, attempt: int) -> None:
        """Note a failed call (said once per outage) and back off before the next one."""
        if self._down_since is None:
            self._down_since = time.monotonic()
            recently_back = time.monotonic() - self._back_at < QUIET_AFTER_RECOVERY
            log.log(
                logging.DEBUG if recently_back else logging.WARNING,
                "Redis unavailable (%s); reconnecting with backoff",
                exc,
            )
        await self.sleep(backoff(attempt, 0.1, 5.0))

    def redis_ok(self) -> None:
        if self._down_since is not None:
            down_for = time.monotonic() - self._down_since
            if time.monotonic() - self._back_at >= QUIET_AFTER_RECOVERY:
                log.warning("Redis is back after %.1fs; resuming", down_for)
            self._down_since = None
            self._back_at = time.monotonic()
