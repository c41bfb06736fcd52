"""The notifier outbox at the queue level (watcher/outbox.py): a change and its deliveries
are recorded together, a change seen twice is delivered once, a leased delivery comes back
when its worker dies, retries end at the deadline, and the counts say where things stand."""

from __future__ import annotations

import asyncio
import json
import time

from watcher.change import Change
from watcher.jobs import Fence
from watcher.outbox import DeliveryResult
from watcher.queue import Queue

HOUR_MS = 3_600_000


async def a_run(queue: Queue, id: str = "r") -> Fence:
    """A fence as a run of a fresh scheduler carries it."""
    await queue.upsert_scheduler(id, name="etag", every=3600)
    info = await queue.get_scheduler(id)
    assert info is not None
    return Fence(seq=1, epoch=info.epoch)


def change(old: str, new: str) -> Change:
    return Change(
        resource="r", check="etag", url="http://127.0.0.1/", time=time.time(),
        old={"etag": old}, new={"etag": new}, summary=f"ETag {old} → {new}",
    )  # fmt: skip


async def test_a_change_is_recorded_with_one_delivery_per_notifier(queue: Queue) -> None:
    fence = await a_run(queue)
    entry = await queue.record_change(
        "r", fence, change("a", "b"), notify=[("hook", HOUR_MS), ("mail", HOUR_MS)]
    )
    assert entry is not None
    counts = await queue.outbox.counts()
    assert (counts["hook"].pending, counts["mail"].pending) == (1, 1)
    taken = await queue.outbox.take({"hook": 60_000}, 10)
    assert [d.id for d in taken] == [f"{entry}/hook"]  # only the notifiers asked for
    assert taken[0].change_id == entry and taken[0].payload["new"] == {"etag": "b"}
    assert await queue.outbox.done([DeliveryResult(taken[0], "sent")]) == [1]
    states = await queue.outbox.states([f"{entry}/hook", f"{entry}/mail"])
    assert (states[f"{entry}/hook"].state, states[f"{entry}/mail"].state) == ("sent", "pending")
    counts = await queue.outbox.counts()
    assert (counts["hook"].pending, counts["hook"].sent, counts["mail"].pending) == (0, 1, 1)


async def test_the_same_change_seen_twice_is_recorded_and_delivered_once(queue: Queue) -> None:
    """The at-least-once window: a run records its change, dies before writing back its state,
    and the rerun detects the same change (same old and new)."""
    fence = await a_run(queue)
    notify = [("hook", HOUR_MS)]
    assert await queue.record_change("r", fence, change("a", "b"), notify=notify) is not None
    assert await queue.record_change("r", fence, change("a", "b"), notify=notify) is None
    assert len(await queue.changes("r")) == 1
    assert (await queue.outbox.counts())["hook"].pending == 1
    # A new change (b -> c), and even a change back (c -> b), are new changes.
    assert await queue.record_change("r", fence, change("b", "c"), notify=notify) is not None
    assert await queue.record_change("r", fence, change("c", "b"), notify=notify) is not None
    assert (await queue.outbox.counts())["hook"].pending == 3


async def test_a_delivery_whose_worker_died_is_taken_again_after_its_lease(queue: Queue) -> None:
    fence = await a_run(queue)
    await queue.record_change("r", fence, change("a", "b"), notify=[("hook", HOUR_MS)])
    first = await queue.outbox.take({"hook": 300}, 10)
    assert len(first) == 1
    assert await queue.outbox.take({"hook": 300}, 10) == []  # leased
    await asyncio.sleep(0.4)  # the worker that took it died: its lease runs out
    again = await queue.outbox.take({"hook": 60_000}, 10)
    assert [d.id for d in again] == [first[0].id] and again[0].attempt == 2
    # The dead worker's late word no longer counts; the live one's does.
    assert await queue.outbox.done([DeliveryResult(first[0], "sent")]) == [0]
    assert await queue.outbox.done([DeliveryResult(again[0], "sent")]) == [1]


async def test_retries_end_at_the_deadline_and_the_failure_is_kept(queue: Queue) -> None:
    fence = await a_run(queue)
    await queue.record_change("r", fence, change("a", "b"), notify=[("hook", 500)])
    taken = await queue.outbox.take({"hook": 60_000}, 10)
    retry = DeliveryResult(taken[0], "retry", delay_ms=100, error="connection refused")
    assert await queue.outbox.done([retry]) == [2]
    assert await queue.outbox.take({"hook": 60_000}, 10) == []  # not yet due
    await asyncio.sleep(0.15)
    taken = await queue.outbox.take({"hook": 60_000}, 10)
    late = DeliveryResult(taken[0], "retry", delay_ms=1000, error="connection refused")
    assert await queue.outbox.done([late]) == [3]  # the next try would be past the deadline
    counts = (await queue.outbox.counts())["hook"]
    assert (counts.pending, counts.failed, counts.sent) == (0, 1, 0)
    [failed] = await queue.outbox.failed()
    assert (failed["resource"], failed["error"], failed["att"]) == ("r", "connection refused", "2")


async def test_alerts_say_down_once_and_recovered_once(queue: Queue) -> None:
    """finish.lua's alerts: `after` runs in a row that gave up say down once; the first
    success says recovered; runs in between say nothing."""
    from watcher.jobs import Finished
    from watcher.ticker import Ticker

    await queue.upsert_scheduler("r", name="etag", every=3600, attempts=1, immediately=True)
    alert = {"after": 2, "notify": [["hook", HOUR_MS]], "message": {"resource": "r"}}
    events = []
    for outcome in ("fail", "fail", "fail", "fail", "ok", "ok"):
        await queue.redis.zadd(queue.key("schedulers"), {"r": await queue.now_ms()})  # due
        await Ticker(queue).tick()
        [job] = await queue.take(1, lease_ms=60_000, worker="w", token_prefix="t")
        said = {**alert, "message": {"resource": "r", "summary": f"run {len(events)}"}}
        finished = Finished(job.lease, outcome, payload="HTTP 503", alert=json.dumps(said))
        await queue.finish([finished], keep_ms=60_000, keep_runs_ms=60_000, cap=100)
        taken = await queue.outbox.take({"hook": 60_000}, 10)
        events.append([d.payload["event"] for d in taken])
    assert events == [[], ["down"], [], [], ["recovered"], []]


