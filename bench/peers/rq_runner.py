"""rq runner for bench/queue.py (runs in bench/.venvs/rq).

Usage: python rq_runner.py '<task JSON>'; prints one JSON line of results on stdout.
Tasks: {"mode": "versions"} and {"mode": "e2e", "url", "n", "timeout"}.
Enqueue is rq's bulk `Queue.enqueue_many` (one pipeline per 1,000 jobs); the worker is a
`SimpleWorker` (no fork per job) in burst mode, which returns once the queue is empty.
rq's worker logs to stdout: its level is set to WARNING so that the JSON line stays last.
"""

from __future__ import annotations

import time

from _runner import Countdown, e2e_result, serve_task

BATCH = 1000
# the handler runs in this process (SimpleWorker imports it as __main__.noop): set by e2e()
countdown = Countdown(0)


def noop(i: int) -> None:
    countdown.hit()


def e2e(task: dict) -> dict:
    from redis import Redis
    from rq import Queue, SimpleWorker

    global countdown
    n = task["n"]
    countdown = Countdown(n)
    conn = Redis.from_url(task["url"])
    queue = Queue("bench", connection=conn)
    t0 = time.perf_counter()
    for start in range(0, n, BATCH):
        stop = min(n, start + BATCH)
        queue.enqueue_many([Queue.prepare_data(noop, args=(i,)) for i in range(start, stop)])
    enqueue_s = time.perf_counter() - t0
    if queue.count != n:
        raise RuntimeError(f"{queue.count} jobs queued, expected {n}")

    worker = SimpleWorker([queue], connection=conn)
    t_start = time.perf_counter()
    worker.work(burst=True, logging_level="WARNING")
    t_end = time.perf_counter()
    if countdown.count != n:
        raise RuntimeError(f"only {countdown.count}/{n} jobs ran")
    return e2e_result(
        countdown,
        t_start,
        enqueue_s,
        f"bulk enqueue_many ({BATCH}/call)",
        drain_s=t_end - countdown.t_done,
        completed=queue.finished_job_registry.count,
    )


if __name__ == "__main__":
    serve_task(("rq", "redis", "hiredis"), {"e2e": e2e})
