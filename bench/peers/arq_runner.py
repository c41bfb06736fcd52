"""arq runner for bench/queue.py (runs in bench/.venvs/arq).

Usage: python arq_runner.py '<task JSON>'; prints one JSON line of results on stdout.
Tasks: {"mode": "versions"} and {"mode": "e2e", "url", "n", "max_jobs", "poll_delay", "timeout"}.
arq has no bulk enqueue: `enqueue_job` (WATCH/MULTI per job) is called from 50 concurrent tasks.
"""

from __future__ import annotations

import asyncio
import time

from _runner import concurrently, serve_task

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

    done = asyncio.Event()
    state = {"count": 0, "t_done": 0.0}

    async def noop(ctx: dict, i: int) -> None:
        state["count"] += 1
        if state["count"] == n:
            state["t_done"] = time.perf_counter()
            done.set()

    kwargs = {"max_jobs": task.get("max_jobs", 50), "burst": True, "handle_signals": False}
    if task.get("poll_delay") is not None:
        kwargs["poll_delay"] = task["poll_delay"]
    worker = Worker(functions=[func(noop, name="noop")], redis_settings=settings, **kwargs)
    t_start = time.perf_counter()
    run = asyncio.create_task(worker.async_run())
    try:
        await asyncio.wait_for(done.wait(), task.get("timeout", 300))
    except TimeoutError:
        raise RuntimeError(
            f"only {state['count']}/{n} jobs ran in {task.get('timeout')} s"
        ) from None
    finally:
        try:
            await asyncio.wait_for(run, 30)  # burst mode: returns once the queue is empty
        except (TimeoutError, asyncio.CancelledError):
            run.cancel()
        await worker.close()
    e2e_s = state["t_done"] - t_start
    return {
        "enqueue_s": enqueue_s,
        "enqueue_rate": n / enqueue_s,
        "enqueue_method": f"concurrent enqueue_job ({ENQUEUE_LANES} tasks)",
        "e2e_s": e2e_s,
        "e2e_rate": n / e2e_s,
        "handled": state["count"],
        "completed": worker.jobs_complete,
    }


if __name__ == "__main__":
    serve_task(("arq", "redis", "hiredis"), {"e2e": e2e})
