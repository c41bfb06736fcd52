"""The queue on Redis Cluster: a private 3-master cluster (tests/cluster.py), the queue on a
`redis.asyncio.RedisCluster` client, the real Worker, CheckRunner and status.

Run just these: ``pytest tests/test_cluster.py`` (or ``-k cluster``). They are skipped where
``redis-cli`` or a ``redis-server`` is missing. The cluster starts once per session (~2 s).

The tests below "gaps found in watcher's code" were strict xfails, each documenting a gap
with its cause, until the gap was fixed; a new gap gets such a test first.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import os
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import redis
from redis.asyncio import RedisCluster
from redis.crc import key_slot
from redis.exceptions import ClusterError, ResponseError

from watcher.change import Change
from watcher.hosts import Budget
from watcher.http import make_client
from watcher.jobs import JobState
from watcher.notifiers import build_notifiers
from watcher.queue import Due, Queue, SchedulerSpec
from watcher.runner import CheckRunner
from watcher.status import collect, render
from watcher.ticker import Ticker
from watcher.worker import Job, Outcome, Retry, Worker

from . import cluster as local_cluster
from .cluster import LocalCluster
from .helpers import Watcher, running, wait_for
from .origin import Origin

pytestmark = [
    pytest.mark.skipif(
        local_cluster.cluster_unavailable() is not None,
        reason=f"no local Redis Cluster: {local_cluster.cluster_unavailable()}",
    ),
    pytest.mark.timeout(60),
]

redis_cluster = local_cluster.cluster_fixture  # the session's cluster, started on first use

WATCHER = str(Path(sys.executable).parent / "watcher")
_names = itertools.count()


def fresh_name() -> str:
    return f"c{os.getpid()}-{next(_names)}"


def name_served(cluster: LocalCluster, wanted: Callable[[int], bool]) -> str:
    """A fresh queue name whose hash slot is served by a node (client port) `wanted` accepts."""
    while True:
        name = fresh_name()
        if wanted(cluster.owner(f"watcher:{{{name}}}:")):
            return name


@pytest.fixture
async def cluster_client(redis_cluster: LocalCluster) -> AsyncIterator[RedisCluster]:
    cluster_client = RedisCluster.from_url(redis_cluster.url, decode_responses=True)
    await cluster_client.initialize()
    yield cluster_client
    await cluster_client.aclose()


@pytest.fixture
def queue(cluster_client: RedisCluster) -> Queue:
    """Overrides conftest's `queue` for this module: a fresh name on the cluster client."""
    return Queue(cluster_client, fresh_name())


def watcher_problems(caplog: pytest.LogCaptureFixture) -> list[str]:
    """What watcher logged at WARNING or above: a worker's loops log their failures and
    carry on, so a test that only looks at results would miss a step failing every time."""
    return [
        f"{r.name}: {r.getMessage()}"
        for r in caplog.records
        if r.name.startswith("watcher") and r.levelno >= logging.WARNING
    ]


# -- what works today --------------------------------------------------------------------------


async def test_scheduler_api_and_every_key_on_one_node(
    queue: Queue, redis_cluster: LocalCluster
) -> None:
    specs = [
        SchedulerSpec(id=f"r{i}", name="h", every=3600, data={"i": i}, owner="me")
        for i in range(200)
    ]
    assert await queue.upsert_schedulers(specs) == ["created"] * 200
    assert await queue.upsert_schedulers(specs) == ["unchanged"] * 200
    info = await queue.get_scheduler("r7")
    assert info is not None and info.data == {"i": 7} and info.next_fire_ms is not None

    # RedisCluster.scan_iter (today: every master) and pipelines (the queue's node)
    ids = sorted(spec.id for spec in specs)
    assert await queue.scheduler_ids() == ids
    listed = await queue.list_schedulers()
    assert [s.id for s in listed] == ids and all(s.next_fire_ms for s in listed)
    fields = await queue.scheduler_fields(["name", "owner"])
    assert len(fields) == 200 and fields["r3"] == ["h", "me"]

    assert await queue.remove_schedulers(["r0", "r1", "nope"]) == 2
    assert (await queue.counts())["schedulers"] == 198
    assert await queue.scheduler_count() == 198
    removed = [e["scheduler"] for e in await queue.events() if e["event"] == "removed"]
    assert sorted(removed) == ["r0", "r1"]

    # One hash tag, one slot: every key of the queue is on the node that serves it.
    owner = redis_cluster.owner(queue.key("schedulers"))
    on_owner = set(redis_cluster.keys_in_slot(owner, key_slot(queue.key("x").encode())))
    parts = ("schedulers", "events", "epochs", "scheduler_count", "owners")
    expected = {queue.key(part) for part in parts}
    expected |= {queue.key(f"scheduler:r{i}") for i in range(2, 200)}
    assert on_owner == expected
    for port in redis_cluster.ports:
        if port != owner:
            with redis.Redis(host="127.0.0.1", port=port) as node:
                assert list(node.scan_iter(match=queue.prefix + "*", count=1000)) == []


