"""A check worker process for the end-to-end tests: the real `watcher.runner.serve`.

    python check_worker_proc.py REDIS_URL QUEUE [--lease S] [--grace S] [--transport T]
                                               [--notifiers JSON] [--concurrency N]

Prints "ready" once its worker is running (registered in the queue's `workers` set, so its
SIGTERM handler is installed), and exits 0 on SIGTERM after a graceful shutdown.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os

from watcher.queue import Queue
from watcher.runner import serve


async def _announce_when_running(queue: Queue) -> None:
    pid = str(os.getpid())
    while not any(w.get("pid") == pid for w in await queue.workers()):
        await asyncio.sleep(0.02)
    print("ready", flush=True)


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("url")
    parser.add_argument("queue")
    parser.add_argument("--lease", type=float, default=1.0)
    parser.add_argument("--grace", type=float, default=2.0)
    parser.add_argument("--transport", default="aiohttp")
    parser.add_argument("--notifiers", default="{}")
    parser.add_argument("--concurrency", type=int, default=10)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(name)s %(levelname)s %(message)s")
    queue = Queue.from_url(args.url, args.queue)
    announce = asyncio.create_task(_announce_when_running(queue))
    try:
        await serve(
            queue,
            notifiers=json.loads(args.notifiers),
            concurrency=args.concurrency,
            transport=args.transport,
            install_signal_handlers=True,
            worker={"lease": args.lease, "grace": args.grace},
        )
    finally:
        announce.cancel()
        await queue.close()


if __name__ == "__main__":
    asyncio.run(main())
