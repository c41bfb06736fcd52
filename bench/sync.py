# ruff: noqa: E402  (sys.path is fixed before the imports, see below)
"""Time `watcher sync` of a large YAML against a private Redis.

    .venv/bin/python bench/sync.py [--resources 100000] [--from-list]

Writes a watcher.yaml with N resources to a temporary folder (with --from-list: a urls.txt of
N URLs, one a line, and a watcher.yaml of `defaults` and `resources_from: urls.txt`), then
runs the real console script three times: the first sync (everything created), a second one
(nothing to do), and one after every resource's interval changed (everything updated).
Prints wall-clock seconds for each, the time spent loading and validating the YAML alone,
and the Redis memory the resources take (used_memory after the first sync, less before, per
resource).
"""

import sys
from pathlib import Path

# Run as a script, this file's folder would come first on sys.path, where bench/queue.py and
# bench/checks.py would shadow the standard library's `queue` and watcher's `checks`: drop it.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import os
import subprocess
import tempfile
import time

import redis

from bench.common import arg_parser
from watcher.config import load_config
from watcher.redis_server import RedisServer

WATCHER = str(Path(sys.executable).parent / "watcher")


def write_list(path: Path, count: int, every: str) -> None:
    (path.parent / "urls.txt").write_text(
        "".join(f"http://127.0.0.1:9/{i}\n" for i in range(count))
    )
    path.write_text(f"queue: bench\ndefaults: {{every: {every}}}\nresources_from: urls.txt\n")


def write_yaml(path: Path, count: int, every: str) -> None:
    lines = ["queue: bench", "resources:"]
    for i in range(count):
        lines += [f"  - id: r{i}", f"    url: http://127.0.0.1:9/{i}", f"    every: {every}"]
    path.write_text("\n".join(lines) + "\n")


def timed_sync(folder: Path, url: str) -> tuple[float, str]:
    started = time.perf_counter()
    done = subprocess.run(
        [WATCHER, "sync", "--redis", url],
        cwd=folder,
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "COLUMNS": "200"},
    )
    summary = next(line for line in done.stdout.splitlines() if "watcher.yaml:" in line)
    return time.perf_counter() - started, summary


def main() -> None:
    parser = arg_parser(__doc__)
    parser.add_argument("--resources", type=int, default=100_000)
    parser.add_argument("--from-list", action="store_true", help="resources_from: urls.txt")
    args = parser.parse_args()
    write = write_list if args.from_list else write_yaml
    with tempfile.TemporaryDirectory() as tmp, RedisServer() as server:
        folder = Path(tmp)
        config = folder / "watcher.yaml"
        write(config, args.resources, "5m")
        client = redis.Redis.from_url(server.url)
        empty = int(client.info("memory")["used_memory"])
        started = time.perf_counter()
        load_config(config)
        print(
            f"{args.resources:,} resources; loading and validating the YAML: "
            f"{time.perf_counter() - started:.1f} s"
        )
        for label in ("first sync", "second sync"):
            seconds, summary = timed_sync(folder, server.url)
            print(f"{label}: {seconds:.1f} s  ({summary.split(': ', 1)[1]})")
            if label == "first sync":
                used = int(client.info("memory")["used_memory"]) - empty
                print(f"Redis memory: {used / args.resources:.0f} bytes per idle resource")
        write(config, args.resources, "10m")
        seconds, summary = timed_sync(folder, server.url)
        print(f"every interval changed: {seconds:.1f} s  ({summary.split(': ', 1)[1]})")


if __name__ == "__main__":
    main()
