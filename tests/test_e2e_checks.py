"""End to end: the `etag` check through the whole stack.

A real HTTP origin on 127.0.0.1 (tests/origin.py), real Redis (the private test server),
schedulers created the way sync creates them, the real `CheckRunner` under a real `Worker`
(in-process, or `watcher.runner.serve` in worker processes for the SIGKILL case), and the
real HTTP clients (`make_client`, both transports).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import json
import logging
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from watcher.change import Change
from watcher.http import make_client
from watcher.jobs import JobInfo, JobState
from watcher.masking import MASK
from watcher.queue import Fence, Queue, SchedulerInfo
from watcher.runner import CheckRunner
from watcher.worker import Worker

from .helpers import running, wait_for
from .origin import Origin, Seen

TESTS = Path(__file__).resolve().parent
TAGS = ['"v0-9f1c"', '"v1-27ab"', '"v2-c3d0"', '"v3-5e8e"']
LM0 = "Wed, 21 Oct 2015 07:28:00 GMT"
LM1 = "Thu, 22 Oct 2015 09:00:00 GMT"
TOKEN = "tok-5c0ffee-8d1e4b7a2f93"


# -- helpers ------------------------------------------------------------------------------------


def template(
    url: str,
    *,
    id: str = "docs",
    headers: Mapping[str, str] | None = None,
    notify: list[str] | None = None,
    secret_headers: list[str] | None = None,
    timeout: float = 5.0,
) -> dict[str, Any]:
    """The scheduler template data the runner expects (what sync stores for a resource)."""
    return {
        "id": id,
        "url": url,
        "method": "GET",
        "headers": dict(headers or {}),
        "timeout": timeout,
        "options": {},
        "notify": notify or ["console"],
        "secret_headers": secret_headers or [],
    }


async def add_resource(
    queue: Queue, url: str, *, id: str = "docs", every: float = 0.2, **data: Any
) -> None:
    await queue.upsert_scheduler(
        id, name="etag", data=template(url, id=id, **data), every=every, scope=url
    )


@contextlib.asynccontextmanager
async def checking(
    queue: Queue,
    *,
    transport: str = "aiohttp",
    notifiers: Mapping[str, Mapping[str, Any]] | None = None,
    **worker: Any,
) -> AsyncIterator[CheckRunner]:
    """A check worker in this process: make_client + CheckRunner + Worker, stopped on exit."""
    worker.setdefault("grace", 2.0)
    worker.setdefault("backoff_base", 0.05)
    async with make_client(transport=transport) as client:
        runner = CheckRunner(queue, client)
        runner.use_notifiers(notifiers or {})
        checks = Worker(queue, runner.handler, metrics=runner.stats.snapshot, **worker)
        courier = runner.courier_for(checks)
        sending = asyncio.create_task(courier.run())
        async with running(checks):
            yield runner
        await courier.stop(grace=5.0)
        await sending
        await runner.drain()


async def scheduler(queue: Queue, id: str = "docs") -> SchedulerInfo:
    info = await queue.get_scheduler(id)
    assert info is not None, f"scheduler {id!r} is gone"
    return info


async def stored(queue: Queue, key: str, id: str = "docs") -> Any:
    return (await scheduler(queue, id)).state.get(key)


async def stored_is(queue: Queue, key: str, value: Any) -> bool:
    return await stored(queue, key) == value


async def report_after(
    queue: Queue, outcome: str | tuple[str, ...], since: float
) -> SchedulerInfo | None:
    """The scheduler, once a run that finished after `since` (wall time) reported `outcome`."""
    wanted = (outcome,) if isinstance(outcome, str) else outcome
    info = await scheduler(queue)
    report = info.report or {}
    if report.get("outcome") in wanted and report.get("at", 0) > since:
        return info
    return None


async def events_of(queue: Queue, kind: str, since_ms: int = 0) -> list[dict[str, str]]:
    return [
        e
        for e in await queue.events(count=10_000)
        if e["event"] == kind and int(e["id"].split("-")[0]) >= since_ms
    ]


async def history(queue: Queue, id: str = "docs") -> list[Change]:
    """The resource's changes, oldest first."""
    return list(reversed(await queue.changes(id, limit=1000)))


