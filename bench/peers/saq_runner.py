"""saq runner for bench/queue.py (runs in bench/.venvs/saq).

Usage: python saq_runner.py '<task JSON>'; prints one JSON line of results on stdout.
Tasks: {"mode": "versions"} and {"mode": "e2e", "url", "n", "concurrency", "timeout"}.
saq has no bulk enqueue: `Queue.enqueue` (one Lua call per job) is called from 50 concurrent
tasks (saq itself caps concurrent Redis operations at `max_concurrent_ops`, default 20).
"""

from __future__ import annotations

import asyncio
import time

from _runner import Countdown, concurrently, e2e_result, serve_task, settle, wait_until

ENQUEUE_LANES = 50


async def e2e(task: dict) -> dict:
    from saq import Queue, Worker

    n = task["n"]
    queue = Queue.from_url(task["url"], name="bench")
    await queue.connect()
    t0 = time.perf_counter()
    await concurrently(n, ENQUEUE_LANES, lambda i: queue.enqueue("noop", i=i))
    enqueue_s = time.perf_counter() - t0
    queued = await queue.count("queued")
    if queued != n:
        raise RuntimeError(f"{queued} jobs queued, expected {n}")

    countdown = Countdown(n)

    async def noop(ctx: dict, *, i: int) -> None:
        countdown.hit()

    async def none_incomplete() -> bool:
        return not await queue.count("incomplete")

    worker = Worker(queue, functions=[("noop", noop)], concurrency=task.get("concurrency", 50))
    t_start = time.perf_counter()
    run = asyncio.create_task(worker.start())
    try:
        await countdown.wait(task.get("timeout", 300))
    finally:
        # let the last handlers' completions land before stopping (stop cancels in-flight tasks)
        await wait_until(none_incomplete)
        drain_s = time.perf_counter() - (countdown.t_done or time.perf_counter())
        await worker.stop()
        await settle(run)
    incomplete = await queue.count("incomplete")
    await queue.disconnect()
    return e2e_result(
        countdown,
        t_start,
        enqueue_s,
        f"concurrent enqueue ({ENQUEUE_LANES} tasks)",
        drain_s=drain_s,
        incomplete_after=incomplete,
    )


if __name__ == "__main__":
    serve_task(("saq", "redis", "hiredis"), {"e2e": e2e})
