"""The summary line: tallies added up across processes, and what a person reads."""

from __future__ import annotations

import math

from watcher.summary import describe
from watcher.tally import Tally


def test_a_tally_is_taken_once_and_adds_up() -> None:
    worker = Tally(checks=10, not_modified=9, changes=1)
    for lag in (0, 3, 3, 40):
        worker.record_lag(lag)
    taken = worker.take()
    assert (taken.checks, taken.not_modified, sum(taken.lags)) == (10, 9, 4)
    assert worker == Tally()  # counting starts again
    total = Tally(checks=5, failures=2)
    total.add(taken)
    assert (total.checks, total.failures, total.changes, sum(total.lags)) == (15, 2, 1, 4)


def test_the_p99_lag_is_the_bound_99_percent_of_the_runs_started_within() -> None:
    tally = Tally()
    assert tally.lag_p99_ms() is None
    for _ in range(99):
        tally.record_lag(4)
    tally.record_lag(900)
    assert tally.lag_p99_ms() == 5
    tally.record_lag(900)
    assert tally.lag_p99_ms() == 1000
    assert math.isinf(Tally(lags=[0] * 14 + [1]).lag_p99_ms() or 0)


def test_the_line_reads_as_a_sentence() -> None:
    tally = Tally(checks=12_345, not_modified=12_100, changes=3, skipped=2)
    for _ in range(10):
        tally.record_lag(15)
    line = describe(tally, 10.0, waiting=0)
    assert line == (
        "12,345 checks in 10s (1,234/s) · 304 98% · 3 changed · 0 failed · 2 skipped"
        " · lag p99 ≤20ms · 0 waiting"
    )
    assert describe(Tally(), 10.0, waiting=None) == (
        "0 checks in 10s (0/s) · 0 changed · 0 failed · 0 skipped"
    )
