"""arq runner for bench/queue.py (runs in bench/.venvs/arq).

Usage: python arq_runner.py '<task JSON>'; prints one JSON line of results on stdout.
Tasks: {"mode": "versions"} and {"mode": "e2e", "url", "n", "max_jobs", "poll_delay", "timeout"}.
arq has no bulk enqueue: `enqueue_job` (WATCH/MULTI per job) is called from 50 concurrent tasks.
"""

from __future__ import annotations

import asyncio
import time

from _runner import Countdown, concurrently, e2e_result, serve_task, settle

ENQUEUE_LANES = 50


async def e2e(task: dict) -> dict:
    from arq import create_pool
    from arq.connections import RedisSettings
    from arq.worker import Worker, func

    n = task["n"]
    settings = RedisSettings.from_dsn(task["url"])
    pool = await create_pool(settings)
    t0 = time.perf_counter()
    await concurrently(n, ENQUEUE_LANES, lambda i: pool.enqueue_job("noop", i))
    enqueue_s = time.perf_counter() - t0
    queued = await pool.zcard(pool.default_queue_name)
    await pool.aclose(close_connection_pool=True)
    if queued != n:
        raise RuntimeError(f"{queued} jobs queued, expected {n}")

    countdown = Countdown(n)

    async def noop(ctx: dict, i: int) -> None:
        countdown.hit()

    kwargs = {"max_jobs": task.get("max_jobs", 50), "burst": True, "handle_signals": False}
    if task.get("poll_delay") is not None:
        kwargs["poll_delay"] = task["poll_delay"]
    worker = Worker(functions=[func(noop, name="noop")], redis_settings=settings, **kwargs)
    t_start = time.perf_counter()
    run = asyncio.create_task(worker.async_run())
    try:
        await countdown.wait(task.get("timeout", 300))
    finally:
        await settle(run)  # burst mode: returns once the queue is empty
        await worker.close()
    return e2e_result(
        countdown,
        t_start,
        enqueue_s,
        f"concurrent enqueue_job ({ENQUEUE_LANES} tasks)",
        completed=worker.jobs_complete,
    )


if __name__ == "__main__":
    serve_task(("arq", "redis", "hiredis"), {"e2e": e2e})
