"""The worker: runs handlers for the queue's jobs, and ticks the schedulers.

One asyncio worker runs up to `concurrency` jobs at once. Its loops:
  fetch   takes jobs in batches (one script call leases many), and when there are none
          blocks on the queue's marker list (BLPOP), so an idle worker does not poll;
  tick    fires due schedulers (a compare-and-set per scheduler, see fire.lua);
  finish  completes finished jobs in batches, retrying through Redis outages;
  keep    extends the leases it holds, heartbeats, and recovers jobs whose lease expired.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import socket
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from redis.exceptions import ClusterDownError, ClusterError, SlotNotCoveredError, TryAgainError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from watcher.backoff import backoff
from watcher.queue import KEEP, Fence, Queue, QueueError, dump_json
from watcher.schedule import Schedule

log = logging.getLogger("watcher.worker")

REDIS_DOWN = (
    RedisConnectionError,
    RedisTimeoutError,
    ConnectionError,
    OSError,
    # Redis Cluster: a node failing over or rejoining, a slot being moved
    ClusterDownError,
    ClusterError,
    SlotNotCoveredError,
    TryAgainError,
)
FIELDS_PER_JOB = 11


@dataclass
class Job:
    id: str
    token: str
    name: str
    data: dict[str, Any]
    state: dict[str, Any]
    scheduler_id: str | None
    scheduled_at: int | None
    """The planned fire time (ms) of a scheduler's run; None for a one-off job."""
    attempt: int
    max_attempts: int
    fence: Fence | None
    queue: Queue = field(repr=False)

    async def upsert_scheduler(
        self,
        *,
        data: Mapping[str, Any] | None = None,
        state: Mapping[str, Any] | None = None,
        every: float | None = None,
    ) -> bool:
        """Upsert this job's own scheduler (BullMQ's pattern), fenced: False if a newer run
        wrote first or the scheduler was reconfigured or removed since this run fired."""
        if self.scheduler_id is None or self.fence is None:
            raise RuntimeError(f"job {self.id} was not produced by a scheduler")
        return await self.queue.write_back(
            self.scheduler_id, self.fence, data=data, state=state, every=every
        )


@dataclass
class Outcome:
    """What a handler may return: a result, plus state to write back fenced with the
    completion, plus a report of the run stored on the scheduler for status."""

    result: Any = None
    state: Mapping[str, Any] | None = None
    report: Mapping[str, Any] | None = None


class Retry(Exception):
    """Retry the job later (after `delay` seconds, else exponential backoff)."""

    def __init__(
        self, reason: str, *, delay: float | None = None, report: Mapping[str, Any] | None = None
    ):
        super().__init__(reason)
        self.delay = delay
        self.report = report


class Fail(Exception):
    """Fail the job now, without retrying."""

    def __init__(self, reason: str, *, report: Mapping[str, Any] | None = None):
        super().__init__(reason)
        self.report = report


Handler = Callable[[Job], Awaitable[Any]]
Handlers = Mapping[str, Handler] | Callable[[str], Handler | None]


@dataclass
class _Finished:
    job: Job
    kind: str  # ok | fail | retry
    delay_ms: int = 0
    payload: str = ""
    state: str = KEEP
    report: str = KEEP


