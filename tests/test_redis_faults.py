"""Redis misbehaving under running workers: it comes back empty (a restart without
persistence), it refuses writes (out of memory), it is not up yet when a worker starts, it
crashes. Each against real redis-server processes and, for the command, real `watcher`
processes checking a real local origin."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import redis
from redis.exceptions import OutOfMemoryError, ResponseError

from watcher import keeper as keeper_module
from watcher.jobs import FinishCode, Finished
from watcher.keeper import Keeper
from watcher.queue import Queue, unavailable
from watcher.redis_server import RedisServer, free_port
from watcher.worker import Job, Worker

from .helpers import Watcher, running, wait_for
from .origin import Origin

WATCHER = str(Path(sys.executable).parent / "watcher")


def write_config(path: Path, url: str, queue: str, origin: Origin, count: int = 3) -> Path:
    resources = "".join(
        f"  - id: r{i}\n    url: {origin.url}r{i}\n    every: 200ms\n    min_every: 200ms\n"
        for i in range(count)
    )
    path.write_text(f"redis: {url}\nqueue: {queue}\nresources:\n{resources}")
    return path


def requests_since(origin: Origin, moment: float) -> int:
    return sum(1 for seen in origin.requests if seen.at > moment)


def sync(cwd: Path) -> None:
    done = subprocess.run([WATCHER, "sync"], cwd=cwd, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr


def restart_empty(server: RedisServer) -> None:
    """SHUTDOWN NOSAVE, then start again on the same port: everything is gone."""
    client = redis.Redis.from_url(server.url)
    with contextlib.suppress(redis.ConnectionError):
        client.shutdown(nosave=True)
    assert server.process is not None
    server.process.wait(10)
    server.start()


# -- Redis that comes back empty ----------------------------------------------------------


async def test_run_syncs_again_when_redis_comes_back_empty(
    tmp_path: Path, origin: Origin, queue_name: str
) -> None:
    server = RedisServer().start()  # no persistence: a restart loses everything
    write_config(tmp_path / "watcher.yaml", server.url, queue_name, origin)
    run = Watcher("run", "--processes", "1", cwd=tmp_path)
    try:
        await wait_for(lambda: requests_since(origin, 0) >= 3, 20, what="first checks")
        restart_empty(server)
        restarted = time.monotonic()
        await wait_for(
            lambda: (
                {seen.path for seen in origin.requests if seen.at > restarted}
                >= {"/r0", "/r1", "/r2"}
            ),
            10,
            what="every resource checked again after the empty restart",
        )
        await wait_for(lambda: run.saying("is synced again"), 5, what="the all-clear")
        client = redis.Redis.from_url(server.url, decode_responses=True)
        marker = client.hgetall(f"watcher:{{{queue_name}}}:synced")
        assert marker["source"] == str(tmp_path / "watcher.yaml")
        assert marker["resources"] == "3"
    finally:
        code = run.stop()
        server.cleanup()
    assert code == 0, run.output
    assert len(run.saying("is missing: Redis lost its data")) == 1, run.output
    assert len(run.saying("syncing the configuration again")) == 1, run.output
    assert len(run.saying("is synced again (3 resource(s)")) == 1, run.output
    assert not run.saying("another worker reruns it"), run.output
    assert "Traceback" not in run.output


async def test_worker_warns_until_a_sync_after_redis_comes_back_empty(
    tmp_path: Path, origin: Origin, queue_name: str
) -> None:
    server = RedisServer().start()
    write_config(tmp_path / "watcher.yaml", server.url, queue_name, origin)
    sync(tmp_path)
    worker = Watcher("worker", "--processes", "1", cwd=tmp_path)
    try:
        await wait_for(lambda: requests_since(origin, 0) >= 3, 20, what="first checks")
        restart_empty(server)
        await wait_for(lambda: worker.saying("is missing"), 10, what="the lost-data warning")
        [warning] = worker.saying("is missing")
        assert "Redis lost its data" in warning and "watcher sync" in warning
        assert "0 scheduler(s) left" in warning
        quiet_since = time.monotonic()
        await asyncio.sleep(2)
        assert requests_since(origin, quiet_since) == 0  # nothing left to check
        assert len(worker.saying("is missing")) == 1  # said once, not every second
        sync(tmp_path)
        synced = time.monotonic()
        await wait_for(lambda: requests_since(origin, synced) >= 3, 10, what="checks again")
        await wait_for(lambda: worker.saying("is synced again"), 5, what="the all-clear")
    finally:
        code = worker.stop()
        server.cleanup()
    assert code == 0, worker.output
    assert "Traceback" not in worker.output


async def test_keeper_repeats_the_warning_at_its_period_and_resyncs_when_it_can(
    queue: Queue, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The keeper's watch on the marker, step by step: silent for a queue no sync manages;
    once seen, its loss is said once per period; with a resync, that is called instead."""
    monkeypatch.setattr(keeper_module, "UNSYNCED_WARNING_EVERY", 0.3)
    caplog.set_level(logging.WARNING, logger="watcher.worker")

    def keeper(**options: Any) -> Keeper:
        return Keeper(
            queue,
            worker_id="w",
            lease_ms=3000,
            keep_ms=1000,
            finished_cap=10,
            leases=list,
            info=dict,
            **options,
        )

    def warnings() -> list[str]:
        return [r.getMessage() for r in caplog.records if "is missing" in r.getMessage()]

    watching = keeper()
    await watching.step()
    assert warnings() == []  # never synced, not expected to be: a library user's queue
    await queue.mark_synced("/etc/watcher.yaml", 2)
    await watching.step()
    await queue.redis.delete(queue.key("synced"))
    for _ in range(3):
        await watching.step()
    assert len(warnings()) == 1
    await asyncio.sleep(0.35)
    await watching.step()
    await watching.step()
    assert len(warnings()) == 2  # once a period
    await queue.mark_synced("/etc/watcher.yaml", 2)
    await watching.step()
    assert any("is synced again" in r.getMessage() for r in caplog.records)

    await queue.redis.delete(queue.key("synced"))
    caplog.clear()
    await keeper(expect_synced=True).step()  # `watcher worker`: a never-synced queue is said
    assert len(warnings()) == 1 and "or it was never synced" in warnings()[0]

    synced_again = asyncio.Event()

    async def resync() -> None:
        await queue.mark_synced("/etc/watcher.yaml", 2)
        synced_again.set()

    caplog.clear()
    await keeper(expect_synced=True, resync=resync).step()
    await asyncio.wait_for(synced_again.wait(), 5)
    assert "syncing the configuration again" in warnings()[0]


