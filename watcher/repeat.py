"""Repeating a worker's steps until stopped, riding out Redis outages and refusals.

The worker's loops (fetch, tick, keep, finish) share one `Repeater`: one stop signal, and
one episode of each kind at a time, said once when it starts and once when it ends, however
many loops notice it:
  outage    Redis cannot be reached (UNAVAILABLE); it ends with the next call that works;
  refusal   Redis answers but refuses writes (out of memory, a read-only replica, a disk it
            cannot write: `Refusal`); it ends when a write goes through (the keeper's
            heartbeat probes for that), since reads keep working meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable

from watcher.backoff import backoff
from watcher.queue import UNAVAILABLE, Refusal, refusal

__all__ = ["Repeater"]

log = logging.getLogger("watcher.worker")

QUIET_AFTER_RECOVERY = 5.0
"""Seconds after Redis came back in which a failure is the same episode (stale pooled
connections fail once more right after a reconnect; memory hovers at its limit): logged at
debug, not again."""


class Repeater:
    def __init__(self) -> None:
        self.stopping = asyncio.Event()
        self._down_since: float | None = None
        self._back_at = -60.0
        self.refusal: Refusal | None = None
        """Why Redis refuses writes now; None while it accepts them."""
        self._refused_since = 0.0
        self._refusal_said = False
        self._writes_back_at = -60.0
        self._writes_open = asyncio.Event()
        self._writes_open.set()

    def stop(self) -> None:
        self.stopping.set()
        self._writes_open.set()

    @property
    def stopped(self) -> bool:
        return self.stopping.is_set()

    async def repeat(self, step: Callable[[], Awaitable[float]]) -> None:
        """Run `step` until stopped, pausing for the seconds it returns."""
        failures = 0
        while not self.stopped:
            try:
                pause = await step()
            except Exception as exc:
                failures += 1
                if await self.ride_out(exc, failures):
                    continue
                # a bug or a script error must not silently stop a loop
                log.exception("worker step %s failed; retrying in 1 s", step.__name__)
                pause = 1.0
            failures = 0
            self.redis_ok()
            await self.sleep(pause)

    async def ride_out(self, exc: BaseException, attempt: int) -> bool:
        """If `exc` is Redis unreachable or refusing writes, note it (said once per episode),
        back off before `attempt` + 1, and return True; else (a bug) return False."""
        if isinstance(exc, UNAVAILABLE):
            await self.redis_failed(exc, attempt)
            return True
        refused = refusal(exc)
        if refused is None:
            return False
        self.refused(refused)
        await self.sleep(backoff(attempt, 0.1, 5.0))
        return True

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

    def refused(self, reason: Refusal) -> None:
        """Note that Redis refused a write (said once per episode)."""
        if self.refusal is None:
            self._refused_since = time.monotonic()
            self._refusal_said = time.monotonic() - self._writes_back_at >= QUIET_AFTER_RECOVERY
            log.log(
                logging.WARNING if self._refusal_said else logging.DEBUG,
                "Redis refuses writes: %s; backing off",
                reason,
            )
            self._writes_open.clear()
        self.refusal = reason

    def writes_accepted(self) -> None:
        """A write went through: a refusal episode, if any, is over."""
        if self.refusal is None:
            return
        if self._refusal_said:
            refused_for = time.monotonic() - self._refused_since
            log.warning("Redis accepts writes again after %.1fs; resuming", refused_for)
        self.refusal = None
        self._writes_back_at = time.monotonic()
        self._writes_open.set()

    async def writes_open(self) -> None:
        """Wait while Redis refuses writes (returns at once when stopped)."""
        await self._writes_open.wait()
