"""watcher runner for bench/queue.py (runs in the project venv, with the repo on PYTHONPATH).

Usage: python watcher_runner.py '<task JSON>'; prints one JSON line of results on stdout.
Tasks:
  {"mode": "versions"}
  {"mode": "e2e", "url", "n", "concurrency", "timeout"}   bulk add_jobs, then one Worker
  {"mode": "schedulers", "url", "n", "every"}             bulk upsert_schedulers + memory, then
                                                          single upsert_scheduler from 50 tasks
  {"mode": "lateness", "url", "n", "every", "duration", "concurrency"}
"""

from __future__ import annotations

import asyncio
import statistics
import time

from _runner import Countdown, concurrently, e2e_result, serve_task, settle, used_memory

BATCH = 1000
LANES = 50


async def stop_worker(worker, run: asyncio.Task, timeout: float = 30) -> None:
    worker.stop()
    await settle(run, timeout)


async def e2e(task: dict) -> dict:
    from watcher.queue import Queue
    from watcher.worker import Worker

    n = task["n"]
    queue = Queue.from_url(task["url"], name="bench")
    t0 = time.perf_counter()
    for start in range(0, n, BATCH):
        await queue.add_jobs("noop", [{"i": i} for i in range(start, min(n, start + BATCH))])
    enqueue_s = time.perf_counter() - t0
    queued = (await queue.counts())["wait"]
    if queued != n:
        raise RuntimeError(f"{queued} jobs waiting, expected {n}")

    countdown = Countdown(n)

    async def noop(job) -> None:
        countdown.hit()

    async def all_completed() -> bool:
        return (await queue.counts())["completed"] >= n

    worker = Worker(queue, {"noop": noop}, concurrency=task.get("concurrency", 50))
    t_start = time.perf_counter()
    run = asyncio.create_task(worker.run())
    try:
        # let the last handlers' completions land before stopping the worker
        drain_s = await countdown.drain(task.get("timeout", 300), all_completed)
    finally:
        await stop_worker(worker, run)
    completed = (await queue.counts())["completed"]
    await queue.close()
    return e2e_result(
        countdown,
        t_start,
        enqueue_s,
        f"bulk add_jobs ({BATCH}/call)",
        drain_s=drain_s,
        completed=completed,
    )


async def schedulers(task: dict) -> dict:
    from watcher.queue import Queue, SchedulerSpec

    n, every = task["n"], task.get("every", 10.0)
    queue = Queue.from_url(task["url"], name="bench")
    # one warm-up upsert loads the scripts and creates the queue's fixed keys before the baseline
    await queue.upsert_scheduler("warmup", name="noop", data={}, every=every)
    specs = [
        SchedulerSpec(id=f"sched-{i}", name="noop", data={"i": i}, every=every) for i in range(n)
    ]
    before = await used_memory(queue.redis)
    t0 = time.perf_counter()
    await queue.upsert_schedulers(specs)
    upsert_s = time.perf_counter() - t0
    after = await used_memory(queue.redis)
    count = (await queue.counts())["schedulers"]
    if count != n + 1:
        raise RuntimeError(f"{count} schedulers, expected {n + 1}")

    # the same number of new ids again, one upsert_scheduler call each (as bullmq must)
    t0 = time.perf_counter()
    await concurrently(
        n,
        LANES,
        lambda i: queue.upsert_scheduler(f"single-{i}", name="noop", data={"i": i}, every=every),
    )
    single_s = time.perf_counter() - t0
    count = (await queue.counts())["schedulers"]
    await queue.close()
    if count != 2 * n + 1:
        raise RuntimeError(f"{count} schedulers, expected {2 * n + 1}")
    return {
        "upsert_s": upsert_s,
        "upsert_rate": n / upsert_s,
        "upsert_method": "bulk upsert_schedulers",
        "single_upsert_rate": n / single_s,
        "single_upsert_method": f"concurrent upsert_scheduler ({LANES} tasks)",
        "bytes_per_scheduler": (after - before) / n,
    }


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def lateness(task: dict) -> dict:
    from watcher.queue import Queue, SchedulerSpec
    from watcher.worker import Worker

    n, every, duration = task["n"], task.get("every", 10.0), task["duration"]
    queue = Queue.from_url(task["url"], name="bench")
    specs = [
        SchedulerSpec(id=f"late-{i}", name="noop", data={"i": i}, every=every) for i in range(n)
    ]
    await queue.upsert_schedulers(specs)

    samples: list[tuple[int, float]] = []

    async def noop(job) -> None:
        now_ms = time.time() * 1000
        if job.scheduled_at is not None:
            samples.append((job.scheduled_at, now_ms - job.scheduled_at))

    worker = Worker(queue, {"noop": noop}, concurrency=task.get("concurrency", 50))
    t_start_ms = time.time() * 1000
    run = asyncio.create_task(worker.run())
    try:
        await asyncio.sleep(duration)
        cutoff_ms = t_start_ms + duration * 1000
        # keep working until every run planned up to the cutoff has started (or 30 s pass)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if run.done():
                run.result()
            counts = await queue.counts()
            if counts["wait"] == 0 and time.time() * 1000 > cutoff_ms + 200:
                break
            await asyncio.sleep(0.05)
    finally:
        await stop_worker(worker, run)
    await queue.close()
    # only runs planned inside the window: earlier ones were due before the worker started
    window = [late for at, late in samples if t_start_ms <= at <= cutoff_ms]
    if not window:
        raise RuntimeError(f"no scheduled run was handled in {duration} s ({len(samples)} in all)")
    return {
        "p50_ms": statistics.median(window),
        "p99_ms": percentile(window, 0.99),
        "max_ms": max(window),
        "runs": len(window),
        "expected_runs": round(n * duration / every),
    }


if __name__ == "__main__":
    serve_task(
        ("watcher", "redis", "hiredis"),
        {"e2e": e2e, "schedulers": schedulers, "lateness": lateness},
    )
