"""Guarantees 2-7 and 9 in one process: latest data, no overlap, fencing, retries, leases."""

from __future__ import annotations

import asyncio
import itertools
import time

from rich.console import Console

from watcher.jobs import JobState
from watcher.queue import Fence, Queue
from watcher.status import collect, render
from watcher.ticker import Ticker
from watcher.worker import Fail, Job, Outcome, Retry, Worker

from .helpers import running, wait_for


async def test_seed_pattern_next_run_sees_new_etag_phase_kept(queue: Queue) -> None:
    """Every 200 ms a handler reads data["etag"]; when the 'resource' reports a new one it
    upserts its own scheduler; the very next run must see it, and no run a stale value."""
    resource = {"etag": "v1"}
    runs: list[tuple[str, int, str | None]] = []  # (etag seen, slot, etag upserted)

    async def handler(job: Job) -> None:
        upserted = None
        if resource["etag"] != job.data["etag"]:
            upserted = resource["etag"]
            assert await job.upsert_scheduler(data={"etag": upserted})
        runs.append((job.data["etag"], job.scheduled_at or 0, upserted))

    await queue.upsert_scheduler("res", name="check", data={"etag": "v1"}, every=0.2)
    phase = (await queue.get_scheduler("res")).next_fire_ms % 200  # type: ignore[union-attr]
    async with running(Worker(queue, {"check": handler})):
        for new in ("v2", "v3", "v4"):
            await wait_for(lambda: _ran(runs, 2), 5)
            runs_before = len(runs)
            resource["etag"] = new
            await wait_for(lambda n=runs_before: _ran_since(runs, n, 3), 5)
    upserts = [i for i, run in enumerate(runs) if run[2] is not None]
    assert [runs[i][2] for i in upserts] == ["v2", "v3", "v4"]  # each change upserted once
    for i in upserts:
        assert runs[i + 1][0] == runs[i][2]  # the very next run sees the new value
    seen = [etag for etag, _, _ in runs]
    assert seen == sorted(seen)  # never an older value after a newer one
    slots = [at for _, at, _ in runs]
    assert all(b - a == 200 for a, b in itertools.pairwise(slots))  # no slot lost
    assert {at % 200 for at in slots} == {phase}  # the phase never moved
    assert (await queue.get_scheduler("res")).data == {"etag": "v4"}  # type: ignore[union-attr]


async def _ran(runs: list, n: int) -> bool:
    return len(runs) >= n


async def _ran_since(runs: list, start: int, n: int) -> bool:
    return len(runs) >= start + n


async def test_run_reads_data_when_it_starts_not_when_queued(queue: Queue) -> None:
    """A run that fired while the worker was busy reads the data upserted after it fired."""
    await queue.upsert_scheduler("res", name="check", data={"v": 1}, every=0.1)
    await asyncio.sleep(0.3)
    seen: list[int] = []

    async def handler(job: Job) -> None:
        seen.append(job.data["v"])

    # fire without running (a ticker alone), then change the data, then run.
    async with running(Ticker(queue)):
        await wait_for(lambda: _waiting(queue, 1), 3)
    await queue.upsert_scheduler("res", name="check", data={"v": 2}, every=0.1)
    async with running(Worker(queue, {"check": handler}, tick=False)):
        await wait_for(lambda: _ran(seen, 1), 3)
    assert seen == [2]


async def _waiting(queue: Queue, n: int) -> bool:
    return (await queue.counts())["wait"] >= n


async def test_no_overlap_skips_and_counts(queue: Queue) -> None:
    await queue.upsert_scheduler("slow", name="slow", every=0.1)
    await queue.upsert_scheduler("slow-overlap", name="slow", every=0.1, overlap=True)
    active: dict[str, int] = {"slow": 0, "slow-overlap": 0}
    peak: dict[str, int] = {"slow": 0, "slow-overlap": 0}

    async def slow(job: Job) -> None:
        sid = job.scheduler_id or ""
        active[sid] += 1
        peak[sid] = max(peak[sid], active[sid])
        await asyncio.sleep(0.45)
        active[sid] -= 1

    async with running(Worker(queue, {"slow": slow}, concurrency=20)):
        await asyncio.sleep(1.5)
    info = await queue.get_scheduler("slow")
    assert info is not None
    assert peak["slow"] == 1
    assert info.skipped >= 6  # ~15 ticks, ~4 runs
    assert info.count + info.skipped >= 12
    assert peak["slow-overlap"] >= 3
    assert (await queue.get_scheduler("slow-overlap")).skipped == 0  # type: ignore[union-attr]