async def job_info(queue: Queue, id: str) -> JobInfo:
    job = await queue.job(id)
    assert job is not None, f"job {id!r} is gone"
    return job


async def finished_jobs(queue: Queue) -> list[JobInfo]:
    """The finished runs, in the order they were fired."""
    ids = await queue.redis.lrange(queue.key("finished"), 0, -1)
    return [await job_info(queue, jid) for jid in sorted(ids, key=int)]


def assert_conditional_chain(seen: list[Seen], header: str, validator: str) -> None:
    """Each request after the first carries `header` equal to the validator of the last
    200 the origin served before it (the runs are sequential: checked too)."""
    assert seen, "the origin saw no request"
    assert seen[0].header(header) is None, "the first run must not be conditional"
    last = getattr(seen[0], validator) if seen[0].status == 200 else None
    for i, (before, request) in enumerate(itertools.pairwise(seen), start=1):
        assert before.done_at is not None and before.done_at <= request.at, "runs overlapped"
        assert request.header(header) == last, (
            f"request {i} sent {header}: {request.header(header)!r}; the origin last served "
            f"{last!r}"
        )
        if request.status == 200:
            last = getattr(request, validator)


async def find_in_queue(queue: Queue, needle: str) -> list[tuple[str, str]]:
    """Every (key, field) of the queue whose name or value contains `needle`."""
    r = queue.redis
    found: list[tuple[str, str]] = []
    async for key in r.scan_iter(match=queue.prefix + "*", count=1000):
        kind = await r.type(key)
        items: list[tuple[str, str]]
        if kind == "string":
            items = [("", await r.get(key) or "")]
        elif kind == "hash":
            items = list((await r.hgetall(key)).items())
        elif kind == "list":
            items = [(str(i), v) for i, v in enumerate(await r.lrange(key, 0, -1))]
        elif kind == "set":
            items = [("", v) for v in await r.smembers(key)]
        elif kind == "zset":
            items = [(m, str(s)) for m, s in await r.zrange(key, 0, -1, withscores=True)]
        elif kind == "stream":
            items = [
                (f"{entry}/{name}", value)
                for entry, fields in await r.xrange(key)
                for name, value in fields.items()
            ]
        else:
            raise AssertionError(f"unexpected key type {kind} for {key}")
        if needle in key:
            found.append((key, "<key name>"))
        found += [(key, where) for where, value in items if needle in where or needle in value]
    return found


async def start_check_worker(
    redis_url: str, queue: Queue, log: Path, *args: str
) -> subprocess.Popen[str]:
    """tests/check_worker_proc.py (watcher.runner.serve) as a process; returns once ready."""
    proc = subprocess.Popen(
        [sys.executable, str(TESTS / "check_worker_proc.py"), redis_url, queue.name, *args],
        stdout=subprocess.PIPE,
        stderr=log.open("ab"),  # a file, never a pipe: a chatty worker must not block on it
        text=True,
    )
    assert proc.stdout is not None
    try:
        line = await asyncio.wait_for(asyncio.to_thread(proc.stdout.readline), 20)
    except TimeoutError:
        proc.kill()
        raise
    assert line.strip() == "ready", f"worker did not start: {log.read_text()[-2000:]}"
    return proc


def stop_process(proc: subprocess.Popen[str] | None) -> int | None:
    if proc is None:
        return None
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)
        raise


# -- 1. the main loop: changes once each, conditional requests, mostly 304 -----------------------