async def test_scheduler_fires_runs_and_writes_back(
    queue: Queue, caplog: pytest.LogCaptureFixture
) -> None:
    runs: list[Job] = []

    async def handler(job: Job) -> Outcome:
        runs.append(job)
        n = job.state.get("n", 0) + 1
        assert await job.upsert_scheduler(state={"n": n})  # the fenced write-back
        return Outcome(result=n, report={"outcome": "unchanged", "summary": f"run {n}"})

    await queue.upsert_scheduler("tick", name="h", data={"url": "u"}, every=0.2, immediately=True)
    worker = Worker(queue, {"h": handler}, lease=3.0, grace=1.0)
    async with running(worker):

        async def three_runs_done() -> bool:
            info = await queue.get_scheduler("tick")
            return info is not None and info.state.get("n", 0) >= 3

        await wait_for(three_runs_done, 5)
        beating = await queue.workers()  # heartbeat: a MULTI on the queue's node
    assert [w["id"] for w in beating] == [worker.id]

    info = await queue.get_scheduler("tick")
    assert info is not None and info.count >= 3 and info.fails == 0
    assert info.report is not None and info.report["summary"].startswith("run ")
    # each run read the data when it fired, and the state the previous run wrote
    assert [job.state.get("n", 0) for job in runs[:3]] == [0, 1, 2]
    assert all(job.data == {"url": "u"} and job.scheduler_id == "tick" for job in runs)
    seqs = [job.fence.seq for job in runs if job.fence]
    assert seqs == sorted(set(seqs)) and len(seqs) == len(runs)
    assert (await queue.counts())["failed"] == 0
    assert watcher_problems(caplog) == []


async def test_one_off_jobs_complete_and_blpop_wakes_the_worker(
    queue: Queue, caplog: pytest.LogCaptureFixture
) -> None:
    done: list[int] = []

    async def handler(job: Job) -> int:
        if job.data["n"] == 0 and job.attempt == 1:
            raise Retry("flaky", delay=0.1)
        done.append(job.data["n"])
        return int(job.data["n"]) * 2

    async def completed(n: int) -> bool:
        return (await queue.counts())["completed"] == n

    ids = await queue.add_jobs("h", [{"n": i} for i in range(20)])
    await queue.add_job("h", {"n": 100}, delay=0.3)
    worker = Worker(queue, {"h": handler}, concurrency=5, lease=3.0, grace=1.0)
    async with running(worker):
        await wait_for(lambda: completed(21), 5)
        await asyncio.sleep(0.2)  # idle: blocked in BLPOP on the marker list
        woken = time.monotonic()
        await queue.add_job("h", {"n": 200})
        await wait_for(lambda: completed(22), 2)
        woken = time.monotonic() - woken
        stopping = time.monotonic()  # leaving `running` stops it while BLPOP waits
    stopped = time.monotonic() - stopping

    assert woken < 0.9, f"took {woken:.2f}s: not woken by the marker (BLPOP times out at 1 s)"
    assert stopped < 1.5, f"stopping an idle worker took {stopped:.2f}s"
    assert sorted(done) == [*range(20), 100, 200]
    assert await queue.counts() == {
        "wait": 0,
        "active": 0,
        "delayed": 0,
        "completed": 22,
        "failed": 0,
        "fenced": 0,
        "schedulers": 0,
        "failing": 0,
    }
    job = await queue.job(ids[5])
    assert job and job.state is JobState.DONE and json.loads(job.result or "") == 10
    retries = [e for e in await queue.events() if e["event"] == "retry"]
    assert [(e["job"], e["error"]) for e in retries] == [(ids[0], "flaky")]
    assert watcher_problems(caplog) == []


