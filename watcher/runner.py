"""The check runner: the worker's handler that runs checks, records changes, notifies,
and writes the new state back (fenced) only after the change was recorded and handed to
the notifiers, so a run that dies half-way leaves the old validators and the change is
detected again rather than lost.

A change is recorded (and notified) with what the check wants shown as old → new,
`CheckResult.old` / `.new`; a check that sets neither shows the state before the run and
the state it returned. String values are masked like the summary."""

from __future__ import annotations

import asyncio
import json
import logging
import time
import traceback
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import urlsplit

import httpx

from watcher.change import Change
from watcher.check import (
    Check,
    CheckContext,
    CheckFailed,
    CheckResult,
    Resource,
    TransientCheckError,
)
from watcher.config import NotifierConfig
from watcher.courier import Courier
from watcher.fetch import run_check
from watcher.freshness import DEFAULT_MAX_EVERY, Freshness
from watcher.hosts import MAX_PAUSE
from watcher.http import make_client
from watcher.masking import RedactingLogger
from watcher.notifiers import (
    ConsoleNotifier,
    Notifier,
    build_notifiers,
    delivery_deadlines,
    delivery_targets,
    notify_all,
)
from watcher.outbox import DEFAULT_DELIVER_WITHIN
from watcher.queue import Queue
from watcher.registry import PluginError, load_check
from watcher.schedule import format_duration
from watcher.summary import summarize
from watcher.tally import Tally
from watcher.worker import Fail, Handler, Job, Outcome, Retry, Worker

__all__ = ["CheckRunner", "RunStats", "serve"]

log = logging.getLogger("watcher.runs")
"""Changes (when no console notifier says them), failures that end a run, recoveries."""
checks_log = logging.getLogger("watcher.checks")
"""A line per check and per retried attempt: `watcher run -v`."""

NEXT_RUN_WAIT = 1.0
"""Seconds a failed run's log line waits for Redis to say when the next run is."""


class RunStats:
    """Runs in the last minute, in one-second buckets, for the worker's heartbeat; and
    the same counted into a `Tally` for the summary line and the metrics."""

    def __init__(self, window: int = 60, *, per_resource: bool = False) -> None:
        self.window = window
        self.tally = Tally()
        self.per_resource = per_resource
        """Also count runs by resource (`--metrics-per-resource`)."""
        self._buckets: deque[list[int]] = deque()  # [second, runs, not_modified, changes, failed]

    def add(
        self,
        check: str,
        seconds: float,
        *,
        resource: str = "",
        not_modified: bool = False,
        changed: bool = False,
        baseline: bool = False,
        failed: bool = False,
        retrying: bool = False,
    ) -> None:
        """One run of `check` (of `resource`) that took `seconds`: `failed` when it ended
        failed, `retrying` when it failed and runs again."""
        tally = self.tally
        tally.checks += 1
        tally.not_modified += not_modified
        tally.changes += changed
        tally.failures += failed
        tally.retries += retrying
        outcome = _outcome(not_modified, changed, baseline, failed, retrying)
        tally.record_run(check, outcome, seconds)
        if self.per_resource:
            tally.record_resource(resource, outcome, seconds)
        second = int(time.time())
        if not self._buckets or self._buckets[-1][0] != second:
            self._buckets.append([second, 0, 0, 0, 0])
        bucket = self._buckets[-1]
        bucket[1] += 1
        bucket[2] += not_modified
        bucket[3] += changed
        bucket[4] += failed or retrying

    def snapshot(self) -> dict[str, int]:
        horizon = int(time.time()) - self.window
        while self._buckets and self._buckets[0][0] <= horizon:
            self._buckets.popleft()
        totals = [sum(b[i] for b in self._buckets) for i in range(1, 5)]
        return dict(
            zip(("runs_1m", "not_modified_1m", "changes_1m", "failed_1m"), totals, strict=True)
        )


def _outcome(
    not_modified: bool, changed: bool, baseline: bool, failed: bool, retrying: bool
) -> str:
    """The run's outcome as the metrics label it (watcher.tally.OUTCOMES)."""
    if failed:
        return "failed"
    if retrying:
        return "retrying"
    if baseline:
        return "baseline"
    if changed:
        return "changed"
    return "not_modified" if not_modified else "unchanged"


