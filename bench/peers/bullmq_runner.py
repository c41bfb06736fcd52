"""BullMQ (Python port) runner for bench/queue.py (runs in bench/.venvs/bullmq).

Usage: python bullmq_runner.py '<task JSON>'; prints one JSON line of results on stdout.
Tasks: {"mode": "versions"}, {"mode": "e2e", "url", "n", "concurrency", "timeout"} and
{"mode": "schedulers", "url", "n", "every"}.
Enqueue is BullMQ's bulk `Queue.addBulk` (one MULTI pipeline per 1,000 jobs). BullMQ has no
bulk scheduler upsert: `Queue.upsertJobScheduler` is called from 50 concurrent tasks (the
Python port gives each Queue a single connection, so these calls share it).
"""

from __future__ import annotations

import asyncio
import time

from _runner import Countdown, concurrently, e2e_result, serve_task, settle, used_memory

BATCH = 1000
LANES = 50


async def e2e(task: dict) -> dict:
    from bullmq import Queue, Worker

    n, url = task["n"], task["url"]
    queue = Queue("bench", {"connection": url})
    t0 = time.perf_counter()
    for start in range(0, n, BATCH):
        stop = min(n, start + BATCH)
        await queue.addBulk([{"name": "noop", "data": {"i": i}} for i in range(start, stop)])
    enqueue_s = time.perf_counter() - t0
    queued = (await queue.getJobCounts("wait"))["wait"]
    if queued != n:
        raise RuntimeError(f"{queued} jobs waiting, expected {n}")

    countdown = Countdown(n)

    async def noop(job, token) -> None:
        countdown.hit()

    async def all_completed() -> bool:
        return (await queue.getJobCounts("completed"))["completed"] >= n

    opts = {"connection": url, "concurrency": task.get("concurrency", 50), "autorun": False}
    worker = Worker("bench", noop, opts)
    t_start = time.perf_counter()
    run = asyncio.create_task(worker.run())
    try:
        # let the last handlers' completions land before closing the worker
        drain_s = await countdown.drain(task.get("timeout", 300), all_completed)
    finally:
        await worker.close()
        await settle(run)
    completed = (await queue.getJobCounts("completed"))["completed"]
    await queue.close()
    return e2e_result(
        countdown,
        t_start,
        enqueue_s,
        f"bulk addBulk ({BATCH}/call)",
        drain_s=drain_s,
        completed=completed,
    )


async def schedulers(task: dict) -> dict:
    import redis.asyncio as aioredis
    from bullmq import Queue

    n, url = task["n"], task["url"]
    every_ms = int(task.get("every", 10.0) * 1000)
    client = aioredis.from_url(url)
    queue = Queue("bench", {"connection": url})
    # one warm-up upsert loads the scripts and creates the queue's fixed keys before the baseline
    await queue.upsertJobScheduler("warmup", {"every": every_ms}, "noop", {})
    before = await used_memory(client)
    t0 = time.perf_counter()
    await concurrently(
        n,
        LANES,
        lambda i: queue.upsertJobScheduler(f"sched-{i}", {"every": every_ms}, "noop", {"i": i}),
    )
    upsert_s = time.perf_counter() - t0
    after = await used_memory(client)
    count = await queue.getJobSchedulersCount()
    await queue.close()
    await client.aclose()
    if count != n + 1:
        raise RuntimeError(f"{count} schedulers, expected {n + 1}")
    return {
        "upsert_s": upsert_s,
        "upsert_rate": n / upsert_s,
        "upsert_method": f"concurrent upsertJobScheduler ({LANES} tasks)",
        "bytes_per_scheduler": (after - before) / n,
    }


if __name__ == "__main__":
    serve_task(("bullmq", "redis", "hiredis"), {"e2e": e2e, "schedulers": schedulers})