async def test_fencing(queue: Queue) -> None:
    """Real runs' fences: an older run cannot write back or record a change after a newer
    one did, nor any run after a configuration change reset the state."""
    fences = []

    async def handler(job: Job) -> None:
        fences.append(job.fence)

    await queue.upsert_scheduler("f", name="h", every=0.1, scope="url-1", immediately=True)

    async def two_runs() -> bool:
        return len(fences) >= 2

    async with running(Worker(queue, {"h": handler}, lease=3.0, grace=1.0)):
        await wait_for(two_runs, 5)
    old, new = fences[0], fences[1]
    assert old is not None and new is not None and old.seq < new.seq

    def change(etag: str) -> Change:
        return Change(resource="f", check="h", url="u", time=time.time(), new={"etag": etag})

    assert await queue.write_back("f", new, state={"etag": "B"})
    assert not await queue.write_back("f", old, state={"etag": "A"})
    assert await queue.record_change("f", old, change("A")) is None
    assert await queue.record_change("f", new, change("B")) is not None
    info = await queue.get_scheduler("f")
    assert info is not None and info.state == {"etag": "B"} and info.last_change_ms

    await queue.upsert_scheduler("f", name="h", every=0.1, scope="url-2")  # a sync changed it
    assert not await queue.write_back("f", new, state={"etag": "C"})
    assert await queue.record_change("f", new, change("C")) is None
    reset = await queue.get_scheduler("f")
    assert reset is not None and reset.state == {} and reset.epoch == 2
    assert [c.new for c in await queue.changes("f")] == [{"etag": "B"}]


async def test_etag_check_end_to_end_and_status(
    queue: Queue, caplog: pytest.LogCaptureFixture
) -> None:
    """The real CheckRunner under a real Worker: baseline, then a change recorded in the
    changes stream and the new validator written back (fenced finish), then status."""

    async def stored_is(etag: str) -> bool:
        info = await queue.get_scheduler("docs")
        return info is not None and info.state.get("etag") == etag

    with Origin(etag='"v1"', body=b"one\n") as origin:
        data = {"id": "docs", "url": origin.url, "timeout": 5.0, "notify": []}
        await queue.upsert_scheduler(
            "docs", name="etag", data=data, every=0.2, scope=origin.url, immediately=True
        )
        async with make_client() as http:
            runner = CheckRunner(queue, http, build_notifiers({}, http))
            worker = Worker(
                queue, runner.handler, metrics=runner.stats.snapshot, lease=3.0, grace=1.0
            )
            async with running(worker):
                await wait_for(lambda: stored_is('"v1"'), 5)  # the baseline
                origin.set(etag='"v2"', body=b"two\n")
                await wait_for(lambda: stored_is('"v2"'), 5)  # the change
                snapshot = await collect(queue)
            await runner.drain()

    changes = await queue.changes("docs")
    assert [(c.old, c.new) for c in changes] == [({"etag": '"v1"'}, {"etag": '"v2"'})]
    assert snapshot.queue == queue.name and [w["id"] for w in snapshot.workers] == [worker.id]
    [row] = snapshot.resources
    assert row.id == "docs" and row.check == "etag" and row.url == origin.url
    assert row.outcome in ("changed", "unchanged") and row.failures == 0 and row.last_change
    assert snapshot.counts["completed"] >= 2 and snapshot.counts["failed"] == 0
    render(snapshot)
    outcomes = Counter(json.loads(j)["outcome"] for j in await finished_results(queue))
    assert outcomes["baseline"] == 1 and outcomes["changed"] == 1
    assert watcher_problems(caplog) == []


async def finished_results(queue: Queue) -> list[str]:
    ids = await queue.redis.lrange(queue.key("finished"), 0, -1)
    jobs = [await queue.job(i) for i in ids]
    return [job.result for job in jobs if job and job.result]