class CheckRunner:
    """Resolves a check name to a handler; one instance per worker process."""

    def __init__(
        self,
        queue: Queue,
        client: httpx.AsyncClient,
        notifiers: Mapping[str, Notifier] | None = None,
    ) -> None:
        self.queue = queue
        self.client = client
        self.notifiers = dict(notifiers or {})
        self.deadlines: dict[str, float] = {}
        """Seconds each notifier's deliveries are retried (`deliver_within`); others: a day."""
        self.courier: Courier | None = None
        """Sends the outbox's deliveries (set by `serve`); poked when a change goes in."""
        self._unknown: set[str] = set()
        """Notifiers named by resources but not defined here, said once each."""
        self.stats = RunStats()
        self._checks: dict[str, Check | PluginError] = {}
        self._traced: set[str] = set()
        """Checks whose crash was logged with its traceback in this process."""
        self._notifying: set[asyncio.Task[Any]] = set()

    def use_notifiers(self, definitions: Mapping[str, NotifierConfig | Mapping[str, Any]]) -> None:
        self.notifiers = build_notifiers(definitions, self.client)
        self.deadlines = delivery_deadlines(definitions)
        if self.courier is not None:
            self.courier.notifiers = dict(self.notifiers)

    def courier_for(self, worker: Worker) -> Courier:
        """The courier that sends this runner's notifiers' deliveries, stopping with `worker`
        (its repeater) and counting into its tally; run it beside the worker."""
        self.courier = Courier(
            self.queue, self.notifiers, worker.repeater, on_result=worker.tally.record_delivery
        )
        return self.courier

    def handler(self, name: str) -> Handler | None:
        """The worker's handler lookup: every check name runs through `run`."""
        return self.run

    def _check(self, name: str, resource: str) -> Check:
        found = self._checks.get(name)
        if found is None:
            try:
                found = load_check(name, resource=resource)
            except PluginError as exc:
                found = exc
            self._checks[name] = found
        if isinstance(found, PluginError):
            raise Fail(str(found), report=_report("failed", str(found)))
        return found

    async def run(self, job: Job) -> Outcome:
        try:
            resource = Resource.from_template(job.data, id=job.scheduler_id)
        except CheckFailed as exc:  # e.g. a secret's variable not set on this worker
            log.warning("%s", exc.reason)
            raise Fail(exc.reason, report=_report("failed", exc.reason)) from None
        check = self._check(job.name, resource.id)
        ctx = CheckContext(
            resource=resource,
            state=dict(job.state),
            client=self.client,
            log=RedactingLogger(log, resource.redact, {"resource": resource.id}),
            upsert=lambda *, state=None, every=None: job.upsert_scheduler(state=state, every=every),
        )
        started = time.monotonic()
        try:
            # Within the resource's timeout as a whole: a slow server cannot hold a slot.
            result = await run_check(check, ctx)
        except TransientCheckError as exc:
            raise await self._transient(job, resource, exc, started) from None
        except CheckFailed as exc:
            raise await self._failed(job, resource, exc, started) from None
        except Exception as exc:
            raise await self._crashed(job, resource, exc, started) from None
        return await self._complete(job, resource, result, started)

    async def _transient(
        self, job: Job, resource: Resource, exc: TransientCheckError, started: float
    ) -> Retry:
        """A failure worth retrying: quiet (but with -v) until the last attempt, which says
        it gave up. The worker fails the job once its attempts are used up."""
        reason = resource.redact(exc.reason)
        took = time.monotonic() - started
        if job.attempt < job.max_attempts:
            self.stats.add(job.name, took, resource=resource.id, retrying=True)
            checks_log.info(
                "%s attempt %d of %d failed, retrying: %s",
                resource.id,
                job.attempt,
                job.max_attempts,
                _plain(reason, exc.status_code),
            )
        else:
            self.stats.add(job.name, took, resource=resource.id, failed=True)
            attempts = f"{job.attempt} attempt{'s' if job.attempt > 1 else ''}"
            what = f"gave up after {attempts}: {_plain(reason, exc.status_code)}"
            log.warning("%s: %s%s", resource.id, what, await self._next_run(job, started))
        report = _report("retrying", reason, exc.status_code, started)
        pause, note = _host_pause(resource, exc)
        alert = self._alert(job, resource, _plain(reason, exc.status_code), exc.status_code)
        return Retry(
            reason,
            delay=exc.retry_after,
            report=report,
            pause=pause,
            pause_note=note,
            alert=alert,
        )

    async def _failed(self, job: Job, resource: Resource, exc: CheckFailed, started: float) -> Fail:
        self.stats.add(job.name, time.monotonic() - started, resource=resource.id, failed=True)
        reason = resource.redact(exc.reason)
        what = f"failed: {_plain(reason, exc.status_code)}"
        log.warning("%s: %s%s", resource.id, what, await self._next_run(job, started))
        alert = self._alert(job, resource, _plain(reason, exc.status_code), exc.status_code)
        return Fail(reason, report=_report("failed", reason, exc.status_code, started), alert=alert)

    async def _crashed(self, job: Job, resource: Resource, exc: Exception, started: float) -> Fail:
        """A check's bug: its traceback the first time that check crashes in this process,
        then a line a run; every time with --debug."""
        self.stats.add(job.name, time.monotonic() - started, resource=resource.id, failed=True)
        reason = resource.redact(f"check crashed: {type(exc).__name__}: {exc}")
        said = f"{resource.id}: {reason}{await self._next_run(job, started)}"
        if log.isEnabledFor(logging.DEBUG):
            log.error("%s", said, exc_info=exc)
        elif job.name not in self._traced:
            self._traced.add(job.name)
            # formatted here, not by logging: its last line repeats the unmasked message
            trace = "".join(traceback.format_exception(exc)).rstrip()
            log.error("%s\n%s", said, resource.redact(trace))
        else:
            log.error("%s (--debug shows the traceback)", said)
        alert = self._alert(job, resource, reason, None)
        return Fail(reason, report=_report("failed", reason, None, started), alert=alert)

    async def _next_run(self, job: Job, started: float) -> str:
        """ "; next run in 10m", from the scheduler's next fire time: a Redis round trip
        that only failed runs pay. Empty when Redis does not say in time."""
        if job.scheduler_id is None:
            return ""
        try:
            info = await asyncio.wait_for(self.queue.get_scheduler(job.scheduler_id), NEXT_RUN_WAIT)
        except Exception:  # Redis down or slow: the line goes out without it
            return ""
        if info is None:
            return ""
        if info.next_fire_ms is None:
            return "; no next run (its schedule has ended)"
        # Redis time, as the fire time is: when the run was taken, plus the time it took.
        elapsed_ms = (time.monotonic() - started) * 1000
        now_ms = time.time() * 1000 if job.taken_ms is None else job.taken_ms + elapsed_ms
        return f"; next run in {_duration((info.next_fire_ms - now_ms) / 1000)}"

    async def _complete(
        self, job: Job, resource: Resource, result: CheckResult, started: float
    ) -> Outcome:
        changed = result.changed and not result.baseline
        self.stats.add(
            job.name,
            time.monotonic() - started,
            resource=resource.id,
            not_modified=result.not_modified,
            changed=changed,
            baseline=result.baseline,
        )
        summary = resource.redact(result.summary)
        alert = self._alert(job, resource, summary, result.status_code)
        if changed and job.scheduler_id and job.fence:
            change = Change(
                resource=resource.id,
                check=job.name,
                url=resource.shown_url,
                time=await self.queue.now_ms() / 1000,
                old=_shown(resource, job.state if result.old is None else result.old),
                new=_shown(resource, result.state if result.new is None else result.new),
                status_code=result.status_code,
                summary=summary,
                details=resource.redact(result.details) if result.details else None,
            )
            entry = await self.queue.record_change(
                job.scheduler_id,
                job.fence,
                change,
                notify=self._targets(job, events=False),
                alert=alert,
            )
            if entry is not None:
                self._say(job, Change(**{**change.to_dict(), "id": entry}))
                if self.courier is not None:
                    self.courier.poke()
        if result.every is not None:
            await job.upsert_scheduler(every=result.every)
        outcome = "baseline" if result.baseline else "changed" if changed else "unchanged"
        if job.failures:
            log.info("%s recovered after %d failed run(s): %s", resource.id, job.failures, summary)
        if checks_log.isEnabledFor(logging.INFO):
            said = summary if summary.startswith(outcome) else f"{outcome}: {summary}"
            took = (time.monotonic() - started) * 1000
            checks_log.info("%s %s (%.0f ms)", resource.id, said, took)
        report = _report(outcome, summary, result.status_code, started, result.not_modified)
        hold = _hold(job.data, result.fresh_for)
        if hold is not None:
            report["cadence"] = {"seconds": hold.seconds, "reason": resource.redact(hold.reason)}
        return Outcome(
            result={"outcome": outcome, "summary": summary},
            state=None if result.state == job.state else result.state,
            report=report,
            hold_ms=None if hold is None else round(hold.seconds * 1000),
            alert=alert,
        )

    def _targets(self, job: Job, *, events: bool) -> list[tuple[str, int]]:
        """The resource's notifiers that get deliveries through the outbox, with the ms each
        is retried: every one but the console for a change (this worker says it at once),
        every one for an event (any worker's console says it)."""
        names = job.data.get("notify")
        targets = []
        for name in ["console"] if names is None else names:
            notifier = self.notifiers.get(name)
            if notifier is None and name not in self._unknown:
                self._unknown.add(name)  # e.g. `watcher worker` started without the YAML
                log.warning(
                    "notifier %r is not defined in this worker: its deliveries wait for a "
                    "worker that has it (start workers with -c pointing at the YAML)",
                    name,
                )
            if events or not isinstance(notifier, ConsoleNotifier):
                within = round(self.deadlines.get(name, DEFAULT_DELIVER_WITHIN) * 1000)
                targets += [(target, within) for target in delivery_targets(name, self.notifiers)]
        return targets

    def _alert(self, job: Job, resource: Resource, said: str, status_code: int | None) -> str:
        """What finish.lua needs to tell the resource's notifiers it is down, recovered or
        stale (JSON), or "" when the resource asks for none of that."""
        data = job.data
        after = int(data.get("alert_after") or 0)
        stale = float(data.get("expect_change_within") or 0)
        if not after and not stale:
            return ""
        message = {
            "resource": resource.id,
            "check": job.name,
            "url": resource.shown_url,
            "summary": said,
            "status_code": status_code,
        }
        alert = {
            "after": after,
            "remind": round(float(data.get("remind_every") or 0) * 1000),
            "stale": round(stale * 1000),
            "stale_words": format_duration(stale) if stale else "",
            "notify": [list(target) for target in self._targets(job, events=True)],
            "message": message,
        }
        return json.dumps(alert, separators=(",", ":"))

    def _say(self, job: Job, change: Change) -> None:
        """A change on this worker's console notifiers, at once (the others get it from the
        outbox); said once in the log when the resource has no console notifier."""
        names = job.data.get("notify")
        chosen = [
            notifier
            for name in (["console"] if names is None else names)
            if isinstance(notifier := self.notifiers.get(name), ConsoleNotifier)
        ]
        if not chosen:
            log.info("%s", ConsoleNotifier.plain(change))  # every change is said once
            return
        task = asyncio.create_task(notify_all(chosen, change, log=log))
        self._notifying.add(task)
        task.add_done_callback(self._notifying.discard)

    async def drain(self, timeout: float = 10.0) -> None:
        """Wait (bounded) for notifications still being sent."""
        if self._notifying:
            await asyncio.wait(set(self._notifying), timeout=timeout)


