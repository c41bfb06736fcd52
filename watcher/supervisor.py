"""The supervisor: a check worker in each of N processes, one that dies replaced, all
stopped gracefully together.

One asyncio loop uses about one core, and a check spends most of its time in Python, so
`watcher run` and `watcher worker` start one worker process per CPU by default. The
children are spawned (not forked: the parent runs an event loop and may hold sockets)
and get all they need as arguments, so none reads the YAML again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import os
import signal
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import Any

from watcher.backoff import backoff
from watcher.logs import setup_logging
from watcher.registry import add_plugin_dir
from watcher.tally import Tally

__all__ = ["Supervisor", "WorkerProcess"]

log = logging.getLogger("watcher.supervisor")

POLL = 0.2
"""Seconds between looks at the children."""
HEALTHY_AFTER = 60.0
"""A child that lived this long starts the restart backoff afresh when it dies."""
KILL_AFTER_GRACE = 5.0
"""Seconds past the workers' grace period before a child that has not stopped is killed."""


@dataclass(frozen=True)
class WorkerProcess:
    """What one worker process runs: the queue to serve and how."""

    redis_url: str
    queue: str
    changes_max: int = 10_000
    notifiers: Mapping[str, Any] = field(default_factory=dict)
    concurrency: int = 50
    transport: str = "aiohttp"
    verbose: bool = False
    debug: bool = False
    worker: Mapping[str, Any] = field(default_factory=dict)
    """Worker options (lease, grace, ...), as `watcher.worker.Worker` takes them."""
    plugin_dirs: tuple[str, ...] = ()
    """Directories to import dotted-path checks from (the config file's), as
    `watcher.registry.plugin_dirs()` gives them."""
    per_resource: bool = False
    """Count runs by resource too (`--metrics-per-resource`)."""

    @property
    def grace(self) -> float:
        return float(self.worker.get("grace", 10.0))


def run_worker_process(options: WorkerProcess, reports: Connection) -> None:
    """A child's main: serve the queue until SIGTERM or SIGINT, telling the supervisor
    what its runs came to every second (on a pipe of its own: a child killed mid-write
    breaks only its own)."""
    setup_logging(options.debug, verbose=options.verbose)
    for directory in options.plugin_dirs:
        add_plugin_dir(directory)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(options, reports))


async def _serve(options: WorkerProcess, reports: Connection) -> None:
    from watcher.queue import Queue
    from watcher.runner import serve

    queue = await Queue.connect(options.redis_url, options.queue, changes_max=options.changes_max)
    try:
        await serve(
            queue,
            notifiers=options.notifiers,
            concurrency=options.concurrency,
            transport=options.transport,
            install_signal_handlers=True,
            worker=dict(options.worker),
            report=reports.send,
            per_resource=options.per_resource,
        )
    finally:
        await queue.close()


@dataclass
class _Child:
    slot: int
    process: BaseProcess | None = None
    reports: Connection | None = None
    started: float = 0.0
    failures: int = 0
    restart_at: float | None = None
    replacing: bool = False
    """Being stopped on purpose: not a death to report and restart."""


class Supervisor:
    def __init__(self, options: WorkerProcess, processes: int) -> None:
        if processes < 1:
            raise ValueError("processes must be >= 1")
        self.options = options
        self.children = [_Child(slot) for slot in range(processes)]
        self.restarts = 0
        self.tally = Tally()
        """What every child's runs came to, added up as they report it (the summary line
        takes it)."""
        self.total = Tally()
        """The same, never taken: what they came to since the start (the metrics)."""
        self._context = multiprocessing.get_context("spawn")
        self._stopping = asyncio.Event()

    @property
    def pids(self) -> list[int]:
        return [c.process.pid for c in self.children if c.process and c.process.pid]

    def stop(self) -> None:
        self._stopping.set()

    async def run(self) -> None:
        """Start the children, replace those that die, and stop them all on `stop()`."""
        for child in self.children:
            self._start(child)
        try:
            while not self._stopping.is_set():
                self._look_after()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), POLL)
        finally:
            await self._stop_all()

    async def restart_all(self, options: WorkerProcess) -> None:
        """Replace the children one at a time with ones running `options` (e.g. new
        notifiers): each finishes its runs first, and the others keep checking."""
        self.options = options
        for child in self.children:
            if self._stopping.is_set():
                return
            child.replacing = True
            try:
                await self._stop_children([child])
            finally:
                child.replacing = False
            self._start(child)

    def _start(self, child: _Child) -> None:
        self._read_reports(child)
        if child.reports is not None:
            child.reports.close()
        reading, writing = self._context.Pipe(duplex=False)
        process = self._context.Process(
            target=run_worker_process,
            args=(self.options, writing),
            name=f"watcher-worker-{child.slot + 1}",
            daemon=False,
        )
        process.start()
        writing.close()  # the child's end: the parent keeps only its own
        child.process, child.reports = process, reading
        child.started, child.restart_at = time.monotonic(), None

    def _read_reports(self, child: _Child) -> None:
        reports = child.reports
        if reports is None:
            return
        try:
            while reports.poll():
                report = reports.recv()
                self.tally.add(report)
                self.total.add(report)
        except (EOFError, OSError):  # the child is gone; so is what it had not sent
            reports.close()
            child.reports = None

    def _look_after(self) -> None:
        for child in self.children:
            self._read_reports(child)
        now = time.monotonic()
        for child in self.children:
            if child.restart_at is not None:
                if now >= child.restart_at:
                    self.restarts += 1
                    self._start(child)
                continue
            process = child.process
            if process is None or child.replacing or process.is_alive():
                continue
            lived = now - child.started
            child.failures = 1 if lived >= HEALTHY_AFTER else child.failures + 1
            delay = backoff(child.failures - 1, 1.0, 30.0)
            child.restart_at = now + delay
            log.warning(
                "worker process %d (pid %s) %s after %.0fs; starting another in %.1fs",
                child.slot + 1,
                process.pid,
                _describe_exit(process.exitcode),
                lived,
                delay,
            )

    async def _stop_all(self) -> None:
        await self._stop_children(self.children)

    async def _stop_children(self, children: list[_Child]) -> None:
        alive = [c.process for c in children if c.process is not None and c.process.is_alive()]
        for process in alive:
            with contextlib.suppress(ProcessLookupError):
                os.kill(process.pid or 0, signal.SIGTERM)
        deadline = time.monotonic() + self.options.grace + KILL_AFTER_GRACE
        while any(p.is_alive() for p in alive) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        for process in alive:
            if process.is_alive():
                log.error("worker process pid %s did not stop in time; killing it", process.pid)
                process.kill()
            process.join(1.0)


def _describe_exit(code: int | None) -> str:
    if code is not None and code < 0:
        with contextlib.suppress(ValueError):
            return f"was killed by {signal.Signals(-code).name}"
    return f"exited with code {code}"