@pytest.mark.parametrize("transport", ["aiohttp", "httpx"])
async def test_etag_changes_recorded_once_each_and_requests_are_conditional(
    queue: Queue, transport: str
) -> None:
    """Every 200 ms for 5 s, with the ETag changed at t = 1.2, 2.4 and 3.6 s."""
    with Origin(etag=TAGS[0], body=b"version 0\n") as origin:
        await add_resource(queue, origin.url)
        made: list[float] = []
        async with checking(queue, transport=transport):
            await wait_for(lambda: stored(queue, "etag"), 3, what="the baseline run")
            t0 = time.monotonic()
            for n, at in enumerate((1.2, 2.4, 3.6), start=1):
                await asyncio.sleep(t0 + at - time.monotonic())
                made.append(time.time())
                origin.set(etag=TAGS[n], body=f"version {n}\n".encode())
            await asyncio.sleep(t0 + 5.0 - time.monotonic())
        seen = origin.requests

    # The change history: exactly the three changes, once each, in order, right validators.
    changes = await history(queue)
    assert [(c.old, c.new) for c in changes] == [
        ({"etag": TAGS[n - 1]}, {"etag": TAGS[n]}) for n in (1, 2, 3)
    ]
    assert len({c.id for c in changes}) == 3
    for change, made_at, next_made in zip(changes, made, [*made[1:], float("inf")], strict=True):
        assert change.resource == "docs" and change.check == "etag" and change.url == origin.url
        assert change.status_code == 200
        assert made_at <= change.time < min(made_at + 1.0, next_made), "detected late"

    # The first run recorded a baseline, not a change; every other run was a change or a 304.
    jobs = await finished_jobs(queue)
    outcomes = [json.loads(job.result or "{}").get("outcome") for job in jobs]
    assert all(job.state == JobState.DONE for job in jobs)
    assert outcomes[0] == "baseline"
    assert Counter(outcomes) == {"baseline": 1, "changed": 3, "unchanged": len(jobs) - 4}
    info = await scheduler(queue)
    assert info.state["etag"] == TAGS[3] and info.fails == 0
    assert info.report is not None and info.report["outcome"] == "unchanged"

    # The requests: one per run, each conditional on the ETag the origin last served.
    assert len(seen) == len(jobs) >= 15, f"{len(seen)} requests in 5 s at 200 ms"
    assert all(r.method == "GET" and r.outcome == "answered" for r in seen)
    assert_conditional_chain(seen, "if-none-match", "etag")
    statuses = Counter(r.status for r in seen)
    assert statuses[200] == 4
    assert statuses[304] == len(seen) - 4 > len(seen) / 2


# -- 2. Last-Modified only -----------------------------------------------------------------------


async def test_last_modified_only_server(queue: Queue) -> None:
    """No ETag: If-Modified-Since carries the server's own Last-Modified text; a newer
    Last-Modified is a change."""
    with Origin(etag=None, last_modified=LM0) as origin:
        await add_resource(queue, origin.url)
        async with checking(queue, transport="httpx"):
            await wait_for(lambda: stored(queue, "last_modified"), 3, what="the baseline run")
            await wait_for(lambda: len(origin.requests) >= 4, 3, what="304 runs")
            origin.set(last_modified=LM1, body=b"newer\n")
            await wait_for(lambda: history(queue), 3, what="the change")
            settled = len(origin.requests)
            await wait_for(lambda: len(origin.requests) >= settled + 3, 3, what="more runs")
        seen = origin.requests

    changes = await history(queue)
    assert [(c.old, c.new) for c in changes] == [({"last_modified": LM0}, {"last_modified": LM1})]
    assert await stored(queue, "last_modified") == LM1
    assert all(r.header("if-none-match") is None for r in seen)
    assert_conditional_chain(seen, "if-modified-since", "last_modified")
    statuses = Counter(r.status for r in seen)
    assert statuses[200] == 2 and statuses[304] == len(seen) - 2 >= 5


# -- 3. SIGKILL in the middle of the check that would see the change -----------------------------


