"""Per-host budgets, held in Redis for every worker at once (DESIGN guarantee 11): a host's
concurrency and rate hold across worker processes, a dead worker's slots come back with its
lease, a host that answers 429 with Retry-After is paused for every worker."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from watcher.hosts import Budget
from watcher.queue import Queue
from watcher.ticker import Ticker

from .helpers import Watcher, wait_for
from .origin import Origin
from .test_cli import watcher

LEASE_MS = 1000


@pytest.fixture
def second_origin() -> Iterator[Origin]:
    with Origin() as origin:
        yield origin


def resources(prefix: str, base: str, count: int, every: str = "1s") -> str:
    return "".join(
        f"  - id: {prefix}{n}\n    url: {base}{prefix}/{n}\n    every: {every}\n"
        for n in range(count)
    )


def most_in_any_second(arrivals: list[float]) -> int:
    arrivals = sorted(arrivals)
    most, start = 0, 0
    for end, at in enumerate(arrivals):
        while at - arrivals[start] >= 1.0:
            start += 1
        most = max(most, end - start + 1)
    return most


def busy_runs_taken_at(redis_url: str, queue_name: str, prefix: str) -> list[float]:
    """When each run of the resources named `prefix`... was taken, in seconds by Redis's clock
    (finished runs keep their job hash for a minute)."""
    with redis.Redis.from_url(redis_url, decode_responses=True) as client:
        keys = list(client.scan_iter(match=f"watcher:{{{queue_name}}}:job:*", count=1000))
        rows = [client.hmget(key, "sched", "started") for key in keys]
    return [int(started) / 1000 for sched, started in rows if sched and sched.startswith(prefix)
            and started]  # fmt: skip


def test_a_host_budget_holds_across_three_worker_processes(
    tmp_path: Path, redis_url: str, queue_name: str, origin: Origin, second_origin: Origin
) -> None:
    """200 resources every 1s on one host with rate 20/s, burst 5, concurrency 4: never more
    than 4 in flight nor 25 in a second; 50 resources on another host run at full speed."""
    origin.set(delay=0.05)
    other = second_origin.url.replace("127.0.0.1", "localhost")
    (tmp_path / "watcher.yaml").write_text(
        f"redis: {redis_url}\nqueue: {queue_name}\n"
        "hosts:\n  127.0.0.1: {rate: 20/s, burst: 5, concurrency: 4}\n"
        "resources:\n" + resources("busy", origin.url, 200) + resources("free", other, 50)
    )
    run = Watcher("run", "--processes", "3", "--summary", "2", cwd=tmp_path)
    try:
        asyncio.run(wait_for(lambda: run.saying("watching"), 30, what="run started"))
        started = time.monotonic()
        time.sleep(8.0)
        window = time.monotonic() - started
    finally:
        assert run.stop() == 0, run.output
    busy = [r.at for r in origin.requests]
    free = second_origin.requests
    taken = busy_runs_taken_at(redis_url, queue_name, "busy")
    print(
        f"\npoliteness: {len(busy)} requests to the limited host, in flight at most "
        f"{origin.max_in_flight}, at most {most_in_any_second(taken)} taken and "
        f"{most_in_any_second(busy)} received in any second; "
        f"{len(free)} to the other host in about {window:.0f}s"
    )
    assert origin.max_in_flight <= 4
    # The bucket admits runs on Redis's clock: never more than rate + burst in a second.
    assert len(taken) >= len(busy) and most_in_any_second(taken) <= 25
    # At the origin, a request may arrive some ms after another one taken a second later
    # (each worker sends when its own event loop gets to it): one or two more, not a burst.
    assert most_in_any_second(busy) <= 27
    assert len(busy) >= 20 * 5  # the budget is used, not starved
    assert len(free) >= 50 * 5  # the other host is not held back by the busy one
    held = run.saying("held by host budgets: 127.0.0.1")
    assert held, run.output  # the summary says which host and which limit holds checks back
    status = watcher("status", cwd=tmp_path)
    assert "held so far: concurrency" in status.stdout, status.stdout
    hosts = json.loads(watcher("status", "--json", cwd=tmp_path).stdout)["hosts"]
    assert hosts["127.0.0.1"]["held"]["rate"] > 0


async def test_the_slots_of_a_worker_that_died_come_back_with_its_lease(queue: Queue) -> None:
    await queue.set_budgets({"default": Budget(concurrency=2)})
    for n in range(4):
        await queue.upsert_scheduler(
            f"r{n}",
            name="etag",
            data={"url": f"http://host.test/{n}"},
            every=3600,
            immediately=True,
        )
    await Ticker(queue).tick()
    taken, held = await queue.take_counting_held(
        10, lease_ms=LEASE_MS, worker="dead", token_prefix="d"
    )
    assert len(taken) == 2 and held == {"host.test": {"concurrency": 2}}
    # The worker dies here: its two runs are never finished nor extended.
    assert await queue.take(10, lease_ms=LEASE_MS, worker="alive", token_prefix="a") == []
    await asyncio.sleep(LEASE_MS / 1000 + 0.1)
    await queue.recover(limit=100, keep_ms=60_000, cap=100)
    rescued = await wait_for(
        lambda: queue.take(10, lease_ms=LEASE_MS, worker="alive", token_prefix="b"),
        5,
        what="the dead worker's slots",
    )
    assert len(rescued) == 2  # the concurrency holds: two at a time, the other two parked
    states = await queue.host_states(["host.test"])
    assert states["host.test"].in_flight == 2 and states["host.test"].parked == 2


def test_a_429_with_retry_after_pauses_the_host_for_every_worker(
    tmp_path: Path, redis_url: str, queue_name: str, origin: Origin, second_origin: Origin
) -> None:
    other = second_origin.url.replace("127.0.0.1", "localhost")
    (tmp_path / "watcher.yaml").write_text(
        f"redis: {redis_url}\nqueue: {queue_name}\nresources:\n"
        + resources("pushy", origin.url, 5)
        + resources("calm", other, 5)
    )
    run = Watcher("run", "--processes", "2", cwd=tmp_path)
    try:
        asyncio.run(wait_for(lambda: len(origin.requests) >= 10, 30, what="first checks"))
        origin.set(status=429, reason="Too Many Requests", headers=(("Retry-After", "5"),))
        first = asyncio.run(
            wait_for(
                lambda: next((r for r in origin.requests if r.status == 429), None),
                10,
                what="a 429",
            )
        )
        origin.set(status=None, reason=None, headers=())
        asyncio.run(
            wait_for(
                lambda: any(r.at > first.at + 4 for r in origin.requests), 15, what="the pause end"
            )
        )
    finally:
        assert run.stop() == 0, run.output
    during = [r.at - first.at for r in origin.requests if 0.5 < r.at - first.at < 4.8]
    calm = [r for r in second_origin.requests if first.at < r.at < first.at + 4.8]
    print(f"\n429 pause: {len(during)} requests to the paused host, {len(calm)} to the other")
    assert during == [], during
    assert len(calm) >= 5 * 3  # the other host is untouched
    assert len(run.saying("pausing host 127.0.0.1 for 5s")) == 1, run.output


async def test_a_host_without_a_concurrency_limit_is_paused_too(queue: Queue) -> None:
    """A run keeps its host only when its end must free a slot; a 429 finds the host anyway."""
    from watcher.jobs import Finished

    await queue.set_budgets({"default": Budget(concurrency=0)})
    for n in range(2):
        await queue.upsert_scheduler(
            f"r{n}", name="etag", data={"url": f"http://host.test/{n}"}, every=3600
        )
    await queue.redis.zadd(queue.key("schedulers"), {"r0": await queue.now_ms()})
    await Ticker(queue).tick()
    [first] = await queue.take(1, lease_ms=60_000, worker="w", token_prefix="a")
    assert await queue.redis.hget(queue.key(f"job:{first.id}"), "host") is None
    pushed_back = Finished(first.lease, "retry", delay_ms=60_000, payload="429", pause="5000")
    await queue.finish([pushed_back], keep_ms=60_000, keep_runs_ms=60_000, cap=100)
    await queue.redis.zadd(queue.key("schedulers"), {"r1": await queue.now_ms()})
    await Ticker(queue).tick()
    taken, held = await queue.take_counting_held(1, lease_ms=60_000, worker="w", token_prefix="b")
    assert taken == [] and held == {"host.test": {"paused": 1}}


async def test_status_finds_hosts_from_the_names_the_scripts_keep_not_a_scan(queue: Queue) -> None:
    """A host gets budget state from take.lua (held, rate, slots) or finish.lua (a pause):
    each names it in `hostnames`, which status reads instead of scanning the keyspace."""
    from watcher.jobs import Finished

    await queue.set_budgets({"default": Budget(interval_ms=0, burst=1, concurrency=1)})
    for n, url in enumerate(("http://one.test/a", "http://two.test/b", "http://plain.test/")):
        await queue.upsert_scheduler(f"r{n}", name="etag", data={"url": url}, every=3600,
                                     immediately=True)  # fmt: skip
    await Ticker(queue).tick()
    jobs = await queue.take(3, lease_ms=60_000, worker="w", token_prefix="t")
    assert await queue.host_names() == ["one.test", "plain.test", "two.test"]  # slots taken

    await queue.set_budgets({})
    await queue.redis.delete(queue.key("hostnames"))
    paused = next(job for job in jobs if job.data["url"].startswith("http://two."))
    await queue.finish([Finished(paused.lease, "retry", 1000, "HTTP 429", pause="5000")],
                       keep_ms=60_000, keep_runs_ms=60_000, cap=100)  # fmt: skip
    assert await queue.host_names() == ["two.test"]
    states = await queue.host_states(["two.test"])
    assert states["two.test"].paused_until_ms is not None
