"""saq runner for bench/queue.py (runs in bench/.venvs/saq).

Usage: python saq_runner.py '<task JSON>'; prints one JSON line of results on stdout.
Tasks: {"mode": "versions"} and {"mode": "e2e", "url", "n", "concurrency", "timeout"}.
saq has no bulk enqueue: `Queue.enqueue` (one Lua call per job) is called from 50 concurrent
tasks (saq itself caps concurrent Redis operations at `max_concurrent_ops`, default 20).
"""

from __future__ import annotations

import asyncio
import time

from _runner import concurrently, serve_task

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

    done = asyncio.Event()
    state = {"count": 0, "t_done": 0.0}

    async def noop(ctx: dict, *, i: int) -> None:
        state["count"] += 1
        if state["count"] == n:
            state["t_done"] = time.perf_counter()
            done.set()

    worker = Worker(queue, functions=[("noop", noop)], concurrency=task.get("concurrency", 50))
    t_start = time.perf_counter()
    run = asyncio.create_task(worker.start())
    try:
        await asyncio.wait_for(done.wait(), task.get("timeout", 300))
    except TimeoutError:
        raise RuntimeError(
            f"only {state['count']}/{n} jobs ran in {task.get('timeout')} s"
        ) from None
    finally:
        # let the last handlers' completions land before stopping (stop cancels in-flight tasks)
        deadline = time.perf_counter() + 10
        while await queue.count("incomplete") and time.perf_counter() < deadline:
            await asyncio.sleep(0.005)
        drain_s = time.perf_counter() - (state["t_done"] or time.perf_counter())
        await worker.stop()
        try:
            await asyncio.wait_for(run, 30)
        except (TimeoutError, asyncio.CancelledError):
            run.cancel()
    e2e_s = state["t_done"] - t_start
    incomplete = await queue.count("incomplete")
    await queue.disconnect()
    return {
        "enqueue_s": enqueue_s,
        "enqueue_rate": n / enqueue_s,
        "enqueue_method": f"concurrent enqueue ({ENQUEUE_LANES} tasks)",
        "e2e_s": e2e_s,
        "e2e_rate": n / e2e_s,
        "handled": state["count"],
        "drain_s": drain_s,
        "incomplete_after": incomplete,
    }


if __name__ == "__main__":
    serve_task(("saq", "redis", "hiredis"), {"e2e": e2e})
