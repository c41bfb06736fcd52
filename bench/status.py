# ruff: noqa: E402  (sys.path is fixed before the imports, see below)
"""Time the read commands at scale: `watcher status`, `status --json`, `history`.

    .venv/bin/python bench/status.py [--resources 100000] [--runs 3]

Syncs N resources (a YAML it writes) into a private Redis with the console script, gives
each scheduler a report as a worker would, and records changes for a share of them and
failures for a few, then times each read command as a user runs it (the console script,
from the YAML's folder, so it reads the YAML's connection keys). Prints medians.
"""

import sys
from pathlib import Path

# Run as a script, this file's folder would come first on sys.path, where bench/queue.py
# would shadow the standard library's `queue`: drop it, and put the repository first.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import asyncio
import json
import os
import statistics
import subprocess
import tempfile
import time

from bench.common import arg_parser
from watcher.change import Change
from watcher.jobs import Fence
from watcher.queue import Queue
from watcher.redis_server import RedisServer

WATCHER = str(Path(sys.executable).parent / "watcher")
COMMANDS = (["status"], ["status", "--json"], ["history", "--limit", "20"])


def write_yaml(path: Path, count: int) -> None:
    lines = ["queue: bench", "resources:"]
    for i in range(count):
        lines += [f"  - id: r{i}", f"    url: http://127.0.0.1:9/{i}", "    every: 5m"]
    path.write_text("\n".join(lines) + "\n")


async def as_if_run(url: str, count: int) -> None:
    """Each scheduler's report, as after a run; a change for 1 in 50, failures for 1 in 500."""
    queue = await Queue.connect(url, "bench")
    report = json.dumps(
        {"outcome": "unchanged", "summary": "not modified (304)", "status_code": 304, "ms": 3.1}
    )
    now = await queue.now_ms()
    for start in range(0, count, 5000):
        async with queue.redis.pipeline(transaction=False) as pipe:
            for i in range(start, min(count, start + 5000)):
                pipe.hset(queue.key(f"scheduler:r{i}"), mapping={"report": report, "last_run": now})
            await pipe.execute()
    for i in range(0, count, 50):
        info = await queue.get_scheduler(f"r{i}")
        assert info is not None
        change = Change(resource=f"r{i}", check="etag", url=f"http://127.0.0.1:9/{i}", time=now)
        await queue.record_change(f"r{i}", Fence(seq=0, epoch=info.epoch), change)
    for i in range(0, count, 500):
        await queue.redis.zadd(queue.key("failing"), {f"r{i}": 3})
        await queue.redis.hset(queue.key(f"scheduler:r{i}"), "fails", 3)
    await queue.close()


def timed(args: list[str], folder: Path) -> tuple[float, int]:
    started = time.perf_counter()
    done = subprocess.run(
        [WATCHER, *args],
        cwd=folder,
        capture_output=True,
        check=True,
        env={**os.environ, "COLUMNS": "200"},
    )
    return time.perf_counter() - started, len(done.stdout)


def main() -> None:
    parser = arg_parser(__doc__)
    parser.add_argument("--resources", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, RedisServer() as server:
        folder = Path(tmp)
        config = folder / "watcher.yaml"
        write_yaml(config, args.resources)
        config.write_text(f"redis: {server.url}\n" + config.read_text())
        started = time.perf_counter()
        subprocess.run([WATCHER, "sync"], cwd=folder, capture_output=True, check=True)
        print(f"{args.resources:,} resources synced in {time.perf_counter() - started:.1f} s")
        asyncio.run(as_if_run(server.url, args.resources))
        for command in COMMANDS:
            runs = [timed(command, folder) for _ in range(args.runs)]
            seconds = statistics.median(run[0] for run in runs)
            size = runs[0][1]
            name = " ".join(command)
            print(f"watcher {name}: {seconds:.2f} s (median of {args.runs}), {size:,} bytes out")


if __name__ == "__main__":
    main()