# -- gaps found in watcher's code ------------------------------------------------------------------


async def test_cli_reaches_a_queue_on_a_cluster(
    redis_cluster: LocalCluster, cluster_client: RedisCluster, tmp_path: Path
) -> None:
    first = redis_cluster.ports[0]
    name = name_served(redis_cluster, lambda port: port != first)
    await Queue(cluster_client, name).upsert_scheduler("docs", name="etag", every=60)
    env = {k: v for k, v in os.environ.items() if k != "WATCHER_REDIS_URL"}
    done = await asyncio.to_thread(
        subprocess.run,
        [WATCHER, "status", "--json", "--redis", redis_cluster.url, "--queue", name],
        cwd=tmp_path,
        env={**env, "NO_COLOR": "1"},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0, done.stderr
    assert [r["id"] for r in json.loads(done.stdout)["resources"]] == ["docs"]


def time_calls(port: int) -> int:
    with redis.Redis(host="127.0.0.1", port=port) as node:
        return int(node.info("commandstats").get("cmdstat_time", {}).get("calls", 0))


async def test_now_ms_reads_the_clock_the_scripts_read(
    redis_cluster: LocalCluster, cluster_client: RedisCluster
) -> None:
    default = cluster_client.get_default_node().port
    name = name_served(redis_cluster, lambda port: port != default)
    queue = Queue(cluster_client, name)
    owner = redis_cluster.owner(queue.key("schedulers"))
    before = {port: time_calls(port) for port in redis_cluster.ports}
    await queue.now_ms()
    after = {port: time_calls(port) for port in redis_cluster.ports}
    assert [p for p in redis_cluster.ports if after[p] != before[p]] == [owner]


# A reshard moves a slot key by key (`redis-cli --cluster reshard` MIGRATEs 10 keys a batch)
# while clients keep working: a queue's whole data set lives in one slot, so it is split
# between two nodes until the last batch. Every script declares the queue's fixed keys it
# touches (wait, active, schedulers, ...), so while those are split Redis answers
# TRYAGAIN/ASK instead of running the script on half the data; the worker rides that out as
# an outage. Per-job and per-scheduler hashes are built from the prefix (their names come
# from the data), so a batch that moves every fixed key before the hashes is still a gap.


@contextlib.contextmanager
def slot_migrating(cluster: LocalCluster, queue: Queue) -> Any:
    """The queue's slot mid-reshard, from its node to another; finished (whatever happened)
    on exit, so the session's cluster stays whole. Yields (source, target) ports."""
    slot = key_slot(queue.key("x").encode())
    source = cluster.owner(queue.key("x"))
    target = next(port for port in cluster.ports if port != source)
    cluster.begin_migration(slot, source, target)
    try:
        yield source, target
    finally:
        cluster.finish_migration(slot, source, target)
    assert all(cluster.healthy(port) for port in cluster.ports)


async def test_reshard_loses_no_job_taken_on_the_importing_node(
    redis_cluster: LocalCluster, queue: Queue
) -> None:
    """`wait` has moved, `delayed` and `active` not: take is refused, no job is dropped."""
    ids = await queue.add_jobs("h", [{"n": i} for i in range(3)])
    with slot_migrating(redis_cluster, queue) as (source, target):
        redis_cluster.migrate_keys(source, target, [queue.key("wait"), queue.key("marker")])
        taken: list[Job] = []
        with contextlib.suppress(ClusterError):  # refused (the worker retries): not lost
            taken = await take(queue, 10)  # the job hashes are still on the source
    counts = await queue.counts()  # a job taken is leased: in `active`
    assert counts["wait"] + counts["active"] == 3, (
        f"{counts}; took {taken}; jobs: {[await queue.job(i) for i in ids]}"
    )


async def test_reshard_loses_no_job_when_take_aborts_on_the_migrating_node(
    redis_cluster: LocalCluster, queue: Queue
) -> None:
    """The reshard's first step (no key moved yet) with `active` absent: take.lua used to
    be aborted half-way on its first write to an undeclared key; now it runs or is refused
    whole."""
    ids = await queue.add_jobs("h", [{"n": i} for i in range(3)])
    await queue.add_job("h", {"later": True}, delay=3600)  # a retry waiting: `delayed` exists
    with slot_migrating(redis_cluster, queue), contextlib.suppress(ResponseError, ClusterError):
        await take(queue, 10)  # an error is fine (the worker retries): a lost job is not
    counts = await queue.counts()
    assert counts["wait"] + counts["active"] == 3, (
        f"{counts}; jobs: {[await queue.job(i) for i in ids]}"
    )


async def test_reshard_loses_no_job_whose_hash_moved_before_the_fixed_keys(
    redis_cluster: LocalCluster, queue: Queue
) -> None:
    """One job's hash has moved, the fixed keys not (each exists: else the node answers
    TRYAGAIN): take.lua runs on the node the slot is leaving and cannot read that hash ("non
    local key"). It used to lose that id and every id popped after it; now the jobs before it
    are taken and the rest go back to the front of wait, in order."""
    await queue.add_job("h", {"later": True}, delay=3600)  # `delayed`
    [first] = await queue.add_jobs("h", [{"n": 0}])
    assert [job.id for job in await take(queue, 1)] == [first]  # `active`
    ids = await queue.add_jobs("h", [{"n": i} for i in range(1, 5)])
    await queue.set_budgets({"default": Budget(interval_ms=0, burst=1, concurrency=0)})
    await queue.redis.sadd(queue.key("parked"), "-")
    await queue.redis.sadd(queue.key("hostnames"), "-")
    await queue.redis.zadd(queue.key("orphans"), {"-": 0})
    with slot_migrating(redis_cluster, queue) as (source, target):
        redis_cluster.migrate_keys(source, target, [queue.key(f"job:{ids[2]}")])
        taken = await take(queue, 10)
        assert [job.id for job in taken] == ids[:2]
        assert await queue.redis.lrange(queue.key("wait"), 0, -1) == ids[2:]
    assert [job.id for job in await take(queue, 10)] == ids[2:]


async def take(queue: Queue, count: int) -> list[Job]:
    """What a worker's fetch step does: lease jobs."""
    return await queue.take(count, lease_ms=30_000, worker="w", token_prefix="w:1:")


class _ReshardBatchAfterDue(Queue):
    """Runs `batch` right after the next `due` script: a reshard batch landing between a
    worker's two tick calls."""

    batch: Callable[[], None] | None = None

    async def due(self, limit: int) -> Due:
        result = await super().due(limit)
        if self.batch:
            self.batch, batch = None, self.batch
            batch()
        return result


async def test_reshard_keeps_every_scheduler_scheduled(
    redis_cluster: LocalCluster, cluster_client: RedisCluster
) -> None:
    """A batch that moves `schedulers` between a tick's due and fire: fire used to run on
    the target without the scheduler's hash and unschedule it for good; now it is refused."""
    queue = _ReshardBatchAfterDue(cluster_client, fresh_name())
    await queue.upsert_scheduler("a", name="h", every=0.2, immediately=True)  # due now
    with slot_migrating(redis_cluster, queue) as (source, target):
        queue.batch = lambda: redis_cluster.migrate_keys(source, target, [queue.key("schedulers")])
        with contextlib.suppress(ClusterError):  # refused: the ticker retries
            await Ticker(queue).tick()  # due on the source, then fire on the target
    info = await queue.get_scheduler("a")
    assert info is not None, "the scheduler's hash is gone"
    assert info.next_fire_ms is not None, "the scheduler was unscheduled"


async def test_reshard_loses_no_job_when_the_fixed_keys_moved_first(
    redis_cluster: LocalCluster, queue: Queue
) -> None:
    """Every fixed key moved and the jobs' hashes not yet: take.lua runs on the target, finds
    no hash, and puts each id back in wait (it used to drop them) until the hashes arrive."""
    ids = await queue.add_jobs("h", [{"n": i} for i in range(4)])
    assert len(await take(queue, 1)) == 1  # `active` exists
    await queue.add_job("h", {"later": True}, delay=3600)  # and `delayed`
    fixed = [queue.key(part) for part in ("wait", "marker", "delayed", "active", "id")]
    with slot_migrating(redis_cluster, queue) as (source, target):
        on_source = set(redis_cluster.keys_in_slot(source, key_slot(fixed[0].encode())))
        redis_cluster.migrate_keys(source, target, [key for key in fixed if key in on_source])
        with contextlib.suppress(ClusterError):  # runs on the target, the hashes on the source
            await take(queue, 10)
    counts = await queue.counts()
    assert counts["wait"] + counts["active"] == 4, (  # each of the four jobs, none dropped
        f"{counts}; jobs: {[await queue.job(i) for i in ids]}"
    )


def test_a_slot_moved_under_load_loses_no_scheduler_run_or_change(
    redis_cluster: LocalCluster, tmp_path: Path, origin: Origin
) -> None:
    """200 resources every 1 s through `watcher run --processes 2`; the queue's slot moves to
    another node key by key (10 a batch, as `redis-cli --cluster reshard` does) while every
    resource's ETag changes: afterwards every resource still runs every second, none went
    a lease's length without a run, and each change is recorded exactly once."""
    count, name = 200, fresh_name()
    (tmp_path / "watcher.yaml").write_text(
        f"redis: {redis_cluster.url}\nqueue: {name}\n"
        "hosts: {default: {concurrency: 0}}  # 200 resources on one local origin\n"
        "resources:\n"
        + "".join(
            f"  - id: r{n}\n    url: {origin.url}r/{n}\n    every: 1s\n" for n in range(count)
        )
    )
    origin.set(etag='"v1"')
    run = Watcher("run", "--processes", "2", cwd=tmp_path)
    key = f"watcher:{{{name}}}:schedulers"  # any key of the queue: they share one slot
    slot = key_slot(key.encode())
    try:
        asyncio.run(
            wait_for(lambda: len({r.path for r in origin.requests}) >= count, 60, what="baselines")
        )
        time.sleep(2)
        source = redis_cluster.owner(key)
        target = next(port for port in redis_cluster.ports if port != source)
        moving_from = time.monotonic()
        redis_cluster.begin_migration(slot, source, target)
        origin.set(etag='"v2"')  # every resource changes while its slot moves
        while keys := redis_cluster.keys_in_slot(source, slot)[:10]:
            redis_cluster.migrate_keys(source, target, keys)
            time.sleep(0.02)  # the workers go on between batches
        redis_cluster.finish_migration(slot, source, target)
        moved = time.monotonic()
        time.sleep(6)
    finally:
        assert run.stop() == 0, run.output[-5000:]
    assert redis_cluster.owner(key) == target
    by_path: dict[str, list[float]] = {}
    for request in origin.requests:
        by_path.setdefault(request.path, []).append(request.at)
    assert len(by_path) == count
    late = [p for p, times in by_path.items() if max(times) < moved + 3]
    assert not late, f"no longer run after the move: {late[:5]}"
    gaps = [b - a for times in by_path.values() for a, b in itertools.pairwise(times)]
    print(
        f"\nslot moved in {moved - moving_from:.1f}s under {count} resources every 1s; "
        f"{len(origin.requests)} requests, longest gap {max(gaps):.1f}s; the log said:\n"
        + "\n".join(line for line in run.lines if " INFO " not in line)
    )
    long_gaps = sorted(
        (round(b - a, 1), round(a - moving_from, 1), path)
        for path, times in by_path.items()
        for a, b in itertools.pairwise(times)
        if b - a > 3
    )
    # A run lost mid-move would hold its scheduler until its 30 s lease ended; refused
    # calls during the move are ridden out like an outage, with backoff.
    assert max(gaps) < 25, f"runs lost and recovered a lease later: {long_gaps[-10:]}"
    history = json.loads(
        subprocess.run(
            [WATCHER, "history", "--json", "--limit", str(3 * count)],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    )
    changed = Counter(change["resource"] for change in history)
    assert changed == Counter({f"r{n}": 1 for n in range(count)}), changed
    said = [line for line in run.lines if " WARNING " in line or " ERROR " in line]
    assert len(said) <= 16, said  # the move is an outage, said once per loop, not per run
    assert not [line for line in said if " ERROR " in line or " attempt " in line], said