async def test_worker_sigkilled_mid_check_loses_no_change(
    queue: Queue, redis_url: str, tmp_path: Path
) -> None:
    """The origin changes its ETag and holds the next request, so the worker process is in
    the middle of the run that would see it; the process is SIGKILLed, the origin lets go,
    and a second worker process reruns the job once its lease expires: the change is
    recorded exactly once, and the state ends with the new ETag."""
    log = tmp_path / "workers.log"
    victim = rescuer = None
    with Origin(etag=TAGS[0]) as origin:
        await add_resource(queue, origin.url)
        try:
            victim = await start_check_worker(redis_url, queue, log, "--lease", "1")
            await wait_for(lambda: stored(queue, "etag"), 5, what="the baseline run")
            origin.set(etag=TAGS[1], hang=True)
            held = await asyncio.to_thread(origin.wait_hung, 5)
            assert held.header("if-none-match") == TAGS[0]
            info = await scheduler(queue)
            job = await job_info(queue, info.active_job or "")
            assert job.state == JobState.ACTIVE and f":{victim.pid}:" in (job.worker or "")

            victim.send_signal(signal.SIGKILL)
            assert victim.wait(5) == -signal.SIGKILL
            origin.release()
            await wait_for(lambda: held.outcome != "pending", 5, what="the held request to end")
            assert await history(queue) == []
            assert await stored(queue, "etag") == TAGS[0]

            rescuer = await start_check_worker(redis_url, queue, log, "--lease", "1")
            await wait_for(lambda: stored_is(queue, "etag", TAGS[1]), 10, what="the rerun")
            settled = len(origin.requests)
            await wait_for(lambda: len(origin.requests) >= settled + 3, 5, what="more runs")
            assert stop_process(rescuer) == 0
        finally:
            if victim is not None and victim.poll() is None:
                victim.kill()
                victim.wait(5)
            stop_process(rescuer)
        seen = origin.requests

    changes = await history(queue)
    assert [(c.old, c.new) for c in changes] == [({"etag": TAGS[0]}, {"etag": TAGS[1]})]
    assert await stored(queue, "etag") == TAGS[1]
    stalled = await events_of(queue, "stalled")
    assert [e["job"] for e in stalled] == [info.active_job]
    rerun = await job_info(queue, info.active_job or "")
    assert rerun.state == JobState.DONE and rerun.attempt == 2
    # After the held request: the rerun asked with the old ETag and got the new one; then 304s.
    after = seen[seen.index(held) + 1 :]
    assert after[0].header("if-none-match") == TAGS[0] and after[0].status == 200
    assert all(r.header("if-none-match") == TAGS[1] and r.status == 304 for r in after[1:])


# -- 4. the state is written back only after the change is recorded ------------------------------


class CrashAfterRecord(Queue):
    """The queue the runner records changes through, with a crash injected right after the
    change entry is written, as if the worker died at that instant (once).

    At that instant it also reads the scheduler's stored state: the validators that the next
    run of the resource would send."""

    def __init__(self, queue: Queue) -> None:
        super().__init__(queue.redis, queue.name)
        self.crash = True
        self.state_when_recorded: list[dict[str, Any]] = []

    async def record_change(
        self, scheduler_id: str, fence: Fence, change: Change, **outbox: Any
    ) -> str | None:
        entry = await super().record_change(scheduler_id, fence, change, **outbox)
        assert entry is not None or not self.crash  # the rerun's is the same change: None
        self.state_when_recorded.append((await scheduler(self, scheduler_id)).state)
        if self.crash:
            self.crash = False
            raise RuntimeError("simulated crash between recording the change and completing")
        return entry


async def test_state_written_back_only_after_the_change_is_recorded(queue: Queue) -> None:
    """Why this order matters: if the new ETag were stored before the change entry is
    written, a run that dies in between would leave a state whose next request gets a 304:
    the change would be lost for good. So the test stops a run right after its change entry
    is written (a Queue whose record_change raises once, after recording) and checks that
    (a) at that instant the stored state still holds the old ETag, (b) the dead run wrote no
    state, and (c) the retried run sees the change again, records it, and only then is the
    new ETag stored. A runner that wrote the state first (or concurrently) fails (a); one that
    wrote it despite the crash fails (b)."""
    crashing = CrashAfterRecord(queue)
    with Origin(etag=TAGS[0]) as origin:
        await add_resource(queue, origin.url)
        # A longer retry backoff leaves time to look at the state the crashed run left.
        async with checking(crashing, backoff_base=0.6):
            await wait_for(lambda: stored(queue, "etag"), 3, what="the baseline run")
            since = await queue.now_ms()
            origin.set(etag=TAGS[1])
            retries = await wait_for(lambda: events_of(queue, "retry", since), 3, what="the crash")
            assert "simulated crash" in retries[0]["error"]
            assert await stored(queue, "etag") == TAGS[0], "the crashed run wrote its state"
            assert len(await history(queue)) == 1  # recorded before the crash
            await wait_for(lambda: stored_is(queue, "etag", TAGS[1]), 5, what="the retried run")

    assert crashing.state_when_recorded == [
        {"etag": TAGS[0], "status_code": 200},
        {"etag": TAGS[0], "status_code": 200},
    ]
    changes = await history(queue)
    # The retried run saw the same change (old -> new) again: recorded (and delivered) once.
    assert len(changes) == 1
    assert (changes[0].old, changes[0].new) == ({"etag": TAGS[0]}, {"etag": TAGS[1]})


