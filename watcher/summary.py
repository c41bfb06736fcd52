"""One line every few seconds on what the workers did: what a person reads at any scale.

12,345 checks in 10s (1,234/s) · 304 98% · 3 changed · 0 failed · 0 skipped
· lag p99 ≤20ms · 0 waiting    (one line in the log)
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable

from watcher.queue import UNAVAILABLE, Queue
from watcher.tally import Tally

__all__ = ["describe", "summarize"]

log = logging.getLogger("watcher.summary")


def describe(tally: Tally, seconds: float, waiting: int | None) -> str:
    rate = tally.checks / seconds if seconds > 0 else 0.0
    parts = [f"{tally.checks:,} checks in {seconds:.0f}s ({rate:,.0f}/s)"]
    if tally.checks:
        parts.append(f"304 {tally.not_modified / tally.checks:.0%}")
    parts += [f"{tally.changes:,} changed", f"{tally.failures:,} failed"]
    if tally.retries:
        parts.append(f"{tally.retries:,} retrying")
    parts.append(f"{tally.skipped:,} skipped")
    if tally.spread:
        parts.append(f"{tally.spread:,} overdue spread over their interval")
    lag = tally.lag_p99_ms()
    if lag is not None:
        parts.append("lag p99 >60s" if math.isinf(lag) else f"lag p99 ≤{_ms(lag)}")
    if waiting is not None:
        parts.append(f"{waiting:,} waiting")
    if tally.held:
        (host, reason), count = max(tally.held.items(), key=lambda item: item[1])
        others = len({host for host, _ in tally.held}) - 1
        more = f" (+{others} more host{'s' * (others > 1)})" if others else ""
        parts.append(f"held by host budgets: {host} {reason} {count:,}{more}")
    return " · ".join(parts)


async def summarize(queue: Queue, take: Callable[[], Tally], every: float) -> None:
    """Log a summary every `every` seconds of what `take()` counted since the last one,
    until cancelled."""
    last = time.monotonic()
    while True:
        await asyncio.sleep(every)
        now = time.monotonic()
        tally = take()
        try:
            waiting: int | None = (await queue.counts())["wait"]
        except UNAVAILABLE:
            waiting = None  # the workers say the outage; the summary goes on without it
        log.info("%s", describe(tally, now - last, waiting))
        last = now


def _ms(ms: float) -> str:
    return f"{ms / 1000:g}s" if ms >= 1000 else f"{ms:g}ms"
