"""A worker process for the multi-process tests: `python worker_proc.py URL QUEUE MODE [opts]`.

Modes (what the handler does):
  record   HINCRBY test:<queue>:runs "<scheduler>|<slot>" 1 (counts every run of every slot)
  slow     RPUSH test:<queue>:started <job id>, sleep --sleep seconds,
           RPUSH test:<queue>:done <job id>
"""

from __future__ import annotations

import argparse
import asyncio
import logging

from watcher.queue import Queue
from watcher.worker import Job, Worker


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("url")
    parser.add_argument("queue")
    parser.add_argument("mode", choices=["record", "slow"])
    parser.add_argument("--concurrency", type=int, default=20)
    parser.add_argument("--lease", type=float, default=30.0)
    parser.add_argument("--grace", type=float, default=10.0)
    parser.add_argument("--sleep", type=float, default=0.0)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(name)s %(levelname)s %(message)s")
    queue = Queue.from_url(args.url, args.queue)
    test_key = f"test:{args.queue}:"

    async def record(job: Job) -> None:
        await queue.redis.hincrby(test_key + "runs", f"{job.scheduler_id}|{job.scheduled_at}", 1)

    async def slow(job: Job) -> None:
        await queue.redis.rpush(test_key + "started", job.id)
        await asyncio.sleep(args.sleep)
        await queue.redis.rpush(test_key + "done", job.id)

    handler = record if args.mode == "record" else slow
    worker = Worker(
        queue,
        lambda name: handler,
        concurrency=args.concurrency,
        lease=args.lease,
        grace=args.grace,
    )
    print("ready", flush=True)
    await worker.run(install_signal_handlers=True)
    await queue.close()


if __name__ == "__main__":
    asyncio.run(main())
