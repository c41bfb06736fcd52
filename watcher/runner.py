"""The check runner: the worker's handler that runs checks, records changes, notifies,
and writes the new state back (fenced) only after the change was recorded and handed to
the notifiers, so a run that dies half-way leaves the old validators and the change is
detected again rather than lost.

A change is recorded (and notified) with what the check wants shown as old → new,
`CheckResult.old` / `.new`; a check that sets neither shows the state before the run and
the state it returned. String values are masked like the summary."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any

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
from watcher.fetch import run_check
from watcher.http import make_client
from watcher.masking import RedactingLogger
from watcher.notifiers import ConsoleNotifier, Notifier, build_notifiers, notify_all
from watcher.queue import Queue
from watcher.registry import PluginError, load_check
from watcher.summary import summarize
from watcher.tally import Tally
from watcher.worker import Fail, Handler, Job, Outcome, Retry, Worker

__all__ = ["CheckRunner", "RunStats", "serve"]

log = logging.getLogger("watcher.runs")
"""Changes (when no console notifier says them), failures that end a run, recoveries."""
checks_log = logging.getLogger("watcher.checks")
"""A line per check and per retried attempt: `watcher run -v`."""


class RunStats:
    """Runs in the last minute, in one-second buckets, for the worker's heartbeat; and
    the same counted into a `Tally` for the summary line."""

    def __init__(self, window: int = 60) -> None:
        self.window = window
        self.tally = Tally()
        self._buckets: deque[list[int]] = deque()  # [second, runs, not_modified, changes, failed]

    def add(
        self,
        *,
        not_modified: bool = False,
        changed: bool = False,
        failed: bool = False,
        retrying: bool = False,
    ) -> None:
        """One run: `failed` when it ended failed, `retrying` when it failed and runs again."""
        tally = self.tally
        tally.checks += 1
        tally.not_modified += not_modified
        tally.changes += changed
        tally.failures += failed
        tally.retries += retrying
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
        self.stats = RunStats()
        self._checks: dict[str, Check | PluginError] = {}
        self._notifying: set[asyncio.Task[Any]] = set()

    def use_notifiers(self, definitions: Mapping[str, NotifierConfig | Mapping[str, Any]]) -> None:
        self.notifiers = build_notifiers(definitions, self.client)

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
            resource = Resource.from_template(job.data)
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
            reason = resource.redact(exc.reason)
            if job.attempt < job.max_attempts:
                self.stats.add(retrying=True)
                checks_log.info(
                    "%s attempt %d of %d failed, retrying: %s",
                    resource.id,
                    job.attempt,
                    job.max_attempts,
                    reason,
                )
            else:
                self.stats.add(failed=True)
                log.warning("%s failed after %d attempt(s): %s", resource.id, job.attempt, reason)
            raise Retry(
                reason,
                delay=exc.retry_after,
                report=_report("retrying", reason, exc.status_code, started),
            ) from None
        except CheckFailed as exc:
            self.stats.add(failed=True)
            reason = resource.redact(exc.reason)
            log.warning("%s failed: %s", resource.id, reason)
            raise Fail(reason, report=_report("failed", reason, exc.status_code, started)) from None
        except Exception as exc:
            self.stats.add(failed=True)
            reason = resource.redact(f"check crashed: {type(exc).__name__}: {exc}")
            # no traceback unless --debug: its last line would repeat the unmasked message
            debug = log.isEnabledFor(logging.DEBUG)
            hint = "" if debug else " (--debug shows the traceback)"
            log.error("%s failed: %s%s", resource.id, reason, hint, exc_info=debug)
            raise Fail(reason, report=_report("failed", reason, None, started)) from None
        return await self._complete(job, resource, result, started)

    async def _complete(
        self, job: Job, resource: Resource, result: CheckResult, started: float
    ) -> Outcome:
        changed = result.changed and not result.baseline
        self.stats.add(not_modified=result.not_modified, changed=changed)
        summary = resource.redact(result.summary)
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
            entry = await self.queue.record_change(job.scheduler_id, job.fence, change)
            if entry is not None:
                self._notify(job, Change(**{**change.to_dict(), "id": entry}))
        if result.every is not None:
            await job.upsert_scheduler(every=result.every)
        outcome = "baseline" if result.baseline else "changed" if changed else "unchanged"
        if job.failures:
            log.info("%s recovered after %d failed run(s): %s", resource.id, job.failures, summary)
        if checks_log.isEnabledFor(logging.INFO):
            said = summary if summary.startswith(outcome) else f"{outcome}: {summary}"
            took = (time.monotonic() - started) * 1000
            checks_log.info("%s %s (%.0f ms)", resource.id, said, took)
        return Outcome(
            result={"outcome": outcome, "summary": summary},
            state=None if result.state == job.state else result.state,
            report=_report(outcome, summary, result.status_code, started, result.not_modified),
        )

    def _notify(self, job: Job, change: Change) -> None:
        names = job.data.get("notify")
        if names is None:
            names = ["console"]
        missing = [n for n in names if n not in self.notifiers]
        if missing:  # e.g. `watcher worker` started without the YAML that defines them
            log.warning(
                "%s: notifier(s) %s not defined in this worker; start it with -c "
                "pointing at the YAML that defines them",
                change.resource,
                ", ".join(missing),
            )
        chosen = [self.notifiers[n] for n in names if n in self.notifiers]
        if not any(isinstance(notifier, ConsoleNotifier) for notifier in chosen):
            log.info("%s", ConsoleNotifier.plain(change))  # every change is said once
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
) -> None:
    """Run check workers on `queue` until stopped (SIGTERM/SIGINT when asked). `started`
    gets the runner, e.g. to swap its notifiers when the configuration is reloaded. With
    `summary_every`, a summary line is logged that often; `report` gets what was counted
    every second instead (a worker process tells its supervisor)."""
    async with make_client(transport=transport, max_connections=concurrency) as client:
        runner = CheckRunner(queue, client, build_notifiers(notifiers or {}, client))
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
        tasks = []
        if summary_every > 0:
            tasks.append(asyncio.create_task(summarize(queue, running.tally.take, summary_every)))
        if report is not None:
            tasks.append(asyncio.create_task(_report_every_second(running.tally, report)))
        try:
            await running.run(install_signal_handlers=install_signal_handlers)
        finally:
            for task in tasks:
                task.cancel()
            if report is not None:
                report(running.tally.take())
        await runner.drain()


async def _report_every_second(tally: Tally, report: Callable[[Tally], None]) -> None:
    while True:
        await asyncio.sleep(1.0)
        report(tally.take())
