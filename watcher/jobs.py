"""A job's life: its states, what moves it between them, and what a crash leaves.

A job is one run of a handler: a scheduler's tick (fire.lua) or a one-off job (add.lua).
Its hash ``job:<id>`` holds its state in the field ``st``; each move is one Lua script,
so a crash (of a worker, or of Redis between scripts) leaves a job in exactly one state:

  state    moved there by                        a crash while in it leaves
  -------  ------------------------------------  --------------------------------------------
  wait     add.lua, fire.lua; take.lua (a due    the id in ``wait``: the next take runs it
           retry); recover.lua (lease expired);
           release.lua (a stopping worker)
  delayed  add.lua (with a delay); finish.lua    the id in ``delayed``: take.lua promotes it
           (a retry with backoff)                to ``wait`` once due
  active   take.lua (leased under a token, with  a lease in ``active``: while its worker lives
           a deadline in ``active``)             extend.lua renews it; once it lapses,
                                                 recover.lua puts the job back in ``wait`` (or
                                                 fails it when its attempts are used up), and
                                                 the old token can no longer finish it
  done     finish.lua                            nothing to redo; the hash expires
  failed   finish.lua (permanent, or retries     nothing to redo; the hash expires; counted
           used up); recover.lua (every attempt  in ``stat:failed`` and the events stream
           lost its lease)

If Redis itself loses its data (restarted without persistence, or flushed), every job is
gone with it: a worker still running one learns so when extend.lua or finish.lua find no hash
(``FinishCode.VANISHED``), and its schedulers come back only with the next sync.

A scheduler's run writes its state back (finish.lua, or ``Job.upsert_scheduler``) fenced by
the run's ``Fence``: a write from an older run, or from before the scheduler's state was
reset, is dropped and counted in ``stat:fenced``.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from watcher.queue import Queue

__all__ = [
    "DEFAULT_ATTEMPTS",
    "DEFAULT_NAME",
    "Fence",
    "FinishCode",
    "Finished",
    "Job",
    "JobInfo",
    "JobState",
    "Lease",
]

log = logging.getLogger("watcher.jobs")

DEFAULT_ATTEMPTS = 3
"""Runs of a job before it fails for good (the first one included)."""
DEFAULT_NAME = "etag"
"""The handler most schedulers run (a resource's default check): like other fields at their
default, a scheduler's hash does not store it."""


class JobState(enum.StrEnum):
    WAIT = "wait"
    DELAYED = "delayed"
    ACTIVE = "active"
    DONE = "done"
    FAILED = "failed"


class FinishCode(enum.IntEnum):
    """What finish.lua did with one finished job."""

    LEASE_LOST = 0
    """The lease had expired and the job was taken again: not the caller's to finish."""
    DONE = 1
    FENCED = 2
    """Done, but its state write-back was fenced off (a newer run, or a reset, came first)."""
    VANISHED = 3
    """The job's hash is gone: Redis lost its data (restarted without persistence, flushed),
    or the lease had expired and the job ran elsewhere and has expired since."""


@dataclass(frozen=True)
class Fence:
    """Identifies one run of a scheduler: its write-back applies only if still current."""

    seq: int
    epoch: int

    def encode(self) -> str:
        return f"{self.seq}:{self.epoch}"


@dataclass(frozen=True)
class Lease:
    """A job a worker holds: the token proves it is still the worker's to extend or finish."""

    job_id: str
    token: str


@dataclass(frozen=True)
class Finished:
    """A finished run on its way to finish.lua (text already encoded for the script)."""

    lease: Lease
    kind: str  # ok | fail | retry
    delay_ms: int = 0
    payload: str = ""
    state: str | None = None
    """The state to write back (JSON), or None to leave it."""
    report: str | None = None
    """The run's report for status (JSON), or None to leave it."""
    pause: str = ""
    """Pause the run's host: milliseconds (its Retry-After), "x" (back off: a 429 without
    one), or "" (no pause)."""
    pause_note: str = ""
    """What the log says when this run starts a pause: "127.0.0.1 for 5s (429 ...)"."""
    hold_ms: int | None = None
    """Hold the scheduler's next run at least this long from now (Outcome.hold_ms)."""
    alert: str = ""
    """The resource's alerts (JSON, finish.lua says what it holds), or "" for none."""


@dataclass
class Job:
    """A leased job, as a handler gets it."""

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
    taken_ms: int | None = None
    """When this attempt was taken (Redis time, ms): with `scheduled_at`, its start lag."""
    failures: int = 0
    """The scheduler's failed runs in a row before this one (a success after them is news)."""

    @property
    def lease(self) -> Lease:
        return Lease(self.id, self.token)

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
        written = await self.queue.write_back(
            self.scheduler_id, self.fence, data=data, state=state, every=every
        )
        if not written:
            log.debug("job %s: write-back to %s fenced off", self.id, self.scheduler_id)
        return written


@dataclass(frozen=True)
class JobInfo:
    """A job as stored (``Queue.job``); times are Redis server time in ms."""

    id: str
    name: str
    state: JobState
    scheduler_id: str | None
    scheduled_at: int | None
    attempt: int
    max_attempts: int
    worker: str | None
    created_ms: int | None
    started_ms: int | None
    finished_ms: int | None
    result: str | None
    error: str | None

    @classmethod
    def from_hash(cls, id: str, h: Mapping[str, str]) -> JobInfo:
        def opt_int(key: str) -> int | None:
            value = h.get(key)
            return int(value) if value else None

        return cls(
            id=id,
            name=h.get("name", ""),
            state=JobState(h["st"]),
            scheduler_id=h.get("sched") or None,
            scheduled_at=opt_int("at"),
            attempt=int(h.get("att") or 0),
            max_attempts=int(h.get("max") or DEFAULT_ATTEMPTS),
            worker=h.get("wk") or None,
            created_ms=opt_int("created"),
            started_ms=opt_int("started"),
            finished_ms=opt_int("finished"),
            result=h.get("res"),
            error=h.get("err"),
        )