def _shown(resource: Resource, values: Mapping[str, Any]) -> dict[str, Any]:
    """A change's old or new values with the resource's secrets masked, as in the summary."""
    return {key: _masked(resource, value) for key, value in values.items()}


def _masked(resource: Resource, value: Any) -> Any:
    if isinstance(value, str):
        return resource.redact(value)
    if isinstance(value, Mapping):
        return _shown(resource, value)
    if isinstance(value, list | tuple):
        return [_masked(resource, item) for item in value]
    return value


def _plain(reason: str, status_code: int | None) -> str:
    """A failure's reason as the log says it: an HTTP status as "HTTP 503 Service
    Unavailable" (the report and the job's error keep the check's words)."""
    if status_code is not None and reason.split(" ", 1)[0] == str(status_code):
        return f"HTTP {reason}"
    return reason


def _duration(seconds: float) -> str:
    """How long until the next run: whole minutes from two minutes on."""
    if seconds <= 0:
        return "0s"
    return format_duration(seconds if seconds < 120 else round(seconds / 60) * 60)


def _report(
    outcome: str,
    summary: str,
    status_code: int | None = None,
    started: float | None = None,
    not_modified: bool = False,
) -> dict[str, Any]:
    report: dict[str, Any] = {"outcome": outcome, "summary": summary, "at": time.time()}
    if status_code is not None:
        report["status_code"] = status_code
    if not_modified:
        report["not_modified"] = True
    if started is not None:
        report["ms"] = round((time.monotonic() - started) * 1000, 1)
    return report


