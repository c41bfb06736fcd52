"""Guarantee 1 (upsert is atomic and idempotent) and bad input to the API."""

from __future__ import annotations

import asyncio
import multiprocessing

import pytest

from watcher.queue import Fence, Queue, QueueError, SchedulerSpec
from watcher.schedule import phase_ms
from watcher.worker import Worker

from .helpers import running, wait_for


async def test_create_twice_gives_one_scheduler(queue: Queue) -> None:
    assert await queue.upsert_scheduler("a", name="h", data={"x": 1}, every=10) == "created"
    assert await queue.upsert_scheduler("a", name="h", data={"x": 1}, every=10) == "unchanged"
    assert await queue.scheduler_ids() == ["a"]
    assert (await queue.counts())["schedulers"] == 1


async def test_data_change_keeps_phase_schedule_change_recomputes(queue: Queue) -> None:
    await queue.upsert_scheduler("a", name="h", data={"x": 1}, every=60)
    before = await queue.get_scheduler("a")
    assert before is not None
    assert await queue.upsert_scheduler("a", name="h", data={"x": 2}, every=60) == "updated"
    after = await queue.get_scheduler("a")
    assert after is not None
    assert after.data == {"x": 2}
    assert after.next_fire_ms == before.next_fire_ms
    assert after.rev == before.rev + 1

    await queue.upsert_scheduler("a", name="h", data={"x": 2}, every=3600)
    changed = await queue.get_scheduler("a")
    assert changed is not None
    assert changed.schedule.every_ms == 3_600_000
    assert changed.next_fire_ms is not None  # recomputed: on the new schedule's slots
    assert (changed.next_fire_ms - phase_ms("a", 3_600_000)) % 3_600_000 == 0


async def test_scope_change_resets_state(queue: Queue) -> None:
    await queue.upsert_scheduler("a", name="h", every=60, scope="url-1", state={"etag": '"1"'})
    await queue.upsert_scheduler("a", name="h", every=60, scope="url-1", data={"timeout": 5})
    kept = await queue.get_scheduler("a")
    assert kept is not None and kept.state == {"etag": '"1"'} and kept.epoch == 1
    await queue.upsert_scheduler("a", name="h", every=60, scope="url-2", data={"timeout": 5})
    reset = await queue.get_scheduler("a")
    assert reset is not None and reset.state == {} and reset.epoch == 2


async def test_remove(queue: Queue) -> None:
    await queue.upsert_scheduler("a", name="h", every=1)
    assert await queue.remove_scheduler("a")
    assert not await queue.remove_scheduler("a")
    assert await queue.get_scheduler("a") is None
    assert (await queue.counts())["schedulers"] == 0


async def test_list_schedulers_with_next_fire(queue: Queue) -> None:
    await queue.upsert_schedulers(
        [SchedulerSpec(id=f"s{i}", name="h", every=10 + i) for i in range(5)]
        + [SchedulerSpec(id="c", name="h", cron="0 3 * * *", tz="Europe/Paris")]
    )
    listed = await queue.list_schedulers()
    assert [s.id for s in listed] == ["c", "s0", "s1", "s2", "s3", "s4"]
    now = await queue.now_ms()
    for s in listed:
        assert s.next_fire_ms is not None and now < s.next_fire_ms <= now + 86_400_000


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"cron": "0 3 * * * *"}, "cron"),
        ({"cron": "61 * * * *"}, "cron"),
        ({"every": 0}, "every"),
        ({"every": -5}, "every"),
        ({"every": 10, "cron": "* * * * *"}, "exactly one"),
        ({}, "exactly one"),
        ({"every": 10, "data": {"when": object()}}, "JSON"),
        ({"every": 10, "data": {"x": float("nan")}}, "JSON"),
        ({"every": 10, "jitter": 20}, "jitter"),
        ({"cron": "* * * * *", "tz": "Mars/Olympus"}, "time zone"),
    ],
)
async def test_bad_input_raises_and_writes_nothing(
    queue: Queue, fields: dict, message: str
) -> None:
    before = await queue.redis.keys(queue.prefix + "*")
    with pytest.raises(QueueError, match=message):
        await queue.upsert_scheduler("a", name="h", **fields)
    assert await queue.redis.keys(queue.prefix + "*") == before


@pytest.mark.parametrize("bad_id", ["", "a b", "a{b}", "x\n", "é", "a" * 201, None])
async def test_bad_ids_rejected(queue: Queue, bad_id: object) -> None:
    with pytest.raises(QueueError, match="invalid scheduler id"):
        await queue.upsert_scheduler(bad_id, name="h", every=1)  # type: ignore[arg-type]
    assert await queue.redis.keys(queue.prefix + "*") == []


@pytest.mark.parametrize(
    "bad",
    [
        SchedulerSpec(id="bad", name="h", every=-1),
        SchedulerSpec(id="bad", name="h", every=1, start=1_000, end=2_000),  # ended in 1970
    ],
)
async def test_batch_is_validated_before_any_write(queue: Queue, bad: SchedulerSpec) -> None:
    specs = [SchedulerSpec(id=f"ok{i}", name="h", every=1) for i in range(1500)] + [bad]
    with pytest.raises(QueueError, match="'bad'"):
        await queue.upsert_schedulers(specs)
    assert await queue.redis.keys(queue.prefix + "*") == []


def _upsert_many(url: str, name: str, process: int) -> None:
    async def go() -> None:
        q = Queue.from_url(url, name)
        await asyncio.gather(
            *(
                q.upsert_scheduler("same", name="h", data={"writer": process, "i": i}, every=0.05)
                for i in range(10)
            )
        )
        await q.close()

    asyncio.run(go())


