"""The worker: runs handlers for the queue's jobs, and ticks the schedulers.

One asyncio worker runs up to `concurrency` jobs at once, in four loops that share one
`Repeater` (one stop signal; Redis outages and refused writes ridden out and said once):
  fetch   takes jobs in batches (one script call leases many) and runs their handlers; when
          there are none it blocks on the queue's wake-up marker, so an idle worker does
          not poll; while Redis refuses writes it takes none;
  finish  completes finished jobs in batches (`Finisher`), retrying through Redis outages;
  keep    extends the leases it holds, heartbeats, recovers expired leases, and notices
          when Redis lost the queue's data (`Keeper`);
  tick    fires due schedulers (`Ticker`).
The worker only calls `Queue` methods: the queue owns every key and script.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import socket
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from watcher.backoff import backoff
from watcher.jobs import FinishCode, Finished, Job, Lease
from watcher.keeper import Keeper
from watcher.queue import UNAVAILABLE, Queue, QueueError, dump_json, refusal
from watcher.repeat import Repeater
from watcher.tally import Tally
from watcher.ticker import Ticker

__all__ = ["Fail", "Finisher", "Handler", "Handlers", "Job", "Outcome", "Retry", "Worker"]

log = logging.getLogger("watcher.worker")

IDLE_WAIT = 1.0
"""Seconds an idle worker blocks on the wake-up marker before looking again."""
STOP_CALL_TIMEOUT = 2.0
"""Seconds a stopping worker gives its last Redis call (leaving the list of workers):
through an outage the client's own retries would hold the stop past its grace period."""
GIVE_UP_FINISHING = 20
"""Refused finish calls after which a stopping worker gives up (the leases then lapse)."""


@dataclass
class Outcome:
    """What a handler may return: a result, plus state to write back fenced with the
    completion, plus a report of the run stored on the scheduler for status."""

    result: Any = None
    state: Mapping[str, Any] | None = None
    report: Mapping[str, Any] | None = None
    hold_ms: int | None = None
    """Hold the scheduler's next run until at least this long from now (a server's word on
    freshness): it never comes sooner than the schedule's own next slot."""
    alert: str = ""
    """The resource's alerts (JSON: watcher/lua/finish.lua), or "" for none."""


class Retry(Exception):
    """Retry the job later (after `delay` seconds, else exponential backoff); `pause` pauses
    the run's host for every worker (watcher/jobs.py, Finished.pause)."""

    def __init__(
        self,
        reason: str,
        *,
        delay: float | None = None,
        report: Mapping[str, Any] | None = None,
        pause: str = "",
        pause_note: str = "",
        alert: str = "",
    ):
        super().__init__(reason)
        self.delay = delay
        self.report = report
        self.pause = pause
        self.pause_note = pause_note
        self.alert = alert
        """The resource's alerts (Outcome.alert): the last attempt's failure may say "down"."""


class Fail(Exception):
    """Fail the job now, without retrying."""

    def __init__(self, reason: str, *, report: Mapping[str, Any] | None = None, alert: str = ""):
        super().__init__(reason)
        self.report = report
        self.alert = alert
        """The resource's alerts (Outcome.alert): a run that gave up may say "down"."""


Handler = Callable[[Job], Awaitable[Any]]
Handlers = Mapping[str, Handler] | Callable[[str], Handler | None]