async def test_a_job_that_vanished_from_redis_is_not_said_to_rerun_elsewhere(
    queue: Queue, caplog: pytest.LogCaptureFixture
) -> None:
    """The job's hash is gone when it finishes (as after an empty restart): finish.lua says
    so (VANISHED), distinct from a lease taken over by another worker."""
    release = asyncio.Event()
    codes: list[FinishCode | None] = []

    async def held(job: Job) -> None:
        await release.wait()

    caplog.set_level(logging.WARNING, logger="watcher.worker")
    worker = Worker(queue, {"held": held}, tick=False, lease=1.5)
    done = worker.finisher.done

    def observed(finished: Finished, code: FinishCode | None) -> None:
        codes.append(code)
        done(finished, code)

    worker.finisher.done = observed
    async with running(worker):
        job_id = await queue.add_job("held", {})
        await wait_for(lambda: queue.redis.zcard(queue.key("active")), 5)
        await queue.redis.delete(queue.key(f"job:{job_id}"), queue.key("active"))
        await asyncio.sleep(0.7)  # the keeper extends the lease meanwhile: it is gone
        release.set()
        await wait_for(lambda: codes, 5)
    assert codes == [FinishCode.VANISHED]
    messages = [r.getMessage() for r in caplog.records]
    assert any("no longer exist in Redis" in m for m in messages), messages
    assert any(f"job {job_id} no longer exists in Redis" in m for m in messages), messages
    assert not any("another worker reruns it" in m or "lease lost" in m for m in messages)


# -- Redis refusing writes ------------------------------------------------------------------