async def test_concurrent_upserts_leave_one_scheduler_and_one_pending_job(
    queue: Queue, redis_url: str
) -> None:
    """50 upserts of one id from 5 processes while a worker ticks (every 50 ms) and runs
    nothing: one scheduler, and never more than one pending job for it."""
    never_done = asyncio.Event()

    async def blocked(job: object) -> None:
        await never_done.wait()

    worker = Worker(queue, {"h": blocked}, concurrency=5, grace=0.1)
    async with running(worker):
        ctx = multiprocessing.get_context("spawn")
        procs = [
            ctx.Process(target=_upsert_many, args=(redis_url, queue.name, p)) for p in range(5)
        ]
        for p in procs:
            p.start()
        for p in procs:
            p.join(30)
            assert p.exitcode == 0
        await asyncio.sleep(0.3)  # several more ticks
        assert await queue.scheduler_ids() == ["same"]
        counts = await queue.counts()
        assert counts["wait"] + counts["active"] + counts["delayed"] == 1
        info = await queue.get_scheduler("same")
        assert info is not None and info.count == 1 and info.skipped >= 3

    await wait_for(lambda: _no_pending(queue), 5)


async def _no_pending(queue: Queue) -> bool:
    counts = await queue.counts()
    return counts["active"] == 0


async def test_data_set_back_to_empty_is_kept(queue: Queue) -> None:
    await queue.upsert_scheduler("a", name="h", data={"x": 1}, every=60)
    assert await queue.upsert_scheduler("a", name="h", data={}, every=60) == "updated"
    info = await queue.get_scheduler("a")
    assert info is not None and info.data == {}


async def test_schedulers_created_together_or_again_never_share_an_epoch(queue: Queue) -> None:
    """upsert.lua reserves a block of epochs per call: each new scheduler still gets its own,
    and one removed and created again gets a new one, so a run of the old one is fenced."""
    specs = [SchedulerSpec(id=f"s{n}", name="h", every=60) for n in range(5)]
    await queue.upsert_schedulers(specs)
    infos = [await queue.get_scheduler(s.id) for s in specs]
    first = {info.id: info.epoch for info in infos if info is not None}
    assert len(set(first.values())) == 5
    await queue.remove_schedulers(["s2"])
    await queue.upsert_schedulers([specs[2], SchedulerSpec(id="s5", name="h", every=60)])
    again = await queue.get_scheduler("s2")
    assert again is not None and again.epoch not in first.values()
    assert not await queue.write_back("s2", Fence(seq=1, epoch=first["s2"]), state={"v": 1})


async def test_an_owner_is_stored_once_and_one_stored_whole_before_still_reads(
    queue: Queue,
) -> None:
    """upsert.lua stores an owner as a short code from the queue's `owners` table; a hash
    written before codes existed holds the owner itself, and still reads and compares as it."""
    owner = "yaml:/srv/monitoring/production/watcher.yaml"
    specs = [SchedulerSpec(id=f"s{n}", name="h", every=60, owner=owner) for n in range(3)]
    await queue.upsert_schedulers(specs)
    codes = {await queue.redis.hget(queue.key(f"scheduler:{s.id}"), "owner") for s in specs}
    assert codes == {"#1"}
    assert {row[1] for row in (await queue.scheduler_fields(("name", "owner"))).values()} == {owner}

    await queue.redis.hset(queue.key("scheduler:s1"), "owner", owner)  # as stored before codes
    info = await queue.get_scheduler("s1")
    assert info is not None and info.owner == owner
    assert await queue.upsert_schedulers([specs[1]]) == ["unchanged"]
    moved = SchedulerSpec(id="s1", name="h", every=60, owner="yaml:/elsewhere.yaml")
    assert await queue.upsert_schedulers([moved]) == ["updated"]
    assert await queue.redis.hget(queue.key("scheduler:s1"), "owner") == "#2"
    [listed] = await queue.list_schedulers(["s1"])
    assert listed.owner == "yaml:/elsewhere.yaml"


async def test_fields_at_their_default_are_not_stored_and_read_back_as_the_default(
    queue: Queue,
) -> None:
    """A new scheduler's hash leaves out the default check name and its revision count (an
    idle scheduler stays in fewer bytes); they read back as "etag" and 0, runs get the name,
    and a name set back to the default is removed again."""
    from watcher.ticker import Ticker

    await queue.upsert_scheduler("a", name="etag", data={"x": 1}, every=60, immediately=True)
    key = queue.key("scheduler:a")
    assert await queue.redis.hmget(key, "name", "rev") == [None, None]
    info = await queue.get_scheduler("a")
    assert info is not None and (info.name, info.rev) == ("etag", 0)
    assert (await queue.scheduler_fields(("name", "data")))["a"] == ["etag", '{"x":1}']
    await Ticker(queue).tick()
    [job] = await queue.take(1, lease_ms=60_000, worker="w", token_prefix="t")
    assert job.name == "etag" and job.scheduler_id == "a"

    assert await queue.upsert_scheduler("a", name="status", data={"x": 1}, every=60) == "updated"
    assert await queue.redis.hmget(key, "name", "rev") == ["status", "1"]
    assert await queue.upsert_scheduler("a", name="etag", data={"x": 1}, every=60) == "updated"
    assert await queue.redis.hget(key, "name") is None
    info = await queue.get_scheduler("a")
    assert info is not None and (info.name, info.rev) == ("etag", 2)