# -- 5. webhook notifier -------------------------------------------------------------------------


async def test_webhook_receives_each_change_once(queue: Queue) -> None:
    with Origin(etag=TAGS[0]) as origin, Origin() as sink:
        await add_resource(queue, origin.url, notify=["hook"])
        hook = {"hook": {"type": "webhook", "url": f"{sink.url}hooks/watcher", "retries": 2}}
        async with checking(queue, transport="httpx", notifiers=hook):
            await wait_for(lambda: stored(queue, "etag"), 3, what="the baseline run")
            for n in (1, 2):
                origin.set(etag=TAGS[n])
                await wait_for(lambda n=n: len(sink.requests) == n, 3, what=f"webhook call {n}")
            settled = len(origin.requests)
            await wait_for(lambda: len(origin.requests) >= settled + 3, 3, what="more runs")
        posts = sink.requests

    changes = await history(queue)
    assert [c.new["etag"] for c in changes] == TAGS[1:3]
    assert len(posts) == len(changes) == 2
    for post, change in zip(posts, changes, strict=True):
        assert post.method == "POST" and post.path == "/hooks/watcher"
        assert post.header("content-type") == "application/json"
        payload = json.loads(post.body)
        assert payload.pop("event") == "change"
        assert Change.from_dict(payload) == change  # the recorded change, with its stream id
        assert payload["id"] == change.id is not None


# -- 6. failures keep the last good state ---------------------------------------------------------


async def test_failures_do_not_overwrite_state(queue: Queue) -> None:
    """404: the run fails (report "failed", fails counted), not retried, the state keeps the
    last good ETag; 503: retried; back to normal: a 304, no change reported."""
    with Origin(etag=TAGS[0]) as origin:
        await add_resource(queue, origin.url)
        async with checking(queue):
            await wait_for(lambda: stored(queue, "etag"), 3, what="the baseline run")

            since, since_ms = time.time(), await queue.now_ms()
            origin.set(status=404, reason="Not Found")
            info = await wait_for(
                lambda: report_after(queue, "failed", since), 3, what="a failed run"
            )
            info = await wait_for(lambda: _fails_at_least(queue, 2), 3, what="fails counted")
            assert info.state == {"etag": TAGS[0], "status_code": 200}
            failed = await events_of(queue, "failed", since_ms)
            assert failed and failed[-1]["error"] == "404 Not Found"
            assert not await events_of(queue, "retry", since_ms)

            since, since_ms = time.time(), await queue.now_ms()
            origin.set(status=503, reason="Service Unavailable")
            retries = await wait_for(lambda: _events_at_least(queue, "retry", since_ms, 2), 3)
            assert {e["error"] for e in retries} == {"503 Service Unavailable"}
            info = await wait_for(lambda: report_after(queue, "retrying", since), 3)
            assert info.state["etag"] == TAGS[0]

            since = time.time()
            origin.set(status=None, reason=None)
            info = await wait_for(
                lambda: report_after(queue, "unchanged", since), 3, what="recovery"
            )
            assert info.fails == 0
        seen = origin.requests

    assert info.state == {"etag": TAGS[0], "status_code": 200}
    assert info.report is not None and info.report.get("not_modified") is True
    assert await history(queue) == []
    assert all(r.header("if-none-match") == TAGS[0] for r in seen[1:])
    statuses = Counter(r.status for r in seen)
    assert statuses[404] >= 2 and statuses[503] >= 2 and statuses[304] >= 1


async def _events_at_least(
    queue: Queue, kind: str, since_ms: int, n: int
) -> list[dict[str, str]] | None:
    found = await events_of(queue, kind, since_ms)
    return found if len(found) >= n else None


