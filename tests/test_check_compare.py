"""`watcher check --id ID --compare`: one run against the state stored in Redis, as the next
scheduled run would make it (If-None-Match with the stored ETag), saying whether the
resource changed since (old → new), and writing nothing. Through the console script,
against a private Redis and a local origin."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import redis.asyncio as aioredis

from watcher.queue import Queue

from .helpers import Watcher, wait_for
from .origin import Origin

WATCHER = str(Path(sys.executable).parent / "watcher")


def watcher(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if k != "WATCHER_REDIS_URL"}
    environment.update({"COLUMNS": "400", "NO_COLOR": "1"})
    return subprocess.run(
        [WATCHER, *args], cwd=cwd, env=environment, capture_output=True, text=True, timeout=60
    )


async def redis_data(url: str, queue_name: str) -> dict[bytes, bytes | None]:
    """The queue's keys and every key without a TTL (not other tests' expiring jobs), each
    with its serialized value."""
    client = aioredis.Redis.from_url(url)
    try:
        return {
            key: await client.dump(key)
            async for key in client.scan_iter(count=1000)
            if queue_name.encode() in key or await client.ttl(key) == -1
        }
    finally:
        await client.aclose()


async def stored_etag(redis_url: str, queue_name: str) -> str | None:
    queue = Queue.from_url(redis_url, queue_name)
    try:
        info = await queue.get_scheduler("docs")
    finally:
        await queue.close()
    return None if info is None else info.state.get("etag")


async def test_compare_with_the_stored_state_writes_nothing(
    tmp_path: Path, redis_url: str, queue_name: str, origin: Origin
) -> None:
    config = tmp_path / "watcher.yaml"
    config.write_text(
        f"queue: {queue_name}\nresources:\n  - id: docs\n    url: {origin.url}\n    every: 1h\n"
    )
    assert watcher("sync", "-c", str(config), "--redis", redis_url, cwd=tmp_path).returncode == 0
    run = Watcher("run", "--processes", "1", "-c", str(config), "--redis", redis_url, cwd=tmp_path)
    try:
        await wait_for(lambda: stored_etag(redis_url, queue_name), 15, what="the baseline")
    finally:
        assert run.stop() == 0, run.output
    assert await stored_etag(redis_url, queue_name) == '"v1"'
    before = await redis_data(redis_url, queue_name)
    compare = ("check", "--id", "docs", "--compare", "-c", str(config), "--redis", redis_url)

    unchanged = watcher(*compare, cwd=tmp_path)
    assert unchanged.returncode == 0, unchanged.stdout + unchanged.stderr
    out = unchanged.stdout
    assert 'stored state: etag: "v1"' in out, out
    assert 'conditional headers sent  if-none-match: "v1"' in out, out
    assert "status                    304 Not Modified" in out, out
    assert "against the stored state: unchanged - not modified (304)" in out, out
    assert "the stored state was not changed (nothing is written to Redis)" in out, out
    assert len(origin.requests) == 2  # the baseline, then the one compared

    origin.set(etag='"v2"')
    changed = watcher(*compare, cwd=tmp_path)
    assert changed.returncode == 0, changed.stdout + changed.stderr
    out = changed.stdout
    assert "status                    200 OK" in out, out
    assert 'against the stored state: changed - ETag "v1" → "v2"' in out, out
    assert '  etag: "v1" → "v2"' in out.splitlines(), out

    origin.set(status=503)
    failed = watcher(*compare, cwd=tmp_path)
    assert failed.returncode == 1, failed.stdout + failed.stderr
    assert "against the stored state: failed: 503 Service Unavailable" in failed.stdout

    assert await redis_data(redis_url, queue_name) == before
    assert await stored_etag(redis_url, queue_name) == '"v1"'
