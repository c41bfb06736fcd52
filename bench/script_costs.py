# ruff: noqa: E402  (sys.path is fixed before the imports, see bench/common.py)
"""Redis time per run of each step a scheduler's run takes (tick, take, finish): a diagnostic
of the scripts, through the queue's own calls, not a figure of what users run.

    .venv/bin/python bench/script_costs.py [--runs 4000] [--batch 20] [--rounds 8]

The user's figure is bench/redis_cpu.py (`watcher run` as a user runs it, the redis-server
process's CPU per check). This one tells where a run's Redis time goes, with less noise: a
private redis-server (watcher.redis_server, a free port on 127.0.0.1) holding N schedulers as
a URL list's sync writes them (an ETag check's state), each round makes all of them due,
ticks them (due.lua and fire.lua), takes them `--batch` at a time (take.lua) and finishes
them as a 304 does (finish.lua: the run's report, no state written), and reads each step's
EVALSHA time from INFO commandstats. Prints, per step, the best and median round in µs per
run (the first round warms up and is left out).
"""

import sys
from pathlib import Path

sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import asyncio
import json
import statistics

import redis

from bench.common import arg_parser, make_console, rich_table
from watcher.jobs import Finished, Job
from watcher.queue import Queue, SchedulerSpec
from watcher.redis_server import RedisServer
from watcher.ticker import Ticker

QUEUE = "bench"
REPORT = json.dumps(
    {
        "outcome": "unchanged",
        "summary": "not modified (304)",
        "at": 1796324753.395123,
        "status_code": 304,
        "not_modified": True,
        "ms": 3.1,
    }
)
RESULT = json.dumps({"outcome": "unchanged", "summary": "not modified (304)"})


def scheduler_ids(count: int) -> list[str]:
    return [f"127.0.0.1-9-r{n}:abcdef12" for n in range(count)]


async def measure(url: str, runs: int, batch: int, rounds: int) -> dict[str, list[float]]:
    client = redis.Redis.from_url(url)
    queue = Queue.from_url(url, QUEUE)
    ids = scheduler_ids(runs)
    await queue.upsert_schedulers(
        SchedulerSpec(
            id=id,
            name="etag",
            data={"url": f"http://127.0.0.1:9/r{n}"},
            every=3600,
            scope="e42b9d049e993828",
            owner="yaml:/srv/watcher/watcher.yaml",
            state={"etag": '"5f2b-abcdef"', "last_modified": "Mon, 01 Jan 2026 00:00:00 GMT"},
        )
        for n, id in enumerate(ids)
    )
    ticker = Ticker(queue, batch=500)
    costs: dict[str, list[float]] = {"tick": [], "take": [], "finish": []}

    def since_reset(step: str) -> None:
        costs[step].append(client.info("commandstats")["cmdstat_evalsha"]["usec"] / runs)
        client.config_resetstat()

    for round in range(rounds + 1):
        seconds, micros = client.time()
        due = seconds * 1000 + micros // 1000 - 5  # due now: ticked, not put off as overdue
        client.zadd(queue.key("schedulers"), dict.fromkeys(ids, due))
        client.config_resetstat()
        while await ticker.tick() == 0.0:  # 0.0: more are due
            pass
        since_reset("tick")
        jobs = await take_all(queue, batch, f"{round}-")
        since_reset("take")
        if len(jobs) != runs:
            raise SystemExit(f"round {round}: took {len(jobs)} runs of {runs}")
        for start in range(0, len(jobs), batch):
            chunk = jobs[start : start + batch]
            done = [Finished(job.lease, "ok", payload=RESULT, report=REPORT) for job in chunk]
            await queue.finish(done, keep_ms=60_000, keep_runs_ms=60_000, cap=1000)
        since_reset("finish")
    await queue.close()
    return {step: values[1:] for step, values in costs.items()}


async def take_all(queue: Queue, batch: int, prefix: str) -> list[Job]:
    """Every run waiting, taken `batch` at a time."""
    jobs: list[Job] = []
    while taken := await queue.take(
        batch, lease_ms=60_000, worker="w", token_prefix=f"{prefix}{len(jobs)}-"
    ):
        jobs.extend(taken)
    return jobs


def main() -> None:
    parser = arg_parser(__doc__)
    parser.add_argument("--runs", type=int, default=4000, help="schedulers, each run once a round")
    parser.add_argument("--batch", type=int, default=20, help="runs per take and finish call")
    parser.add_argument("--rounds", type=int, default=8)
    args = parser.parse_args()
    with RedisServer() as server:
        costs = asyncio.run(measure(server.url, args.runs, args.batch, args.rounds))
    rows = [
        [step, f"{min(values):.1f}", f"{statistics.median(values):.1f}"]
        for step, values in costs.items()
    ]
    total = [sum(column) for column in zip(*costs.values(), strict=True)]
    rows.append(["all three", f"{min(total):.1f}", f"{statistics.median(total):.1f}"])
    title = f"Redis time per run (EVALSHA, INFO commandstats), {args.runs:,} runs a round"
    make_console().print(rich_table(title, ["step", "best µs/run", "median µs/run"], rows))


if __name__ == "__main__":
    main()
