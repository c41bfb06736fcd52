"""The courier: a worker's loop that sends the outbox's deliveries (watcher/outbox.py) to the
notifiers this worker knows, one attempt each, and records how each went.

A failed attempt is retried with backoff (1 s doubling to 5 min, jittered) until its
notifier's deadline; said once when a delivery first fails and once when it succeeds after
failing or fails for good, whatever the number of attempts in between.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Mapping

from watcher.backoff import backoff
from watcher.change import Change
from watcher.notifiers import Notifier, NotifyFailed
from watcher.outbox import Delivery, DeliveryResult
from watcher.queue import Queue
from watcher.repeat import Repeater

__all__ = ["Courier"]

log = logging.getLogger("watcher.notify")

BATCH = 32
"""Deliveries taken (and sent concurrently) at a time."""
IDLE = 1.0
"""Seconds between looks at the outbox when nothing was due and nothing poked."""
DEFAULT_BOUND = 60.0
"""Seconds an attempt may take when its notifier does not say (`max_duration`)."""
LEASE_MARGIN = 10.0
"""Seconds a lease outlasts its notifier's longest attempt: a live worker is never
overtaken."""
RETRY_BASE, RETRY_CAP = 1.0, 300.0


class Courier:
    def __init__(
        self,
        queue: Queue,
        notifiers: Mapping[str, Notifier],
        repeater: Repeater | None = None,
        *,
        on_result: Callable[[str, str], None] | None = None,
    ) -> None:
        self.queue = queue
        self.notifiers = dict(notifiers)
        self.repeater = repeater or Repeater()
        self.on_result = on_result
        """Called with (notifier, outcome) for each attempt: sent, retry or failed."""
        self._poked = asyncio.Event()
        self._idle_now = asyncio.Event()
        self._idle_now.set()

    def poke(self) -> None:
        """Something was just put in the outbox: look now rather than at the next idle tick."""
        self._poked.set()

    async def run(self) -> None:
        """Send until the repeater is stopped."""
        self._idle_now.clear()
        try:
            await self.repeater.repeat(self.step)
        finally:
            self._idle_now.set()

    async def stop(self, grace: float) -> None:
        """Stop once the deliveries in hand are sent and recorded, waiting at most `grace`
        seconds (those still in hand then go to another worker when their lease ends)."""
        self.repeater.stop()
        self.poke()
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._idle_now.wait(), grace)

    async def step(self) -> float:
        """Send what is due; returns 0 (the waiting for a poke or IDLE is done here)."""
        if not self.notifiers:
            await self._idle(IDLE)
            return 0.0
        notifiers = dict(self.notifiers)  # a reload may swap them meanwhile
        leases_ms = {
            name: round((self._bound(notifier) + LEASE_MARGIN) * 1000)
            for name, notifier in notifiers.items()
        }
        taken = await self.queue.outbox.take(leases_ms, BATCH)
        if taken:
            results = await asyncio.gather(*(self._send(notifiers, d) for d in taken))
            await self._record(results)
            if len(taken) == BATCH:
                return 0.0
        await self._idle(IDLE)
        return 0.0

    async def _idle(self, seconds: float) -> None:
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._poked.wait(), seconds)
        self._poked.clear()

    @staticmethod
    def _bound(notifier: Notifier) -> float:
        bound = getattr(notifier, "max_duration", None)
        return DEFAULT_BOUND if bound is None else float(bound)

    async def _send(self, notifiers: Mapping[str, Notifier], delivery: Delivery) -> DeliveryResult:
        """One attempt; whatever happens, an outcome to record (never an exception: the
        batch's other outcomes must be recorded too)."""
        notifier = notifiers[delivery.notifier]
        try:
            message = Change.from_dict({**delivery.payload, "id": delivery.change_id or None})
        except (TypeError, ValueError) as exc:  # a record no version of watcher wrote
            return DeliveryResult(delivery, "failed", error=f"unreadable delivery: {exc}")
        try:
            await asyncio.wait_for(notifier.send(message), self._bound(notifier))
        except NotifyFailed as exc:
            if not exc.retryable:
                return DeliveryResult(delivery, "failed", error=exc.reason)
            return self._retry(delivery, exc.reason, exc.retry_after)
        except TimeoutError:
            return self._retry(delivery, f"timed out after {self._bound(notifier):g}s")
        except Exception as exc:  # a notifier's bug: retried like a failure
            # Its type only: the message of an arbitrary exception may quote a secret.
            log.debug("notifier %r crashed", delivery.notifier, exc_info=exc)
            return self._retry(delivery, f"notifier crashed: {type(exc).__name__}")
        return DeliveryResult(delivery, "sent")

    @staticmethod
    def _retry(delivery: Delivery, reason: str, retry_after: float | None = None) -> DeliveryResult:
        delay = backoff(delivery.attempt - 1, RETRY_BASE, RETRY_CAP)
        if retry_after is not None:  # the target's word, within reason
            delay = max(delay, min(retry_after, RETRY_CAP))
        return DeliveryResult(delivery, "retry", round(delay * 1000), reason)

    async def _record(self, results: list[DeliveryResult]) -> None:
        """Record the outcomes; through a Redis outage, keep trying (an unrecorded sent
        delivery would be sent again when its lease ends)."""
        attempt = 0
        while True:
            try:
                codes = await self.queue.outbox.done(results)
                break
            except Exception as exc:
                attempt += 1
                if self.repeater.stopped or not await self.repeater.ride_out(exc, attempt):
                    raise
        for result, code in zip(results, codes, strict=True):
            self._tell(result, code)

    def _tell(self, result: DeliveryResult, code: int) -> None:
        delivery = result.delivery
        what = f"{delivery.payload.get('event', 'change')} of {delivery.payload.get('resource')}"
        outcome = {1: "sent", 2: "retry", 3: "failed"}.get(code)
        if outcome is None:
            return  # the lease was lost: another worker has it
        if self.on_result is not None:
            self.on_result(delivery.notifier, outcome)
        if code == 1 and delivery.attempt > 1:
            log.info(
                "%s: %s delivered after %d attempts", delivery.notifier, what, delivery.attempt
            )
        elif code == 2 and delivery.attempt == 1:
            log.warning(
                "%s: %s not delivered: %s; retrying with backoff",
                delivery.notifier,
                what,
                result.error,
            )
        elif code == 3:
            log.warning(
                "%s: %s failed for good after %d attempts: %s",
                delivery.notifier,
                what,
                delivery.attempt,
                result.error,
            )
