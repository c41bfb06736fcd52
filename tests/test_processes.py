"""Guarantees across processes: a tick fires once (3), at-least-once under SIGKILL (6),
Redis outages (8), graceful shutdown (9). Each worker is a real OS process."""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from collections import defaultdict
from pathlib import Path

import pytest

from watcher.jobs import JobState
from watcher.queue import Queue, SchedulerSpec
from watcher.redis_server import RedisServer
from watcher.worker import Job, Worker

from .helpers import running, start_worker_process, wait_for


async def _drained(queue: Queue) -> bool:
    counts = await queue.counts()
    return counts["wait"] + counts["active"] + counts["delayed"] == 0


async def test_four_workers_fire_every_slot_exactly_once(queue: Queue, redis_url: str) -> None:
    """4 worker processes tick the same 1,000 schedulers (every 1 s) for 10 s: every
    (scheduler, slot) runs exactly once, and no slot between the first and last is lost."""
    ids = [f"s{i}" for i in range(1000)]
    await queue.upsert_schedulers([SchedulerSpec(id=i, name="record", every=1.0) for i in ids])
    procs = [start_worker_process(redis_url, queue, "record") for _ in range(4)]
    try:
        await asyncio.sleep(10)
        infos = {s.id: s for s in await queue.list_schedulers()}
        await queue.redis.delete(queue.key("schedulers"))  # stop firing; keep the hashes
        await wait_for(lambda: _drained(queue), 15)
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        for proc in procs:
            assert proc.wait(30) == 0
    runs = await queue.redis.hgetall(f"test:{queue.name}:runs")
    assert runs, "nothing ran"
    assert set(runs.values()) == {"1"}, "a slot ran more than once"
    slots: dict[str, list[int]] = defaultdict(list)
    for key in runs:
        sid, at = key.split("|")
        slots[sid].append(int(at))
    final = {s.id: s for s in await queue.list_schedulers()}
    total = 0
    for sid in ids:
        mine = sorted(slots[sid])
        assert len(mine) >= 8, f"{sid} ran only {len(mine)} times in 10 s"
        expected_slots = (mine[-1] - mine[0]) // 1000 + 1
        assert len(mine) + final[sid].skipped == expected_slots, f"{sid}: a slot was lost"
        assert final[sid].count == len(mine)  # every fired run ran
        total += len(mine)
    assert infos  # listed while running
    print(f"\n{total} runs of 1,000 schedulers by 4 workers, each slot once")


async def test_sigkilled_worker_job_reruns_within_lease(queue: Queue, redis_url: str) -> None:
    lease = 2.0
    victim = start_worker_process(redis_url, queue, "slow", "--sleep", "60", "--lease", str(lease))
    ids = await queue.add_jobs("slow", [{"n": n} for n in range(5)])
    started = f"test:{queue.name}:started"
    await wait_for(lambda: _llen_at_least(queue, started, 5), 5)
    victim.send_signal(signal.SIGKILL)
    victim.wait(5)
    killed_at = time.monotonic()
    rescuer = start_worker_process(
        redis_url, queue, "slow", "--sleep", "0.1", "--lease", str(lease)
    )
    try:
        await wait_for(lambda: _llen_at_least(queue, f"test:{queue.name}:done", 5), lease + 5)
        elapsed = time.monotonic() - killed_at
    finally:
        rescuer.send_signal(signal.SIGTERM)
        assert rescuer.wait(30) == 0
    assert elapsed <= lease + 1.5, f"rerun took {elapsed:.1f}s with a {lease}s lease"
    done = await queue.redis.lrange(f"test:{queue.name}:done", 0, -1)
    assert sorted(done) == sorted(ids)  # each once, none lost
    counts = await queue.counts()
    assert counts["completed"] == 5 and counts["failed"] == 0 and counts["active"] == 0
    events = [e for e in await queue.events() if e["event"] == "stalled"]
    assert len(events) == 5


async def _llen_at_least(queue: Queue, key: str, n: int) -> bool:
    return await queue.redis.llen(key) >= n


async def test_sigterm_finishes_in_flight_jobs_and_exits_zero(queue: Queue, redis_url: str) -> None:
    worker = start_worker_process(redis_url, queue, "slow", "--sleep", "0.5", "--grace", "5")
    await queue.add_jobs("slow", [{}, {}, {}])
    await wait_for(lambda: _llen_at_least(queue, f"test:{queue.name}:started", 3), 5)
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(10) == 0
    assert (await queue.counts())["completed"] == 3


async def test_sigterm_returns_jobs_it_cannot_finish_within_grace(
    queue: Queue, redis_url: str
) -> None:
    worker = start_worker_process(redis_url, queue, "slow", "--sleep", "60", "--grace", "0.5")
    ids = await queue.add_jobs("slow", [{}, {}])
    await wait_for(lambda: _llen_at_least(queue, f"test:{queue.name}:started", 2), 5)
    stopped = time.monotonic()
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(10) == 0
    assert time.monotonic() - stopped < 5
    counts = await queue.counts()
    assert counts["wait"] == 2 and counts["active"] == 0
    for jid in ids:
        job = await queue.job(jid)
        assert job and job.state is JobState.WAIT and job.attempt == 0  # attempt given back


async def test_redis_outage_is_survived(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Redis stopped for 10 s and started again on its data directory: the worker says so
    once, reconnects, and every scheduler fires again."""
    server = RedisServer(tmp_path / "redis", persist=True).start()
    queue = Queue.from_url(server.url, "outage")
    runs: dict[str, int] = defaultdict(int)

    async def record(job: Job) -> None:
        runs[job.scheduler_id or ""] += 1

    try:
        ids = [f"r{i}" for i in range(20)]
        await queue.upsert_schedulers([SchedulerSpec(id=i, name="r", every=0.5) for i in ids])
        caplog.set_level(logging.WARNING, logger="watcher.worker")
        async with running(Worker(queue, {"r": record}, lease=5)):
            await asyncio.sleep(1.5)
            server.stop()
            await asyncio.sleep(10)
            before = dict(runs)
            server.start()
            await wait_for(lambda: _all_ran_since(runs, before, ids), 15)
        down = [r for r in caplog.records if "Redis unavailable" in r.getMessage()]
        back = [r for r in caplog.records if "Redis is back" in r.getMessage()]
        assert len(down) == 1 and len(back) == 1
        assert sorted(await queue.scheduler_ids()) == sorted(ids)
    finally:
        await queue.close()
        server.cleanup()


async def _all_ran_since(runs: dict[str, int], before: dict[str, int], ids: list[str]) -> bool:
    return all(runs[i] > before.get(i, 0) for i in ids)


async def test_stop_during_a_redis_outage_returns_within_the_grace(tmp_path: Path) -> None:
    """Guarantee 9 with Redis gone: a job that finishes while Redis is down cannot be
    finished in Redis; stopping still returns cleanly (its lease lapses, it reruns)."""
    server = RedisServer(tmp_path / "redis").start()
    queue = Queue.from_url(server.url, "gone")
    release = asyncio.Event()

    async def held(job: Job) -> None:
        await release.wait()

    try:
        await queue.add_job("held", {})
        worker = Worker(queue, {"held": held}, grace=1.0, tick=False)
        task = asyncio.create_task(worker.run())
        await wait_for(lambda: _active(queue), 5)
        server.stop()
        release.set()
        worker.stop()
        started = time.monotonic()
        await asyncio.wait_for(task, 15)  # returns, no exception escapes
        assert time.monotonic() - started < 10
    finally:
        await queue.close()
        server.cleanup()


async def _active(queue: Queue) -> bool:
    return (await queue.counts())["active"] == 1