async def serve(
    queue: Queue,
    *,
    notifiers: Mapping[str, NotifierConfig | Mapping[str, Any]] | None = None,
    concurrency: int = 50,
    transport: str = "aiohttp",
    install_signal_handlers: bool = False,
    worker: dict[str, Any] | None = None,
    started: Callable[[CheckRunner], None] | None = None,
    summary_every: float = 0.0,
    report: Callable[[Tally], None] | None = None,
    per_resource: bool = False,
) -> None:
    """Run check workers on `queue` until stopped (SIGTERM/SIGINT when asked). `started`
    gets the runner, e.g. to swap its notifiers when the configuration is reloaded. With
    `summary_every`, a summary line is logged that often; `report` gets what was counted
    every second (a worker process tells its supervisor; `--metrics` keeps a total).
    `per_resource` counts runs by resource too."""
    async with make_client(transport=transport, max_connections=concurrency) as client:
        runner = CheckRunner(queue, client)
        runner.use_notifiers(notifiers or {})
        runner.stats.per_resource = per_resource
        if started:
            started(runner)
        running = Worker(
            queue,
            runner.handler,
            concurrency=concurrency,
            metrics=runner.stats.snapshot,
            tally=runner.stats.tally,
            **(worker or {}),
        )
        courier = runner.courier_for(running)
        tasks = [asyncio.create_task(courier.run())]
        take = running.tally.take
        if report is not None:
            if summary_every > 0:  # both want what was counted: the summary's is kept aside
                period = Tally()
                report, take = _also_into(period, report), period.take
            tasks.append(asyncio.create_task(_report_every_second(running.tally, report)))
        if summary_every > 0:
            tasks.append(asyncio.create_task(summarize(queue, take, summary_every)))
        try:
            await running.run(install_signal_handlers=install_signal_handlers)
        finally:
            await courier.stop(grace=5.0)
            for task in tasks:
                task.cancel()
            if report is not None:
                report(running.tally.take())
        await runner.drain()