async def _fails_at_least(queue: Queue, n: int) -> SchedulerInfo | None:
    info = await scheduler(queue)
    return info if info.fails >= n else None


# -- 7. a secret header never reaches Redis (outside the template itself) -----------------------


async def test_secret_header_never_recorded(queue: Queue, caplog: pytest.LogCaptureFixture) -> None:
    """The Authorization header is sent to the origin on every run, and the origin echoes
    it into its error status lines (as some servers echo what they were sent): it must not
    appear in the logs, the changes stream, the events stream, job hashes, reports, anywhere
    in the queue's keys, except the scheduler's template `data`, which is where the
    resource's headers are declared."""
    caplog.set_level(logging.DEBUG, logger="watcher")  # `watcher` keeps httpx's at WARNING
    secret = f"Bearer {TOKEN}"
    with Origin(etag=TAGS[0]) as origin, Origin() as sink:
        await add_resource(
            queue,
            origin.url,
            headers={"Authorization": secret, "X-Trace": "e2e"},
            notify=["hook", "console"],
        )
        hook = {"hook": {"type": "webhook", "url": f"{sink.url}hook"}}
        async with checking(queue, notifiers=hook):
            await wait_for(lambda: stored(queue, "etag"), 3, what="the baseline run")
            origin.set(etag=TAGS[1])
            await wait_for(lambda: history(queue), 3, what="the change")

            since, since_ms = time.time(), await queue.now_ms()
            origin.set(status=403, reason="Forbidden for {authorization}")
            failed = await wait_for(lambda: report_after(queue, "failed", since), 3)
            assert failed.report is not None and MASK in failed.report["summary"]
            origin.set(status=503, reason="Unavailable for {authorization}")
            await wait_for(lambda: events_of(queue, "retry", since_ms), 3, what="a retry")

            since = time.time()
            origin.set(status=None, reason=None)
            await wait_for(lambda: report_after(queue, "unchanged", since), 3, what="recovery")
        seen = origin.requests

    assert all(r.header("authorization") == secret for r in seen)
    echoed = {r.status for r in seen if TOKEN in r.reason}
    assert echoed == {403, 503}, "the origin did not echo the token"
    assert len(sink.requests) == 1 and TOKEN not in sink.requests[0].body.decode()
    assert await find_in_queue(queue, TOKEN) == [(queue.key("scheduler:docs"), "data")]
    errors = [e["error"] for e in await queue.events(count=10_000) if "error" in e]
    assert errors and all(TOKEN not in e for e in errors)
    assert any(MASK in e for e in errors)
    logged = caplog.text
    assert "Forbidden for ***" in logged and TOKEN not in logged


# -- 8. connections that die ---------------------------------------------------------------------


async def test_dropped_connections_are_not_changes(queue: Queue) -> None:
    """A server without validators (content hash): a body cut off half-way must not be
    hashed as new content, and a connection closed without an answer is retried; neither
    touches the state nor reports a change."""
    body = b"stable content\n" * 300
    with Origin(etag=None, body=body) as origin:
        await add_resource(queue, origin.url)
        async with checking(queue):
            await wait_for(lambda: stored(queue, "content_hash"), 3, what="the baseline run")
            assert await stored(queue, "content_hash") == hashlib.sha256(body).hexdigest()

            since = time.time()
            origin.set(die="mid-body")
            info = await wait_for(lambda: report_after(queue, ("failed", "retrying"), since), 3)
            assert info.report is not None and "truncated body" in info.report["summary"]

            since, since_ms = time.time(), await queue.now_ms()
            origin.set(die="no-response")
            await wait_for(lambda: events_of(queue, "retry", since_ms), 3, what="a retry")

            since = time.time()
            origin.set(die=None)
            info = await wait_for(
                lambda: report_after(queue, "unchanged", since), 3, what="recovery"
            )
        seen = origin.requests

    assert info.state == {"content_hash": hashlib.sha256(body).hexdigest(), "status_code": 200}
    assert await history(queue) == []
    assert sum(r.outcome == "died" for r in seen) >= 2