class Finisher:
    """Collects finished runs and completes them in batches, one script call each."""

    def __init__(
        self,
        queue: Queue,
        repeater: Repeater,
        *,
        keep_ms: int,
        keep_runs_ms: int,
        finished_cap: int,
        done: Callable[[Finished, FinishCode | None], None],
    ) -> None:
        """`done` is called once per run: with what finish.lua did, or with None when the
        call failed (a bug or a script error: the run's lease lapses and it runs again)."""
        self.queue = queue
        self.repeater = repeater
        self.keep_ms = keep_ms
        self.keep_runs_ms = keep_runs_ms
        self.finished_cap = finished_cap
        self.done = done
        self.pending: list[Finished] = []
        self.in_flight: set[str] = set()
        """Job ids in a finish call now: their leases need no extending."""
        self._wanted = asyncio.Event()
        self._stopped = False

    def add(self, finished: Finished) -> None:
        self.pending.append(finished)
        self._wanted.set()

    def finishing(self, job_id: str) -> bool:
        return job_id in self.in_flight or any(f.lease.job_id == job_id for f in self.pending)

    async def run(self) -> None:
        """Finish what is added, until `stop` (the worker's stop flushes what is left)."""
        while not self._stopped:
            await self._wanted.wait()
            self._wanted.clear()
            await self.flush()

    def stop(self) -> None:
        """End `run` without relying on its cancellation: a cancellation that arrives as a
        Redis call inside `flush` returns can be lost (Python 3.11's wait_for), and the loop
        then waited for work for ever, holding the process after SIGTERM."""
        self._stopped = True
        self._wanted.set()

    async def flush(self) -> None:
        """Finish everything pending; through a Redis outage or refusal, keep trying (when
        stopping, until Redis has refused `GIVE_UP_FINISHING` times)."""
        failures = 0
        while self.pending:
            batch, self.pending = self.pending, []
            self.in_flight = {f.lease.job_id for f in batch}
            codes: Sequence[FinishCode | None]
            try:
                codes, paused = await self.queue.finish_pausing(
                    batch,
                    keep_ms=self.keep_ms,
                    keep_runs_ms=self.keep_runs_ms,
                    cap=self.finished_cap,
                )
                for finished in paused:  # once per pause: the run that started it says so
                    log.warning("pausing host %s for every worker", finished.pause_note)
                self.repeater.redis_ok()
                failures = 0
            except Exception as exc:
                failures += 1
                if not await self.repeater.ride_out(exc, failures):
                    log.exception(
                        "finishing %d job(s) failed; they rerun once their leases lapse",
                        len(batch),
                    )
                    codes = [None] * len(batch)
                else:
                    self.pending = batch + self.pending
                    # stopping: a refusing Redis ends this here; a hung one, the grace bound
                    if self.repeater.stopped and failures > GIVE_UP_FINISHING:
                        log.error(
                            "giving up finishing %d job(s): Redis unreachable or refusing writes",
                            len(batch),
                        )
                        return
                    continue
            finally:
                self.in_flight = set()
            for finished, code in zip(batch, codes, strict=True):
                self.done(finished, code)


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
        resync: Callable[[], Awaitable[None]] | None = None,
        expect_synced: bool = False,
        watch_sync: bool = True,
        tally: Tally | None = None,
    ) -> None:
        """`resync` syncs the queue again when Redis lost its data, and `expect_synced`
        warns about a queue that was never synced too; `watch_sync=False` leaves that to
        a supervisor (see watcher/keeper.py)."""
        if concurrency < 1:
            raise ValueError("concurrency must be >= 1")
        self.queue = queue
        self.handlers = handlers
        self.concurrency = concurrency
        self.lease_ms = round(lease * 1000)
        self.grace = grace
        self.backoff_base = backoff_base
        self.backoff_cap = backoff_cap
        self.metrics = metrics
        self.id = worker_id or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self.processed = 0
        self.failed = 0
        self.fenced = 0
        self.repeater = Repeater()
        self.tally = tally or Tally()
        """Start lags and skipped ticks here; the check runner adds the runs' outcomes."""
        self.ticker = Ticker(queue, self.repeater, tally=self.tally) if tick else None
        keep_ms = round(keep_finished * 1000)
        self.finisher = Finisher(
            queue,
            self.repeater,
            keep_ms=keep_ms,
            keep_runs_ms=round(keep_runs * 1000),
            finished_cap=finished_cap,
            done=self._finished,
        )
        self.keeper = Keeper(
            queue,
            worker_id=self.id,
            lease_ms=self.lease_ms,
            keep_ms=keep_ms,
            finished_cap=finished_cap,
            leases=self._leases_to_keep,
            info=self._info,
            repeater=self.repeater,
            resync=resync,
            expect_synced=expect_synced,
            watch_sync=watch_sync,
        )
        self._held: dict[str, Job] = {}  # leased and not yet finished in Redis
        self._running: set[asyncio.Task[None]] = set()
        self._slot_free = asyncio.Event()
        self._takes = 0

    # -- lifecycle ----------------------------------------------------------------------

    def stop(self) -> None:
        self.repeater.stop()
        self._slot_free.set()

    async def run(self, *, install_signal_handlers: bool = False) -> None:
        """Run until stop() (or SIGTERM/SIGINT when asked to install handlers)."""
        loop = asyncio.get_running_loop()
        if install_signal_handlers:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, self.stop)
        fetch = asyncio.create_task(self.repeater.repeat(self.fetch))
        others = [self.finisher.run(), self.repeater.repeat(self.keeper.step)]
        if self.ticker:
            others.append(self.ticker.run())
        tasks = [fetch, *(asyncio.create_task(coro) for coro in others)]
        try:
            await self.repeater.stopping.wait()
            deadline = loop.time() + self.grace  # one budget for the whole stop
            await fetch
            await self._drain(max(0.0, deadline - loop.time()))
            try:
                # at least a second to hand in what finished, however the grace was spent
                flush_for = max(deadline - loop.time(), 1.0)
                await asyncio.wait_for(self.finisher.flush(), timeout=flush_for)
            except TimeoutError:
                log.error(
                    "stopped before finishing %d job(s): their leases lapse and they rerun",
                    len(self.finisher.pending),
                )
        finally:
            self.finisher.stop()
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            with contextlib.suppress(*UNAVAILABLE, TimeoutError):
                await asyncio.wait_for(self.keeper.forget(), STOP_CALL_TIMEOUT)
            if install_signal_handlers:
                for sig in (signal.SIGTERM, signal.SIGINT):
                    loop.remove_signal_handler(sig)

    async def _drain(self, grace: float) -> None:
        """Give running jobs `grace` seconds, then return the rest to the queue."""
        if self._running and grace > 0:
            await asyncio.wait(set(self._running), timeout=grace)
        unfinished = [t for t in self._running if not t.done()]
        if not unfinished:
            return
        for task in unfinished:
            task.cancel()
        await asyncio.gather(*unfinished, return_exceptions=True)
        returned = [job for job in self._held.values() if not self.finisher.finishing(job.id)]
        if returned:
            with contextlib.suppress(*UNAVAILABLE):
                released = await self.queue.release([job.lease for job in returned])
                log.info("returned %d unfinished job(s) to the queue", released)
            for job in returned:
                self._held.pop(job.id, None)

    # -- fetch and run --------------------------------------------------------------------

    async def fetch(self) -> float:
        """Take as many jobs as there are free slots and start them (or wait for work)."""
        await self.repeater.writes_open()  # a run whose results Redis refuses is wasted
        free = self.concurrency - len(self._running)
        if free <= 0:
            self._slot_free.clear()
            await self._slot_free.wait()
            return 0.0
        self._takes += 1
        jobs, held = await self.queue.take_counting_held(
            free, lease_ms=self.lease_ms, worker=self.id, token_prefix=f"{self.id}:{self._takes}:"
        )
        for host, reasons in held.items():
            self.tally.record_held(host, reasons)
        if not jobs:
            await self._wait_for_work()
        for job in jobs:
            if job.attempt == 1 and job.scheduled_at is not None and job.taken_ms is not None:
                self.tally.record_lag(max(0, job.taken_ms - job.scheduled_at))
            self._held[job.id] = job
            task = asyncio.create_task(self._run(job))
            self._running.add(task)
            task.add_done_callback(self._job_done)
        return 0.0

    async def _wait_for_work(self) -> None:
        """Block until a job may be ready, or until stopped."""
        waiting = asyncio.create_task(self.queue.wait_for_work(IDLE_WAIT))
        stopping = asyncio.create_task(self.repeater.stopping.wait())
        try:
            await asyncio.wait({waiting, stopping}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopping.cancel()
            if not waiting.done():
                waiting.cancel()
                with contextlib.suppress(asyncio.CancelledError, *UNAVAILABLE):
                    await waiting
        if waiting.done() and not waiting.cancelled() and (error := waiting.exception()):
            raise error

    def _job_done(self, task: asyncio.Task[None]) -> None:
        self._running.discard(task)
        self._slot_free.set()

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
            pause = (exc.pause, exc.pause_note)
            self._finish(
                job, "retry", str(exc), delay=delay, report=exc.report, pause=pause, alert=exc.alert
            )
        except Fail as exc:
            self._finish(job, "fail", str(exc), report=exc.report, alert=exc.alert)
        except Exception as exc:
            refused = refusal(exc)
            if refused is not None:  # said once for all runs, until Redis accepts writes again
                self.repeater.refused(refused)
            elif isinstance(exc, UNAVAILABLE):  # an outage: said once, by the loop that meets it
                log.debug("job %s (%s) attempt %d: Redis unavailable: %r", job.id, job.name,
                          job.attempt, exc)  # fmt: skip
            else:
                log.warning("job %s (%s) attempt %d failed: %r", job.id, job.name, job.attempt, exc)
            self._finish(
                job, "retry", f"{type(exc).__name__}: {exc}", delay=self._backoff(job.attempt)
            )
        else:
            outcome = value if isinstance(value, Outcome) else Outcome(result=value)
            try:
                self._finish(
                    job,
                    "ok",
                    outcome.result,
                    state=outcome.state,
                    report=outcome.report,
                    hold_ms=outcome.hold_ms,
                    alert=outcome.alert,
                )
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
        pause: tuple[str, str] = ("", ""),
        hold_ms: int | None = None,
        alert: str = "",
    ) -> None:
        text = str(payload) if kind != "ok" else "" if payload is None else _safe_json(payload)
        self.finisher.add(
            Finished(
                job.lease,
                kind,
                round(delay * 1000),
                text,
                None if state is None else dump_json("state", dict(state)),
                None if report is None else _safe_json(report),
                *pause,
                hold_ms=hold_ms,
                alert=alert,
            )
        )

    def _finished(self, finished: Finished, code: FinishCode | None) -> None:
        job_id = finished.lease.job_id
        self._held.pop(job_id, None)  # no longer extended
        if code is None:
            return
        if code is FinishCode.LEASE_LOST:
            log.warning("job %s lost its lease before finishing; another worker reruns it", job_id)
            return
        if code is FinishCode.VANISHED:
            log.warning(
                "job %s no longer exists in Redis (Redis lost its data, or the job ran "
                "elsewhere and expired): its result is dropped",
                job_id,
            )
            return
        if code is FinishCode.FENCED:
            self.fenced += 1
            log.debug("job %s: state write-back fenced off (a newer run wrote first)", job_id)
        if finished.kind == "ok":
            self.processed += 1
        else:
            self.failed += 1

    # -- what the keeper needs ----------------------------------------------------------

    def _leases_to_keep(self) -> list[Lease]:
        return [job.lease for job in self._held.values() if job.id not in self.finisher.in_flight]

    def _info(self) -> dict[str, Any]:
        return {
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "concurrency": self.concurrency,
            "running": len(self._running),
            "processed": self.processed,
            "failed": self.failed,
            "fenced": self.fenced,
            **(self.metrics() if self.metrics else {}),
        }


def _safe_json(value: Any) -> str:
    try:
        return json.dumps(value, separators=(",", ":"), default=str)
    except (TypeError, ValueError):
        return json.dumps(repr(value))
