"""Server-driven cadence and spread schedules (issue 11, items 3 and 4), through the console
script against a real local origin that counts what it receives."""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from pathlib import Path

from watcher.queue import DueScheduler, Queue
from watcher.schedule import Schedule
from watcher.ticker import AWAY_MS, CATCH_UP_WINDOW, catch_up_time

from .helpers import Watcher, wait_for
from .origin import Origin
from .test_cli import watcher


def cadence_yaml(redis_url: str, queue_name: str, base: str, every: str = "1s") -> str:
    return (
        f"redis: {redis_url}\nqueue: {queue_name}\nresources:\n"
        f"  - id: fresh\n    url: {base}fresh\n    every: {every}\n"
        f"  - id: fixed\n    url: {base}fixed\n    every: 1s\n    cadence: fixed\n"
    )


def test_cache_control_holds_runs_and_a_sync_keeps_the_cadence(
    tmp_path: Path, redis_url: str, queue_name: str, origin: Origin
) -> None:
    """max-age=5 on a resource every 1s: at most 7 requests in 30 s, ~30 with cadence: fixed;
    a sync in between keeps the 5 s cadence; a sync that changes the schedule starts anew."""
    origin.set(etag='"v1"', headers=(("Cache-Control", "max-age=5"),))
    config = tmp_path / "watcher.yaml"
    config.write_text(cadence_yaml(redis_url, queue_name, origin.url))
    run = Watcher("run", cwd=tmp_path)
    try:
        asyncio.run(wait_for(lambda: run.saying("watching"), 30, what="run started"))
        started = time.monotonic()
        time.sleep(15)
        synced = watcher("sync", cwd=tmp_path)
        assert synced.returncode == 0, synced.stderr
        time.sleep(started + 30 - time.monotonic())
        counts = Counter(r.path for r in origin.requests if r.at >= started)
        status = json.loads(watcher("status", "--json", cwd=tmp_path).stdout)
        table = watcher("status", cwd=tmp_path).stdout

        # Right after a run, whose hold puts the old schedule's next run 5 s away, a sync to
        # every 2s: the next run comes on the new schedule, sooner than the hold.
        seen = len(origin.requests)
        held_from = asyncio.run(
            wait_for(
                lambda: next((r.at for r in origin.requests[seen:] if r.path == "/fresh"), None),
                10,
                what="a run of /fresh",
            )
        )
        config.write_text(cadence_yaml(redis_url, queue_name, origin.url, every="2s"))
        assert watcher("sync", cwd=tmp_path).returncode == 0
        next_run = asyncio.run(
            wait_for(
                lambda: next(
                    (r.at for r in origin.requests if r.at > held_from and r.path == "/fresh"),
                    None,
                ),
                10,
                what="a run after the sync",
            )
        )
    finally:
        assert run.stop() == 0, run.output
    print(
        f"\ncadence over 30s: max-age=5 → {counts['/fresh']}, fixed → {counts['/fixed']}; "
        f"after a resync, {next_run - held_from:.1f}s to the next run"
    )
    assert 5 <= counts["/fresh"] <= 7, counts
    assert counts["/fixed"] >= 25, counts
    fresh = next(r for r in status["resources"] if r["id"] == "fresh")
    fixed = next(r for r in status["resources"] if r["id"] == "fixed")
    assert fresh["cadence"] == {"seconds": 5.0, "reason": "Cache-Control max-age=5"}
    assert fixed["cadence"] is None
    assert "every 1s → 5s (max-age=5)" in table, table
    assert next_run - held_from < 4.5, "the run after the sync waited for the old hold"


def test_max_every_caps_what_the_server_says(
    tmp_path: Path, redis_url: str, queue_name: str, origin: Origin
) -> None:
    origin.set(etag='"v1"', headers=(("Cache-Control", "max-age=86400"),))
    (tmp_path / "watcher.yaml").write_text(
        f"redis: {redis_url}\nqueue: {queue_name}\nresources:\n"
        f"  - id: daily\n    url: {origin.url}daily\n    every: 1s\n    max_every: 3s\n"
    )
    run = Watcher("run", cwd=tmp_path)
    try:
        asyncio.run(wait_for(lambda: len(origin.requests) >= 3, 15, what="three runs"))
    finally:
        assert run.stop() == 0, run.output
    gaps = [b.at - a.at for a, b in zip(origin.requests, origin.requests[1:], strict=False)]
    assert all(2.5 <= gap <= 4.0 for gap in gaps), gaps
    status = json.loads(watcher("status", "--json", cwd=tmp_path).stdout)
    assert status["resources"][0]["cadence"] == {
        "seconds": 3.0,
        "reason": "Cache-Control max-age=86400, capped by max_every 3s",
    }


def buckets(arrivals: list[float], start: float, end: float, width: float = 0.5) -> list[int]:
    counts = [0] * round((end - start) / width)
    for at in arrivals:
        if start <= at < end:
            counts[int((at - start) / width)] += 1
    return counts