async def test_fencing_slow_old_run_cannot_overwrite_newer_state(queue: Queue) -> None:
    """Run 1 is held until run 2 has written its state and no run follows; run 1's late
    write-back must then be fenced off."""
    await queue.upsert_scheduler("res", name="check", every=0.1, overlap=True)
    release_first = asyncio.Event()
    finished: list[int] = []

    async def handler(job: Job) -> Outcome:
        run = job.fence.seq if job.fence else 0
        if run == 1:
            await release_first.wait()
        finished.append(run)
        return Outcome(state={"run": run})

    async with running(Worker(queue, {"check": handler}, concurrency=10)):
        await wait_for(lambda: _state_is_newer_than(queue, 1), 5)
        await queue.redis.zadd(queue.key("schedulers"), {"res": 2**50})  # no more runs
        await asyncio.sleep(0.3)  # let runs already fired finish
        newest = (await queue.get_scheduler("res")).state["run"]  # type: ignore[union-attr]
        release_first.set()
        await wait_for(lambda: _ran(finished, newest), 5)
        await wait_for(lambda: _no_active(queue), 5)
    info = await queue.get_scheduler("res")
    assert info is not None
    assert 1 in finished and finished[-1] == 1  # the old run really finished last
    assert info.state == {"run": newest}
    assert (await queue.counts())["fenced"] >= 1  # counted for status, not silently dropped


async def _state_is_newer_than(queue: Queue, run: int) -> bool:
    info = await queue.get_scheduler("res")
    return info is not None and info.state.get("run", 0) > run


async def _no_active(queue: Queue) -> bool:
    return (await queue.counts())["active"] == 0


async def test_run_of_a_removed_and_recreated_scheduler_is_fenced(queue: Queue) -> None:
    """A run in flight when its scheduler is removed and created again (a resource disabled
    and enabled) must not write the old life's state into the new one."""
    await queue.upsert_scheduler("res", name="check", every=0.1)
    started, release = asyncio.Event(), asyncio.Event()

    async def handler(job: Job) -> Outcome:
        started.set()
        await release.wait()
        return Outcome(state={"etag": "old-life"})

    async with running(Worker(queue, {"check": handler})):
        await started.wait()
        await queue.remove_scheduler("res")
        await queue.upsert_scheduler("res", name="check", every=3600)
        release.set()
        await wait_for(lambda: _completed(queue, 1), 5)
    info = await queue.get_scheduler("res")
    assert info is not None and info.state == {}


async def test_fencing_state_reset_by_reconfiguration(queue: Queue) -> None:
    """A run that fired before a sync changed the URL (the scope) cannot bring the old
    URL's validators back, neither by its own upsert nor by the completion's write-back."""
    await queue.upsert_scheduler("res", name="check", every=0.1, scope="url-1")
    started, release = asyncio.Event(), asyncio.Event()
    results: list[bool] = []

    async def handler(job: Job) -> Outcome:
        started.set()
        await release.wait()
        results.append(await job.upsert_scheduler(state={"etag": "old-url"}))
        return Outcome(state={"etag": "old-url"})

    async with running(Worker(queue, {"check": handler})) as worker:
        await started.wait()
        await queue.upsert_scheduler("res", name="check", every=0.1, scope="url-2")
        release.set()
        await wait_for(lambda: _ran(results, 1), 3)
        await wait_for(lambda: worker.fenced == 1, 3)  # the completion's write-back
    assert results[0] is False
    info = await queue.get_scheduler("res")
    assert info is not None and "etag" not in info.state
    assert (await queue.counts())["fenced"] == 2  # the run's own upsert and its completion
    console = Console(width=200, record=True)
    console.print(render(await collect(queue)))
    assert "fenced writes 2" in console.export_text()  # shown in `watcher status`


async def test_write_back_fence_rules(queue: Queue) -> None:
    await queue.upsert_scheduler("res", name="check", every=60)
    assert await queue.write_back("res", Fence(seq=2, epoch=1), state={"v": 2})
    assert not await queue.write_back("res", Fence(seq=1, epoch=1), state={"v": 1})
    assert await queue.write_back("res", Fence(seq=2, epoch=1), state={"v": 22})  # same run
    assert not await queue.write_back("res", Fence(seq=3, epoch=9), state={"v": 3})
    assert not await queue.write_back("gone", Fence(seq=3, epoch=1), state={"v": 3})
    assert (await queue.get_scheduler("res")).state == {"v": 22}  # type: ignore[union-attr]
    assert (await queue.counts())["fenced"] == 2  # a missing scheduler is not a fenced write


