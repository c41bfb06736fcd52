"""What the runs of a period came to: counts, start lags and run durations, added up across
processes."""

from __future__ import annotations

import bisect
import math
from dataclasses import MISSING, dataclass, field, fields, replace
from typing import Any

__all__ = ["DURATION_BOUNDS_S", "LAG_BOUNDS_MS", "OUTCOMES", "Tally"]

LAG_BOUNDS_MS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1_000, 2_000, 5_000, 10_000, 60_000)
"""Upper bounds of the start-lag histogram's buckets (a last bucket holds the rest)."""
DURATION_BOUNDS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
"""Upper bounds of the run-duration histogram's buckets (a last bucket holds the rest)."""
OUTCOMES = ("unchanged", "not_modified", "changed", "baseline", "failed", "retrying")
"""How a run ended: `not_modified` is an unchanged run the server answered 304; `failed`
ended the run (for good, or out of attempts); `retrying` failed and runs again."""


def _no_lags() -> list[int]:
    return [0] * (len(LAG_BOUNDS_MS) + 1)


def _no_durations() -> list[int]:
    return [0] * (len(DURATION_BOUNDS_S) + 1)


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
    lag_sum_ms: float = 0.0
    held: dict[tuple[str, str], int] = field(default_factory=dict)
    """Runs held back for their host's budget, by (host, reason: concurrency|rate|paused)."""
    outcomes: dict[tuple[str, str], int] = field(default_factory=dict)
    """Runs by (check name, outcome: one of OUTCOMES)."""
    durations: dict[str, list[int]] = field(default_factory=dict)
    """How long runs took, by check name, as a histogram (DURATION_BOUNDS_S)."""
    duration_sums: dict[str, float] = field(default_factory=dict)
    """Seconds the runs took, by check name."""
    resources: dict[tuple[str, str], int] = field(default_factory=dict)
    """Runs by (resource id, outcome); counted only when asked (`--metrics-per-resource`)."""
    resource_seconds: dict[str, float] = field(default_factory=dict)
    """Seconds the runs took, by resource id; counted only when asked, as `resources`."""
    deliveries: dict[tuple[str, str], int] = field(default_factory=dict)
    """Notifier deliveries by (notifier, outcome)."""

    def record_lag(self, ms: float) -> None:
        self.lags[bisect.bisect_left(LAG_BOUNDS_MS, ms)] += 1
        self.lag_sum_ms += ms

    def record_held(self, host: str, reasons: dict[str, int]) -> None:
        for reason, count in reasons.items():
            self.held[host, reason] = self.held.get((host, reason), 0) + count

    def record_run(self, check: str, outcome: str, seconds: float) -> None:
        """One run of `check` that ended `outcome` (OUTCOMES) after `seconds`."""
        key = (check, outcome)
        self.outcomes[key] = self.outcomes.get(key, 0) + 1
        buckets = self.durations.get(check)
        if buckets is None:
            buckets = self.durations[check] = _no_durations()
        buckets[bisect.bisect_left(DURATION_BOUNDS_S, seconds)] += 1
        self.duration_sums[check] = self.duration_sums.get(check, 0.0) + seconds

    def record_resource(self, resource: str, outcome: str, seconds: float) -> None:
        key = (resource, outcome)
        self.resources[key] = self.resources.get(key, 0) + 1
        self.resource_seconds[resource] = self.resource_seconds.get(resource, 0.0) + seconds

    def record_delivery(self, notifier: str, outcome: str, count: int = 1) -> None:
        """A delivery to `notifier` that ended `outcome` (e.g. sent, retrying, failed):
        `watcher_deliveries_total` in the metrics."""
        key = (notifier, outcome)
        self.deliveries[key] = self.deliveries.get(key, 0) + count

    def add(self, other: Tally) -> None:
        """Count in what `other` counted (copying what it holds: `other` stays its own)."""
        for f in fields(self):
            mine, theirs = getattr(self, f.name), getattr(other, f.name)
            if isinstance(mine, dict):
                for key, value in theirs.items():
                    mine[key] = _sum(mine[key], value) if key in mine else _copy(value)
            else:
                setattr(self, f.name, _sum(mine, theirs))

    def take(self) -> Tally:
        """What was counted since the last take; counting starts again from zero."""
        taken = replace(self)  # takes this tally's lists and dicts along; fresh ones below
        for f in fields(self):
            fresh = f.default if f.default_factory is MISSING else f.default_factory()
            setattr(self, f.name, fresh)
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


def _sum(mine: Any, theirs: Any) -> Any:
    """A count, a sum of seconds or a histogram's buckets, added up."""
    if isinstance(mine, list):
        return [a + b for a, b in zip(mine, theirs, strict=True)]
    return mine + theirs


def _copy(value: Any) -> Any:
    return list(value) if isinstance(value, list) else value
