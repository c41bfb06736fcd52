"""The keeper: keeps a worker's leases alive, says the worker is alive, and recovers the
jobs of workers that died (their leases lapsed)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Collection, Mapping
from typing import Any

from watcher.jobs import Lease
from watcher.queue import Queue

__all__ = ["Keeper"]

log = logging.getLogger("watcher.worker")

RECOVER_BATCH = 1000


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
    ) -> None:
        """`leases()` says which leases the worker holds now; `info()` what its heartbeat
        tells status."""
        self.queue = queue
        self.worker_id = worker_id
        self.lease_ms = lease_ms
        self.keep_ms = keep_ms
        self.finished_cap = finished_cap
        self.leases = leases
        self.info = info
        self.recovered = 0
        self._last_extend = 0.0

    @property
    def period(self) -> float:
        """Seconds between extensions: a third of a lease, so one late call loses nothing."""
        return self.lease_ms / 3000

    async def step(self) -> float:
        """Extend and heartbeat every `period`; recover expired leases every call."""
        if time.monotonic() - self._last_extend >= self.period:
            await self.extend_leases()
            await self.heartbeat()
            self._last_extend = time.monotonic()
        recovered = await self.queue.recover(
            limit=RECOVER_BATCH, keep_ms=self.keep_ms, cap=self.finished_cap
        )
        if recovered:
            self.recovered += recovered
            log.warning("recovered %d job(s) whose lease expired", recovered)
        return min(1.0, self.period)

    async def extend_leases(self) -> None:
        lost = await self.queue.extend(list(self.leases()), self.lease_ms)
        if lost:
            still_held = {lease.job_id for lease in self.leases()}
            for job_id in lost:
                if job_id in still_held:  # else it finished meanwhile: not lost
                    log.warning("job %s: lease lost (it may run again elsewhere)", job_id)

    async def heartbeat(self) -> None:
        await self.queue.heartbeat(
            self.worker_id,
            {**self.info(), "lease_ms": self.lease_ms},
            ttl_ms=max(60_000, 3 * self.lease_ms),
        )

    async def forget(self) -> None:
        """Take this worker off the list of live workers (it is stopping)."""
        await self.queue.forget_worker(self.worker_id)
