"""The keeper: keeps a worker's leases alive, says the worker is alive, recovers the jobs of
workers that died (their leases lapsed), and notices when Redis lost the queue's data.

Lost data (`SyncWatch`): every sync writes the queue's `synced` marker. Once it was seen
(or, with `expect_synced`, from the start), the marker missing means Redis came back empty
(restarted without persistence, or flushed): the schedulers are gone and nothing will run.
With a `resync` it is called at once (`watcher run` syncs its YAML again); without one a
warning is said once a minute until a sync writes the marker again.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Collection, Mapping
from typing import Any

from watcher.jobs import Lease
from watcher.queue import Queue
from watcher.repeat import Repeater

__all__ = ["Keeper", "SyncWatch"]

log = logging.getLogger("watcher.worker")

RECOVER_BATCH = 1000
UNSYNCED_WARNING_EVERY = 60.0
"""Seconds between the warnings of a worker that waits for a sync."""
RESYNC_RETRY = 10.0
"""Seconds before a failed re-sync is tried again."""


class Keeper:
    def __init__(
        self,
        queue: Queue,
        *,
        worker_id: str,
        lease_ms: int,
        keep_ms: int,
        finished_cap: int,
        leases: Callable[[], Collection[Lease]],
        info: Callable[[], Mapping[str, Any]],
        repeater: Repeater | None = None,
        resync: Callable[[], Awaitable[None]] | None = None,
        expect_synced: bool = False,
        watch_sync: bool = True,
    ) -> None:
        """`leases()` says which leases the worker holds now; `info()` what its heartbeat
        tells status. `resync` syncs the queue again when its data was lost;
        `expect_synced` warns about a queue that was never synced too; `watch_sync=False`
        leaves the marker to someone else (a supervisor watches it for its children)."""
        self.queue = queue
        self.worker_id = worker_id
        self.lease_ms = lease_ms
        self.keep_ms = keep_ms
        self.finished_cap = finished_cap
        self.leases = leases
        self.info = info
        self.repeater = repeater or Repeater()
        self.sync_watch = (
            SyncWatch(queue, resync=resync, expect_synced=expect_synced) if watch_sync else None
        )
        self.recovered = 0
        self._last_extend = 0.0

    @property
    def period(self) -> float:
        """Seconds between extensions: a third of a lease, so one late call loses nothing."""
        return self.lease_ms / 3000

    async def step(self) -> float:
        """Extend and heartbeat every `period` (every call while Redis refuses writes: the
        heartbeat is the write that tells when it accepts them again); recover expired
        leases and look at the sync marker every call."""
        refusing = self.repeater.refusal is not None
        if refusing or time.monotonic() - self._last_extend >= self.period:
            await self.extend_leases()
            await self.heartbeat()
            self._last_extend = time.monotonic()
            self.repeater.writes_accepted()
        recovered = await self.queue.recover(
            limit=RECOVER_BATCH, keep_ms=self.keep_ms, cap=self.finished_cap
        )
        if recovered:
            self.recovered += recovered
            log.warning("recovered %d job(s) whose lease expired", recovered)
        if self.sync_watch:
            await self.sync_watch.look()
        return min(1.0, self.period)

    async def extend_leases(self) -> None:
        lost = await self.queue.extend(list(self.leases()), self.lease_ms)
        if not (lost.taken or lost.vanished):
            return
        still_held = {lease.job_id for lease in self.leases()}  # else finished meanwhile
        for job_id in lost.taken:
            if job_id in still_held:
                log.warning("job %s: lease lost (it may run again elsewhere)", job_id)
        vanished = [job_id for job_id in lost.vanished if job_id in still_held]
        if vanished:
            log.warning(
                "%d running job(s) no longer exist in Redis (%s): their results will be dropped",
                len(vanished),
                ", ".join(vanished[:5]) + (", …" if len(vanished) > 5 else ""),
            )

    async def heartbeat(self) -> None:
        await self.queue.heartbeat(
            self.worker_id,
            {**self.info(), "lease_ms": self.lease_ms},
            ttl_ms=max(60_000, 3 * self.lease_ms),
        )

    async def forget(self) -> None:
        """Take this worker off the list of live workers (it is stopping)."""
        if self.sync_watch:
            self.sync_watch.stop()
        await self.queue.forget_worker(self.worker_id)


class SyncWatch:
    """Looks at a queue's sync marker and says (or, with `resync`, mends) its loss."""

    def __init__(
        self,
        queue: Queue,
        *,
        resync: Callable[[], Awaitable[None]] | None = None,
        expect_synced: bool = False,
    ) -> None:
        """`resync` syncs the queue again when its data was lost; `expect_synced` warns
        about a queue that was never synced too."""
        self.queue = queue
        self.resync = resync
        self.expect_synced = expect_synced
        self._seen_synced = False
        self._unsynced_since: float | None = None
        self._last_notice = 0.0
        self._resyncing: asyncio.Task[None] | None = None

    async def look(self) -> None:
        """One look at the marker (the keeper takes one every step)."""
        marker = await self.queue.sync_marker()
        if marker is not None:
            if self._unsynced_since is not None:
                log.warning(
                    "queue %r is synced again (%d resource(s) from %s); resuming",
                    self.queue.name,
                    marker.resources,
                    marker.source,
                )
            self._seen_synced = True
            self._unsynced_since = None
            return
        if not (self._seen_synced or self.expect_synced):
            return  # a queue that no sync manages (a library user's): nothing to expect
        now = time.monotonic()
        first = self._unsynced_since is None
        if first:
            self._unsynced_since = now
        if self.resync is not None:
            if self._resyncing is None and (first or now - self._last_notice >= RESYNC_RETRY):
                self._last_notice = now
                log.warning("%s; syncing the configuration again", await self._lost_data())
                self._resyncing = asyncio.create_task(self._resync(self.resync))
        elif first or now - self._last_notice >= UNSYNCED_WARNING_EVERY:
            self._last_notice = now
            log.warning(
                "%s; nothing runs until `watcher sync` (or `watcher run`) syncs it again",
                await self._lost_data(),
            )

    def stop(self) -> None:
        if self._resyncing:
            self._resyncing.cancel()

    async def _lost_data(self) -> str:
        key = self.queue.key("synced")
        cause = (
            "Redis lost its data (restarted without persistence, or flushed)"
            if self._seen_synced
            else "Redis lost its data, or it was never synced"
        )
        left = (await self.queue.counts())["schedulers"]
        return f"queue {self.queue.name!r}: {key} is missing: {cause}; {left} scheduler(s) left"

    async def _resync(self, resync: Callable[[], Awaitable[None]]) -> None:
        """Run `resync` beside the keeper's steps: a big sync must not hold up the leases."""
        try:
            await resync()
        except Exception as exc:
            log.error(
                "syncing queue %r again failed (%s); retrying in %.0fs",
                self.queue.name,
                exc,
                RESYNC_RETRY,
            )
        finally:
            self._resyncing = None