def fill_memory(client: redis.Redis) -> None:
    """Grow a key until Redis (maxmemory, noeviction) refuses writes, then lower the limit
    under what is used, so that the queue's own frees (finished runs expiring) cannot end
    the episode before the test does."""
    with contextlib.suppress(OutOfMemoryError):
        while True:
            client.append("filler", "x" * 65536)
    used = int(client.info("memory")["used_memory"])
    client.config_set("maxmemory", str(used * 9 // 10))


async def test_out_of_memory_is_one_episode_with_no_traceback_and_work_resumes(
    tmp_path: Path, origin: Origin, queue_name: str
) -> None:
    server = RedisServer(extra_args=["--maxmemory", "5mb", "--maxmemory-policy", "noeviction"])
    server.start()
    client = redis.Redis.from_url(server.url, decode_responses=True)
    write_config(tmp_path / "watcher.yaml", server.url, queue_name, origin)
    run = Watcher("run", "--processes", "1", cwd=tmp_path)
    try:
        await wait_for(lambda: requests_since(origin, 0) >= 6, 20, what="first checks")
        fill_memory(client)
        await wait_for(lambda: run.saying("Redis refuses writes"), 10, what="the refusal")
        status = subprocess.run(
            [WATCHER, "status", "--json"], cwd=tmp_path, capture_output=True, text=True, timeout=60
        )
        refused = json.loads(status.stdout)["redis_refuses_writes"]
        assert refused["code"] == "OOM" and "maxmemory" in refused["message"]
        table = subprocess.run(
            [WATCHER, "status"],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
            env={**os.environ, "COLUMNS": "300"},
        )
        assert "Redis refuses writes: OOM" in table.stdout
        await asyncio.sleep(3)  # the episode goes on: still one line
        client.config_set("maxmemory", "0")
        freed = time.monotonic()
        await wait_for(lambda: requests_since(origin, freed) >= 6, 15, what="checks again")
        await wait_for(lambda: run.saying("accepts writes again"), 10, what="the all-clear")
    finally:
        code = run.stop()
        server.cleanup()
    assert code == 0, run.output
    [refusal] = run.saying("Redis refuses writes")
    assert "OOM command not allowed when used memory > 'maxmemory'; backing off" in refusal
    assert len(run.saying("accepts writes again")) == 1, run.output
    assert "Traceback" not in run.output
    assert "OutOfMemoryError" not in run.output


async def test_runs_refused_a_write_are_one_episode_not_one_line_each(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Ten runs whose handlers write (a change record, say) when Redis is out of memory: one
    line for all, no traceback; no run is taken again until Redis accepts writes, and then
    every one completes (its retry not failed for good meanwhile)."""
    server = RedisServer(extra_args=["--maxmemory", "5mb", "--maxmemory-policy", "noeviction"])
    server.start()
    queue = Queue.from_url(server.url, "oom")
    client = redis.Redis.from_url(server.url)
    full = asyncio.Event()
    attempts: list[int] = []

    async def record(job: Job) -> None:
        await full.wait()
        attempts.append(job.attempt)
        await queue.redis.hincrby("test:runs", job.id, 1)

    try:
        caplog.set_level(logging.DEBUG, logger="watcher.worker")
        async with running(Worker(queue, {"r": record}, tick=False)):
            await queue.add_jobs("r", [{}] * 10)
            await wait_for(lambda: _all_taken(queue, 10), 5, what="every job running")
            fill_memory(client)
            full.set()
            await asyncio.sleep(2)
            assert attempts == [1] * 10  # each refused once, none taken again meanwhile
            client.delete("filler")
            await wait_for(lambda: _completed(queue, 10), 15, what="every job completed")
    finally:
        await queue.close()
        server.cleanup()
    said = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(said) == 2, said
    assert said[0].startswith("Redis refuses writes: OOM command not allowed"), said
    assert said[1].startswith("Redis accepts writes again after"), said
    assert not any(r.exc_info for r in caplog.records)


async def _all_taken(queue: Queue, count: int) -> bool:
    return (await queue.counts())["active"] == count


async def _completed(queue: Queue, count: int) -> bool:
    return (await queue.counts())["completed"] == count


# -- Redis not up yet at start ----------------------------------------------------------------


async def test_worker_started_before_its_redis_waits_then_runs_checks(
    tmp_path: Path, origin: Origin, queue_name: str
) -> None:
    port = free_port()
    server = RedisServer(port=port, extra_args=["--requirepass", "s3cret"])
    url = f"redis://:s3cret@127.0.0.1:{port}/0"
    write_config(tmp_path / "watcher.yaml", url, queue_name, origin)
    worker = Watcher("worker", "--processes", "1", cwd=tmp_path)
    try:
        await wait_for(lambda: worker.saying("waiting for Redis"), 15, what="the waiting line")
        await asyncio.sleep(5)
        assert worker.process.poll() is None, worker.output
        server.start()
        sync(tmp_path)
        synced = time.monotonic()
        await wait_for(lambda: requests_since(origin, synced) >= 3, 15, what="checks")
    finally:
        code = worker.stop()
        server.cleanup()
    assert code == 0, worker.output
    [waiting] = worker.saying("waiting for Redis")
    assert f"waiting for Redis at redis://***@127.0.0.1:{port}/0 (connection refused)" in waiting
    assert "s3cret" not in worker.output
    assert len(worker.saying("is up after")) == 1


def test_no_wait_fails_fast_and_read_commands_never_wait(tmp_path: Path) -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"
    resources = "resources:\n  - id: r\n    url: http://127.0.0.1:9/\n"
    (tmp_path / "watcher.yaml").write_text(f"redis: {url}\n{resources}")
    for command in (["worker", "--no-wait"], ["status"], ["history"], ["sync", "--dry-run"]):
        started = time.monotonic()
        done = subprocess.run(
            [WATCHER, *command], cwd=tmp_path, capture_output=True, text=True, timeout=30
        )
        assert done.returncode == 1, (command, done.stdout, done.stderr)
        assert "cannot reach Redis" in done.stderr, (command, done.stderr)
        assert time.monotonic() - started < 10, command


def test_run_waits_for_an_external_redis_and_sigterm_ends_the_wait(tmp_path: Path) -> None:
    (tmp_path / "watcher.yaml").write_text(
        f"redis: redis://127.0.0.1:{free_port()}/0\n"
        "resources:\n  - id: r\n    url: http://127.0.0.1:9/\n"
    )
    run = Watcher("run", "--processes", "1", cwd=tmp_path)
    deadline = time.monotonic() + 15
    while not run.saying("waiting for Redis") and time.monotonic() < deadline:
        time.sleep(0.05)
    assert run.saying("waiting for Redis"), run.output
    stopped = time.monotonic()
    assert run.stop() == 0, run.output
    assert time.monotonic() - stopped < 5


# -- the embedded Redis persists ---------------------------------------------------------------


def test_persisting_redis_keeps_what_it_acknowledged_across_a_crash(tmp_path: Path) -> None:
    server = RedisServer(tmp_path / "redis", persist=True).start()
    try:
        client = redis.Redis.from_url(server.url, decode_responses=True)
        assert client.config_get("appendfsync") == {"appendfsync": "everysec"}
        client.set("kept", "yes")
        time.sleep(1.2)  # past the next fsync
        assert server.process is not None
        server.process.send_signal(signal.SIGKILL)
        server.process.wait(10)
        server.start()
        assert redis.Redis.from_url(server.url, decode_responses=True).get("kept") == "yes"
    finally:
        server.cleanup()


def raised(code: str, filename: str) -> BaseException:
    try:
        exec(compile(code, filename, "exec"))
    except Exception as exc:
        return exc
    raise AssertionError("nothing raised")


def test_what_is_ridden_out_and_what_is_a_bug() -> None:
    """A resharded slot and redis-py's connection reset under a call are outages; the same
    exceptions anywhere else are bugs, said with their traceback."""
    moving = "Script attempted to access a non local key in a cluster node script: f00, on @s:1"
    assert unavailable(ResponseError(moving))
    assert not unavailable(ResponseError("ERR Error running script: attempt to compare nil"))
    reset = "raise AttributeError(\"'NoneType' object has no attribute 'writelines'\")"
    in_redis_py = os.path.join(os.sep, "venv", "redis", "asyncio", "connection.py")
    assert unavailable(raised(reset, in_redis_py))
    assert not unavailable(raised(reset, os.path.join(os.sep, "src", "watcher", "runner.py")))
    assert not unavailable(raised("raise AttributeError('no such field')", in_redis_py))


async def test_a_job_whose_hash_is_missing_waits_a_minute_then_is_dropped(queue: Queue) -> None:
    """take.lua puts back an id whose hash it cannot find (mid-reshard, the hash may still be
    on the node the slot is leaving) without waking the workers for it; once missing for 60 s
    (lost with Redis's memory) it is dropped, so it does not cycle for ever."""
    lost, kept = await queue.add_jobs("h", [{"n": 1}, {"n": 2}])
    await queue.redis.delete(queue.key(f"job:{lost}"), queue.key("marker"))  # woken already
    taken = await queue.take(10, lease_ms=30_000, worker="w", token_prefix="w:1:")
    assert [job.id for job in taken] == [kept]
    assert await queue.redis.lrange(queue.key("wait"), 0, -1) == [lost]
    assert await queue.redis.llen(queue.key("marker")) == 0  # nobody woken for it
    assert await queue.take(10, lease_ms=30_000, worker="w", token_prefix="w:2:") == []
    assert await queue.redis.lrange(queue.key("wait"), 0, -1) == [lost]  # still waiting
    first_seen = await queue.redis.zscore(queue.key("orphans"), lost)
    assert first_seen is not None
    await queue.redis.zadd(queue.key("orphans"), {lost: first_seen - 60_000})  # a minute on
    assert await queue.take(10, lease_ms=30_000, worker="w", token_prefix="w:3:") == []
    assert await queue.redis.llen(queue.key("wait")) == 0