async def test_stale_is_said_once_and_changing_again_when_it_changes(queue: Queue) -> None:
    """finish.lua says "stale" once when a resource has not changed for `stale` ms; change.lua
    says "changing" when it changes again."""
    from watcher.jobs import Finished
    from watcher.ticker import Ticker

    await queue.upsert_scheduler("r", name="etag", every=3600, immediately=True)
    alert = {
        "stale": 200,
        "stale_words": "200ms",
        "notify": [["hook", HOUR_MS]],
        "message": {"resource": "r", "summary": "unchanged"},
    }
    said: list[list[str]] = []

    async def a_successful_run() -> None:
        await queue.redis.zadd(queue.key("schedulers"), {"r": await queue.now_ms()})
        await Ticker(queue).tick()
        [job] = await queue.take(1, lease_ms=60_000, worker="w", token_prefix="t")
        done = Finished(job.lease, "ok", alert=json.dumps(alert))
        await queue.finish([done], keep_ms=60_000, keep_runs_ms=60_000, cap=100)
        taken = await queue.outbox.take({"hook": 60_000}, 10)
        said.append([f"{d.payload['event']}: {d.payload['summary']}" for d in taken])

    await a_successful_run()  # just created: not stale yet
    await asyncio.sleep(0.25)
    await a_successful_run()  # 250 ms without a change: stale, said once
    await a_successful_run()  # still stale: nothing more
    info = await queue.get_scheduler("r")
    assert info is not None
    entry = await queue.record_change(
        "r", Fence(seq=9, epoch=info.epoch), change("a", "b"), alert=json.dumps(alert)
    )
    assert entry is not None
    taken = await queue.outbox.take({"hook": 60_000}, 10)
    said.append([d.payload["event"] for d in taken])
    assert said == [[], ["stale: no change for 200ms"], [], ["changing"]]


async def test_a_notifier_no_worker_knows_holds_up_no_other_and_fails_at_its_deadline(
    queue: Queue,
) -> None:
    fence = await a_run(queue)
    for n in range(140):  # more than a take looks at, all for a notifier nobody has now
        await queue.record_change("r", fence, change(str(n), str(n + 1)), notify=[("gone", 50)])
    await queue.record_change("r", fence, change("x", "y"), notify=[("hook", HOUR_MS)])
    taken = await queue.outbox.take({"hook": 60_000}, 32)
    assert [d.notifier for d in taken] == ["hook"]
    await asyncio.sleep(0.1)  # past the deadline of every "gone" delivery
    while (await queue.outbox.counts())["gone"].pending:
        assert await queue.outbox.take({"hook": 60_000}, 32) == []
    counts = await queue.outbox.counts()
    assert (counts["gone"].pending, counts["gone"].failed) == (0, 140)
    assert "not delivered within its deadline" in (await queue.outbox.failed(1))[0]["error"]


async def test_remind_every_says_down_again_while_it_stays_down(queue: Queue) -> None:
    from watcher.jobs import Finished
    from watcher.ticker import Ticker

    await queue.upsert_scheduler("r", name="etag", every=3600, attempts=1, immediately=True)
    alert = {"after": 1, "remind": 300, "notify": [["hook", HOUR_MS]], "message": {}}
    said = []
    for pause in (0.0, 0.1, 0.35, 0.1):  # failed runs at 0, 0.1, 0.45 and 0.55 s
        await asyncio.sleep(pause)
        await queue.redis.zadd(queue.key("schedulers"), {"r": await queue.now_ms()})
        await Ticker(queue).tick()
        [job] = await queue.take(1, lease_ms=60_000, worker="w", token_prefix="t")
        failed = Finished(job.lease, "fail", payload="HTTP 503", alert=json.dumps(alert))
        await queue.finish([failed], keep_ms=60_000, keep_runs_ms=60_000, cap=100)
        taken = await queue.outbox.take({"hook": 60_000}, 10)
        said.append([d.payload["event"] for d in taken])
    assert said == [["down"], [], ["down"], []]  # again once `remind` passed, not every run


async def test_stale_counts_from_created_on_a_scheduler_stored_before_since(queue: Queue) -> None:
    """Schedulers written by an older watcher stored `created` instead of `since`: a resource
    unchanged since long before is said to be stale on its first successful run."""
    from watcher.jobs import Finished
    from watcher.ticker import Ticker

    await queue.upsert_scheduler("r", name="etag", every=3600, immediately=True)
    await queue.redis.hset(queue.key("scheduler:r"), "created", await queue.now_ms() - 10_000)
    await Ticker(queue).tick()
    [job] = await queue.take(1, lease_ms=60_000, worker="w", token_prefix="t")
    alert = {"stale": 5_000, "stale_words": "5s", "notify": [["hook", HOUR_MS]]}
    done = Finished(job.lease, "ok", alert=json.dumps(alert))
    await queue.finish([done], keep_ms=60_000, keep_runs_ms=60_000, cap=100)
    taken = await queue.outbox.take({"hook": 60_000}, 10)
    assert [d.payload["event"] for d in taken] == ["stale"]