async def test_write_back_of_a_new_interval_keeps_jitter(queue: Queue) -> None:
    await queue.upsert_scheduler("res", name="check", every=60, jitter=5)
    assert await queue.write_back("res", Fence(seq=1, epoch=1), every=30)
    info = await queue.get_scheduler("res")
    assert info is not None
    assert (info.schedule.every_ms, info.schedule.jitter_ms) == (30_000, 5_000)


async def test_retries_with_exponential_backoff_then_success(queue: Queue) -> None:
    attempts: list[float] = []

    async def flaky(job: Job) -> str:
        attempts.append(time.monotonic())
        if job.attempt < 3:
            raise ConnectionResetError("transient")
        return "ok"

    await queue.add_job("flaky", {}, attempts=5)
    worker = Worker(queue, {"flaky": flaky}, backoff_base=0.2, tick=False)
    async with running(worker):
        await wait_for(lambda: _completed(queue, 1), 5)
    gaps = [b - a for a, b in itertools.pairwise(attempts)]
    assert len(attempts) == 3
    assert 0.1 <= gaps[0] <= 0.4  # 0.2 s * [0.5, 1.0] plus scheduling slack
    assert 0.2 <= gaps[1] <= 0.6  # 0.4 s * [0.5, 1.0]
    events = [e["event"] for e in await queue.events()]
    assert events.count("retry") == 2


async def test_retry_after_delay_is_honoured_and_permanent_failure_not_retried(
    queue: Queue,
) -> None:
    calls: dict[str, list[float]] = {"later": [], "broken": []}

    async def later(job: Job) -> None:
        calls["later"].append(time.monotonic())
        if job.attempt == 1:
            raise Retry("429", delay=0.5)

    async def broken(job: Job) -> None:
        calls["broken"].append(time.monotonic())
        raise Fail("404 Not Found")

    await queue.add_job("later", {})
    failed_id = await queue.add_job("broken", {}, attempts=5)
    async with running(Worker(queue, {"later": later, "broken": broken}, tick=False)):
        await wait_for(lambda: _completed(queue, 1), 5)
    assert len(calls["later"]) == 2
    assert calls["later"][1] - calls["later"][0] >= 0.48
    assert len(calls["broken"]) == 1
    job = await queue.job(failed_id)
    assert job and job.state is JobState.FAILED and job.error == "404 Not Found"
    assert (await queue.counts())["failed"] == 1


async def test_attempts_exhausted_fails(queue: Queue) -> None:
    async def always(job: Job) -> None:
        raise TimeoutError("slow origin")

    jid = await queue.add_job("always", {}, attempts=2)
    async with running(Worker(queue, {"always": always}, backoff_base=0.05, tick=False)):
        await wait_for(lambda: _failed(queue, 1), 5)
    job = await queue.job(jid)
    assert job and job.attempt == 2 and "slow origin" in (job.error or "")


async def test_lease_is_extended_while_job_runs(queue: Queue) -> None:
    runs: list[str] = []

    async def long(job: Job) -> None:
        runs.append(job.id)
        await asyncio.sleep(1.5)  # five times the lease

    await queue.add_job("long", {})
    async with running(Worker(queue, {"long": long}, lease=0.3, tick=False)):
        await wait_for(lambda: _completed(queue, 1), 5)
    assert len(runs) == 1


async def test_unknown_handler_fails_clearly(queue: Queue) -> None:
    jid = await queue.add_job("nobody", {})
    async with running(Worker(queue, {}, tick=False)):
        await wait_for(lambda: _failed(queue, 1), 5)
    job = await queue.job(jid)
    assert job and job.error == "no handler for 'nobody'"


async def test_delayed_job_runs_after_delay(queue: Queue) -> None:
    ran: list[float] = []

    async def h(job: Job) -> None:
        ran.append(time.monotonic())

    start = time.monotonic()
    await queue.add_job("h", {}, delay=0.5)
    async with running(Worker(queue, {"h": h}, tick=False)):
        await wait_for(lambda: _ran(ran, 1), 5)
    assert 0.45 <= ran[0] - start <= 1.5