class Worker:
    def __init__(
        self,
        queue: Queue,
        handlers: Handlers,
        *,
        concurrency: int = 10,
        lease: float = 30.0,
        grace: float = 10.0,
        backoff_base: float = 1.0,
        backoff_cap: float = 300.0,
        keep_finished: float = 3600.0,
        keep_runs: float = 60.0,
        finished_cap: int = 1000,
        tick: bool = True,
        worker_id: str | None = None,
        metrics: Callable[[], Mapping[str, Any]] | None = None,
    ) -> None:
        if concurrency < 1:
            raise ValueError("concurrency must be >= 1")
        self.queue = queue
        self.handlers = handlers
        self.concurrency = concurrency
        self.lease_ms = round(lease * 1000)
        self.grace = grace
        self.backoff_base = backoff_base
        self.backoff_cap = backoff_cap
        self.keep_ms = round(keep_finished * 1000)
        self.keep_runs_ms = round(keep_runs * 1000)
        self.finished_cap = finished_cap
        self.tick_enabled = tick
        self.metrics = metrics
        self.id = worker_id or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self.processed = 0
        self.failed = 0
        self._held: dict[str, Job] = {}  # leased and not yet finished in Redis
        self._finishing: set[str] = set()  # in a finish call now
        self._running: set[asyncio.Task[None]] = set()
        self._finished: list[_Finished] = []
        self._finish_wanted = asyncio.Event()
        self._slot_free = asyncio.Event()
        self._stop = asyncio.Event()
        self._takes = 0
        self._redis_down_since: float | None = None
        self._redis_back_at = -60.0
        self._last_extend = 0.0

    # -- lifecycle ----------------------------------------------------------------------

    def stop(self) -> None:
        self._stop.set()
        self._slot_free.set()

    async def run(self, *, install_signal_handlers: bool = False) -> None:
        """Run until stop() (or SIGTERM/SIGINT when asked to install handlers)."""
        loop = asyncio.get_running_loop()
        if install_signal_handlers:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, self.stop)
        loops = [self._repeat(self._fetch), self._finish_loop(), self._repeat(self._keep)]
        if self.tick_enabled:
            loops.append(self._repeat(self._tick))
        tasks = [asyncio.create_task(coro) for coro in loops]
        fetch = tasks[0]
        try:
            await self._stop.wait()
            await fetch
            await self._drain()
            self._finish_wanted.set()
            try:
                await asyncio.wait_for(self._flush_all(), timeout=max(self.grace, 1.0))
            except TimeoutError:
                log.error(
                    "stopped before finishing %d job(s): their leases lapse and they rerun",
                    len(self._finished),
                )
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            with contextlib.suppress(*REDIS_DOWN):
                await self.queue.redis.zrem(self.queue.key("workers"), self.id)
            if install_signal_handlers:
                for sig in (signal.SIGTERM, signal.SIGINT):
                    loop.remove_signal_handler(sig)

    async def _drain(self) -> None:
        """Give running jobs the grace period, then return the rest to the queue."""
        if self._running:
            await asyncio.wait(set(self._running), timeout=self.grace)
        unfinished = [t for t in self._running if not t.done()]
        if not unfinished:
            return
        for task in unfinished:
            task.cancel()
        await asyncio.gather(*unfinished, return_exceptions=True)
        finishing = {f.job.id for f in self._finished} | self._finishing
        returned = [job for job in self._held.values() if job.id not in finishing]
        args: list[Any] = []
        for job in returned:
            args += [job.id, job.token]
        if args:
            with contextlib.suppress(*REDIS_DOWN):
                released = await self.queue.run_script("release", "active", args)
                log.info("returned %d unfinished job(s) to the queue", released)
            for job in returned:
                self._held.pop(job.id, None)

    # -- Redis outages ------------------------------------------------------------------

    async def _redis_failed(self, exc: BaseException, attempt: int) -> None:
        if self._redis_down_since is None:
            self._redis_down_since = time.monotonic()
            # stale pooled connections fail once more right after a reconnect: same outage
            recently_back = time.monotonic() - self._redis_back_at < 5.0
            log.log(
                logging.DEBUG if recently_back else logging.WARNING,
                "Redis unavailable (%s); reconnecting with backoff",
                exc,
            )
        delay = backoff(attempt, 0.1, 5.0)
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._stop.wait(), delay)

    def _redis_ok(self) -> None:
        if self._redis_down_since is not None:
            down_for = time.monotonic() - self._redis_down_since
            if time.monotonic() - self._redis_back_at >= 5.0:
                log.warning("Redis is back after %.1fs; resuming", down_for)
            self._redis_down_since = None
            self._redis_back_at = time.monotonic()

    # -- fetch and run --------------------------------------------------------------------

    async def _repeat(self, step: Callable[[], Awaitable[float]]) -> None:
        """Run `step` until stopped, pausing for what it returns; ride out Redis outages."""
        failures = 0
        while not self._stop.is_set():
            try:
                pause = await step()
            except REDIS_DOWN as exc:
                failures += 1
                await self._redis_failed(exc, failures)
                continue
            except Exception:  # a bug or a script error must not silently stop a loop
                log.exception("worker step %s failed; retrying in 1 s", step.__name__)
                pause = 1.0
            failures = 0
            self._redis_ok()
            if pause > 0:
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), pause)

    async def _fetch(self) -> float:
        free = self.concurrency - len(self._running)
        if free <= 0:
            self._slot_free.clear()
            await self._slot_free.wait()
            return 0.0
        jobs = await self._take(free)
        if not jobs:
            await self._idle()
        for job in jobs:
            self._held[job.id] = job
            task = asyncio.create_task(self._run(job))
            self._running.add(task)
            task.add_done_callback(self._job_done)
        return 0.0

    def _job_done(self, task: asyncio.Task[None]) -> None:
        self._running.discard(task)
        self._slot_free.set()

    async def _take(self, count: int) -> list[Job]:
        self._takes += 1
        reply = await self.queue.run_script(
            "take", "wait", [count, self.lease_ms, self.id, f"{self.id}:{self._takes}:"]
        )
        jobs = []
        for b in range(0, len(reply), FIELDS_PER_JOB):
            jid, token, name, data, state, sched, at, att, mx, seq, epoch = reply[
                b : b + FIELDS_PER_JOB
            ]
            jobs.append(
                Job(
                    id=jid,
                    token=token,
                    name=name,
                    data=json.loads(data) if data else {},
                    state=json.loads(state) if state else {},
                    scheduler_id=sched or None,
                    scheduled_at=int(at) if at else None,
                    attempt=int(att),
                    max_attempts=int(mx),
                    fence=Fence(int(seq), int(epoch)) if sched else None,
                    queue=self.queue,
                )
            )
        return jobs

    async def _idle(self) -> None:
        """Block until a job may be ready: a marker, the next delayed job, or a stop."""
        timeout = 1.0
        head = await self.queue.redis.zrange(self.queue.key("delayed"), 0, 0, withscores=True)
        if head:
            timeout = min(timeout, max(0.0, (head[0][1] - await self.queue.now_ms()) / 1000))
        if timeout <= 0:
            return
        pop = asyncio.create_task(self.queue.redis.blpop([self.queue.key("marker")], timeout))
        stop = asyncio.create_task(self._stop.wait())
        try:
            await asyncio.wait({pop, stop}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop.cancel()
            if not pop.done():
                pop.cancel()
                with contextlib.suppress(asyncio.CancelledError, *REDIS_DOWN):
                    await pop
        if pop.done() and not pop.cancelled() and pop.exception() is not None:
            raise pop.exception()  # type: ignore[misc]

    def _handler_for(self, name: str) -> Handler | None:
        if isinstance(self.handlers, Mapping):
            return self.handlers.get(name)
        return self.handlers(name)

    async def _run(self, job: Job) -> None:
        handler = self._handler_for(job.name)
        try:
            if handler is None:
                raise Fail(f"no handler for {job.name!r}")
            value = await handler(job)
        except asyncio.CancelledError:
            raise
        except Retry as exc:
            delay = exc.delay if exc.delay is not None else self._backoff(job.attempt)
            self._finish(job, "retry", str(exc), delay=delay, report=exc.report)
        except Fail as exc:
            self._finish(job, "fail", str(exc), report=exc.report)
        except Exception as exc:
            log.warning("job %s (%s) attempt %d failed: %r", job.id, job.name, job.attempt, exc)
            self._finish(
                job, "retry", f"{type(exc).__name__}: {exc}", delay=self._backoff(job.attempt)
            )
        else:
            outcome = value if isinstance(value, Outcome) else Outcome(result=value)
            try:
                self._finish(job, "ok", outcome.result, state=outcome.state, report=outcome.report)
            except QueueError as exc:  # state that cannot be stored: a handler bug
                self._finish(job, "fail", f"handler returned {exc}")

    def _backoff(self, attempt: int) -> float:
        return backoff(attempt - 1, self.backoff_base, self.backoff_cap)

    def _finish(
        self,
        job: Job,
        kind: str,
        payload: Any,
        *,
        delay: float = 0.0,
        state: Mapping[str, Any] | None = None,
        report: Mapping[str, Any] | None = None,
    ) -> None:
        text = str(payload) if kind != "ok" else "" if payload is None else _safe_json(payload)
        self._finished.append(
            _Finished(
                job,
                kind,
                round(delay * 1000),
                text,
                KEEP if state is None else dump_json("state", dict(state)),
                KEEP if report is None else _safe_json(report),
            )
        )
        self._finish_wanted.set()

    # -- finish -------------------------------------------------------------------------

    async def _finish_loop(self) -> None:
        while True:
            await self._finish_wanted.wait()
            self._finish_wanted.clear()
            await self._flush_all()

    async def _flush_all(self) -> None:
        failures = 0
        while self._finished:
            batch, self._finished = self._finished, []
            args: list[Any] = [self.keep_ms, self.keep_runs_ms, self.finished_cap]
            for f in batch:
                args += [f.job.id, f.job.token, f.kind, f.delay_ms, f.payload, f.state, f.report]
            self._finishing = {f.job.id for f in batch}
            try:
                codes = await self.queue.run_script("finish", "active", args)
                self._redis_ok()
                failures = 0
            except REDIS_DOWN as exc:
                self._finished = batch + self._finished
                failures += 1
                await self._redis_failed(exc, failures)
                # stopping: a refused Redis ends this here; a hung one, run()'s grace bound
                if self._stop.is_set() and failures > 20:
                    log.error("giving up finishing %d job(s): Redis unreachable", len(batch))
                    return
                continue
            except Exception:
                log.exception(
                    "finishing %d job(s) failed; they rerun once their leases lapse", len(batch)
                )
                for f in batch:
                    self._held.pop(f.job.id, None)  # stop extending their leases
                continue
            finally:
                self._finishing = set()
            for f, code in zip(batch, codes, strict=True):
                self._held.pop(f.job.id, None)
                if code == 0:
                    log.warning(
                        "job %s lost its lease before finishing; another worker reruns it", f.job.id
                    )
                elif f.kind == "ok":
                    self.processed += 1
                else:
                    self.failed += 1

    # -- tick -----------------------------------------------------------------------------

    async def _tick(self, batch: int = 500) -> float:
        """Fire what is due; returns seconds to sleep before the next tick."""
        reply = await self.queue.run_script("due", "schedulers", [batch])
        now = int(reply[0])
        soonest = float(reply[1]) if reply[1] != "" else now + 100.0
        args: list[Any] = []
        for b in range(2, len(reply), 4):
            sid, score, spec, slot = reply[b : b + 4]
            schedule = Schedule.decode(spec)
            nxt = schedule.next_slot(sid, now, int(slot) if slot else int(float(score)))
            fire_at = "" if nxt is None else schedule.fire_time(nxt)
            if fire_at != "":
                soonest = min(soonest, fire_at)
            args += [sid, score, fire_at, nxt or 0]
        if args:
            await self.queue.run_script("fire", "schedulers", args)
        if len(args) >= 4 * batch:
            return 0.0  # more are due
        # At least 10 ms between ticks: firing in small batches costs more than the lateness
        return min(0.1, max(0.01, (soonest - now) / 1000))

    # -- leases, heartbeat, recovery ------------------------------------------------------

    async def _keep(self) -> float:
        """Extend leases and heartbeat every third of a lease; recover expired leases."""
        if time.monotonic() - self._last_extend >= self.lease_ms / 3000:
            await self._extend_leases()
            await self._heartbeat()
            self._last_extend = time.monotonic()
        recovered = await self.queue.run_script(
            "recover", "active", [1000, self.keep_ms, self.finished_cap]
        )
        if recovered:
            log.warning("recovered %d job(s) whose lease expired", recovered)
        return min(1.0, self.lease_ms / 3000)

    async def _extend_leases(self) -> None:
        args: list[Any] = [self.lease_ms]
        for job in list(self._held.values()):
            if job.id not in self._finishing:
                args += [job.id, job.token]
        if len(args) > 1:
            lost = await self.queue.run_script("extend", "active", args)
            for jid in lost:
                if jid not in self._held or jid in self._finishing:
                    continue  # finished meanwhile, not lost
                log.warning("job %s: lease lost (it may run again elsewhere)", jid)

    async def _heartbeat(self) -> None:
        now = await self.queue.now_ms()
        info = {
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "concurrency": self.concurrency,
            "running": len(self._running),
            "processed": self.processed,
            "failed": self.failed,
            "seen": now,
            "lease_ms": self.lease_ms,
            **(self.metrics() if self.metrics else {}),
        }
        key = self.queue.key(f"worker:{self.id}")
        async with self.queue.redis.pipeline(transaction=True) as pipe:
            pipe.zadd(self.queue.key("workers"), {self.id: now})
            pipe.zremrangebyscore(self.queue.key("workers"), "-inf", now - 3_600_000)
            pipe.hset(key, mapping=info)
            pipe.pexpire(key, max(60_000, 3 * self.lease_ms))
            await pipe.execute()


def _safe_json(value: Any) -> str:
    try:
        return json.dumps(value, separators=(",", ":"), default=str)
    except (TypeError, ValueError):
        return json.dumps(repr(value))
