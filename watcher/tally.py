"""What the runs of a period came to: counts and start lags, added up across processes."""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass, field, fields, replace

__all__ = ["LAG_BOUNDS_MS", "Tally"]

LAG_BOUNDS_MS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1_000, 2_000, 5_000, 10_000, 60_000)
"""Upper bounds of the start-lag histogram's buckets (a last bucket holds the rest)."""


def _no_lags() -> list[int]:
    return [0] * (len(LAG_BOUNDS_MS) + 1)


@dataclass
class Tally:
    checks: int = 0
    not_modified: int = 0
    changes: int = 0
    failures: int = 0
    """Runs that ended failed (permanently, or out of attempts)."""
    retries: int = 0
    skipped: int = 0
    """Ticks skipped because the resource's previous run was still going (no overlap)."""
    spread: int = 0
    """Overdue runs (a whole interval missed: workers were stopped) moved to a time spread
    over their interval rather than fired at once."""
    lags: list[int] = field(default_factory=_no_lags)
    """How late runs started after their planned time, as a histogram (LAG_BOUNDS_MS)."""
    held: dict[tuple[str, str], int] = field(default_factory=dict)
    """Runs held back for their host's budget, by (host, reason: concurrency|rate|paused)."""

    def record_lag(self, ms: float) -> None:
        self.lags[bisect.bisect_left(LAG_BOUNDS_MS, ms)] += 1

    def record_held(self, host: str, reasons: dict[str, int]) -> None:
        for reason, count in reasons.items():
            self.held[host, reason] = self.held.get((host, reason), 0) + count

    def add(self, other: Tally) -> None:
        for f in fields(self):
            if f.name not in ("lags", "held"):
                setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))
        self.lags = [a + b for a, b in zip(self.lags, other.lags, strict=True)]
        for (host, reason), count in other.held.items():
            self.record_held(host, {reason: count})

    def take(self) -> Tally:
        """What was counted since the last take; counting starts again from zero."""
        taken = replace(self, lags=list(self.lags), held=dict(self.held))
        for f in fields(self):
            setattr(self, f.name, _no_lags() if f.name == "lags" else 0)
        self.held = {}
        return taken

    def lag_p99_ms(self) -> float | None:
        """The bound under which 99 % of the runs started: inf past the last bound, None
        when no run started."""
        total = sum(self.lags)
        if not total:
            return None
        seen = 0
        for bound, count in zip((*LAG_BOUNDS_MS, math.inf), self.lags, strict=True):
            seen += count
            if seen >= 0.99 * total:
                return bound
        return math.inf
