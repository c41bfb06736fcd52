"""Exponential backoff with jitter: the one formula for job retries, webhook retries and
Redis reconnects."""

from __future__ import annotations

import random


def backoff(attempt: int, base: float, cap: float) -> float:
    """Seconds to wait before retry `attempt` (0 for the first retry): base * 2^attempt,
    capped, then a random 50-100% of it so that retries do not move in lockstep."""
    ceiling = min(cap, base * 2 ** min(attempt, 60))
    return random.uniform(ceiling / 2, ceiling)