def _also_into(period: Tally, report: Callable[[Tally], None]) -> Callable[[Tally], None]:
    def both(taken: Tally) -> None:
        period.add(taken)
        report(taken)

    return both


async def _report_every_second(tally: Tally, report: Callable[[Tally], None]) -> None:
    while True:
        await asyncio.sleep(1.0)
        report(tally.take())


def _hold(data: Mapping[str, Any], fresh_for: Freshness | None) -> Freshness | None:
    """How long the next run waits on the server's word: none with `cadence: fixed`, at
    most the resource's `max_every`."""
    if fresh_for is None or data.get("cadence") == "fixed":
        return None
    return fresh_for.capped(float(data.get("max_every", DEFAULT_MAX_EVERY)))


def _host_pause(resource: Resource, exc: TransientCheckError) -> tuple[str, str]:
    """How long the resource's host pauses for every worker (finish.lua): a 429, or a 503
    with Retry-After, is the host asking to be left alone. ("", "") for no pause."""
    code, after = exc.status_code, exc.retry_after
    if not (code == 429 or (code == 503 and after is not None)):
        return "", ""
    host = urlsplit(resource.url).hostname or "?"
    if after is None:
        return "x", f"{host} ({code} without Retry-After: backing off, doubling per 429)"
    seconds = min(after, MAX_PAUSE)
    return str(round(seconds * 1000)), f"{host} for {seconds:g}s ({code} with Retry-After)"