async def test_removed_scheduler_pending_run_is_dropped(queue: Queue) -> None:
    await queue.upsert_scheduler("gone", name="h", every=0.05)
    async with running(Ticker(queue)):
        await wait_for(lambda: _waiting(queue, 1), 3)
    await queue.remove_scheduler("gone")
    ran: list[str] = []

    async def h(job: Job) -> None:
        ran.append(job.id)

    async with running(Worker(queue, {"h": h}, tick=False)):
        await wait_for(lambda: _waiting_zero(queue), 3)
    assert ran == []


async def _waiting_zero(queue: Queue) -> bool:
    return (await queue.counts())["wait"] == 0


async def _completed(queue: Queue, n: int) -> bool:
    return (await queue.counts())["completed"] >= n


async def _failed(queue: Queue, n: int) -> bool:
    return (await queue.counts())["failed"] >= n


async def test_unstorable_state_fails_the_job_and_the_worker_goes_on(queue: Queue) -> None:
    async def bad(job: Job) -> Outcome:
        return Outcome(state={"when": object()})

    async def good(job: Job) -> str:
        return "ok"

    bad_id = await queue.add_job("bad", {})
    await queue.add_job("good", {})
    async with running(Worker(queue, {"bad": bad, "good": good}, tick=False)):
        await wait_for(lambda: _completed(queue, 1), 5)
        await wait_for(lambda: _failed(queue, 1), 5)
    job = await queue.job(bad_id)
    assert job and job.state is JobState.FAILED and "not JSON-serialisable" in (job.error or "")


async def test_a_scheduler_entry_without_its_hash_is_put_off_then_dropped(queue: Queue) -> None:
    """600 stale entries (due, no hash) must not starve a real scheduler. Each is put off a
    second at a time (mid-reshard its hash may still be arriving), and dropped once missing
    for a minute."""
    from watcher.ticker import Ticker

    await queue.redis.zadd(queue.key("schedulers"), {f"ghost{i}": i for i in range(600)})
    await queue.upsert_scheduler("real", name="h", every=0.1)
    ran: list[str] = []

    async def h(job: Job) -> None:
        ran.append(job.id)

    async with running(Worker(queue, {"h": h})):
        await wait_for(lambda: _ran(ran, 1), 5)
    now = await queue.now_ms()
    ghosts = await queue.redis.zrange(queue.key("schedulers"), 0, -1, withscores=True)
    assert all(score > now - 5_000 for id, score in ghosts if id.startswith("ghost"))
    assert len(ghosts) == 601

    missing_since = now - 61_000  # as if missing for over a minute
    await queue.redis.zadd(queue.key("orphans"), {f"s:ghost{i}": missing_since for i in range(600)})
    await queue.redis.zadd(queue.key("schedulers"), {f"ghost{i}": i for i in range(600)})
    for _ in range(2):  # due reads 500 a tick
        await Ticker(queue).tick()
    assert await queue.redis.zrange(queue.key("schedulers"), 0, -1) == ["real"]


async def test_job_failed_by_lease_expiry_expires_and_is_listed(queue: Queue) -> None:
    jid = await queue.add_job("h", {}, attempts=1)
    taken = await queue.take(1, lease_ms=100, worker="dead-worker", token_prefix="dead:1:")
    assert [job.id for job in taken] == [jid]  # leased for 100 ms; its worker never comes back
    await asyncio.sleep(0.2)
    assert await queue.recover(limit=1000, keep_ms=60_000, cap=1000) == 1
    job = await queue.job(jid)
    assert job and job.state is JobState.FAILED and "lease expired" in (job.error or "")
    assert 0 < await queue.redis.pttl(queue.key(f"job:{jid}")) <= 60_000
    assert await queue.redis.lrange(queue.key("finished"), 0, -1) == [jid]


async def test_the_finisher_ends_on_stop_even_when_its_cancellation_is_lost(queue: Queue) -> None:
    """The stuck stop seen under load: the finisher's task had a cancellation requested
    and lost (it arrived as a Redis call returned) and waited for work for ever after
    SIGTERM. Its loop now ends on `stop`, with no cancellation at all."""
    worker = Worker(queue, {})
    task = asyncio.create_task(worker.finisher.run())
    await asyncio.sleep(0.05)  # waiting for work
    worker.finisher.stop()
    await asyncio.wait_for(task, 1.0)