def test_equal_intervals_spread_and_catch_up_after_downtime_is_spread(
    tmp_path: Path, redis_url: str, queue_name: str, origin: Origin
) -> None:
    """1,000 resources every 5s: after the first interval, arrivals per 500 ms stay within
    ±50 % of the mean; after a stop longer than the interval, the catch-up is spread too."""
    every, count = 5.0, 1000
    (tmp_path / "watcher.yaml").write_text(
        f"redis: {redis_url}\nqueue: {queue_name}\n"
        "hosts: {default: {concurrency: 0}}  # 1,000 resources on one local origin\n"
        "resources:\n"
        + "".join(
            f"  - id: r{n}\n    url: {origin.url}r/{n}\n    every: {every:g}s\n"
            for n in range(count)
        )
    )
    origin.set(etag='"v1"')
    run = Watcher("run", cwd=tmp_path)
    try:
        asyncio.run(wait_for(lambda: len(origin.requests) >= count, 30, what="the baselines"))
        steady_from = time.monotonic() + every  # the first interval holds the baselines
        time.sleep(2 * every + 0.5)
    finally:
        assert run.stop() == 0, run.output
    steady = buckets([r.at for r in origin.requests], steady_from, steady_from + every)
    time.sleep(2 * every)  # every resource is now overdue by more than its interval
    stopped = time.monotonic()
    restarted = Watcher("run", "--summary", "2", cwd=tmp_path)
    try:
        back = asyncio.run(
            wait_for(
                lambda: next((r.at for r in origin.requests if r.at > stopped), None),
                30,
                what="a first run after the restart",
            )
        )
        time.sleep(back + every + 0.5 - time.monotonic())
    finally:
        assert restarted.stop() == 0, restarted.output
    catch_up = buckets([r.at for r in origin.requests], back, back + every)
    mean = count * 0.5 / every
    print(f"\nper 500 ms (mean {mean:.0f}): steady {steady}, after downtime {catch_up}")
    assert all(0.5 * mean <= n <= 1.5 * mean for n in steady), steady
    assert all(0.5 * mean <= n <= 1.5 * mean for n in catch_up), catch_up
    assert restarted.saying("overdue spread over their interval"), restarted.output


def test_a_long_interval_catches_up_within_the_window_not_a_whole_day() -> None:
    day_ms = 86_400_000
    now = 1_800_000_000_000
    daily = Schedule.build(every=day_ms / 1000)
    overdue = [
        DueScheduler(f"daily{n}", now - 2 * day_ms, daily, now - 2 * day_ms) for n in range(200)
    ]
    caught_up = [catch_up_time(scheduler, now) for scheduler in overdue]
    times = [c[0] for c in caught_up if c is not None]
    assert len(times) == 200 and all(now <= t < now + CATCH_UP_WINDOW * 1000 for t in times)
    assert len({t // 600_000 for t in times}) == 6  # spread over every 10 min of the hour
    for scheduler, (moved_to, slot) in zip(overdue, filter(None, caught_up), strict=True):
        # The catch-up run stands for a slot: the run after it is a whole interval later
        # when that slot is far off, or it is that very slot.
        after = daily.next_slot(scheduler.id, moved_to, after_ms=slot)
        assert after is not None and after - moved_to >= day_ms - CATCH_UP_WINDOW * 1000
    on_time = DueScheduler("r", now - 1000, Schedule.build(every=60), now - 1000)
    assert catch_up_time(on_time, now) is None  # late by less than its interval: runs now


async def test_a_run_fired_before_a_schedule_change_holds_nothing_back(queue: Queue) -> None:
    """The server said max-age=60 to a run that was in flight when a sync changed the
    schedule: the new schedule's first slot stands."""
    from watcher.jobs import Finished
    from watcher.ticker import Ticker

    await queue.upsert_scheduler("r", name="etag", every=1, immediately=True)
    await Ticker(queue).tick()
    [job] = await queue.take(1, lease_ms=60_000, worker="w", token_prefix="t")
    await asyncio.sleep(0.01)  # a sync in the fire's own millisecond counts as before it
    await queue.upsert_scheduler("r", name="etag", every=2)  # a sync, meanwhile
    changed_to = await queue.redis.zscore(queue.key("schedulers"), "r")
    held = Finished(job.lease, "ok", hold_ms=60_000)
    await queue.finish([held], keep_ms=60_000, keep_runs_ms=60_000, cap=100)
    assert await queue.redis.zscore(queue.key("schedulers"), "r") == changed_to
    # A run fired after the change is held as the server says.
    await queue.redis.zadd(queue.key("schedulers"), {"r": await queue.now_ms()})
    await Ticker(queue).tick()
    [job] = await queue.take(1, lease_ms=60_000, worker="w", token_prefix="u")
    await queue.finish(
        [Finished(job.lease, "ok", hold_ms=60_000)], keep_ms=60_000, keep_runs_ms=60_000, cap=100
    )
    score = await queue.redis.zscore(queue.key("schedulers"), "r")
    assert score is not None and score >= await queue.now_ms() + 59_000


def test_a_run_a_little_late_under_overload_still_fires() -> None:
    """Late by more than its 1 s interval but less than AWAY_MS: the workers are busy, not
    away; moving it would only cost tick work and checks."""
    now = 1_800_000_000_000
    busy = DueScheduler("r", now - 3000, Schedule.build(every=1), now - 3000)
    assert catch_up_time(busy, now) is None
    away = DueScheduler("r", now - AWAY_MS - 1, Schedule.build(every=1), now - AWAY_MS - 1)
    assert catch_up_time(away, now) is not None
