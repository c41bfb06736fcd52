"""The queue: its whole Redis data model, and one Lua script per atomic step (watcher/lua/).

Every key of queue ``q`` is ``watcher:{q}:<part>``; the hash tag keeps them in one
cluster slot, so every script runs unchanged on Redis Cluster.

  schedulers       ZSET   scheduler id -> next fire time (ms, jitter included)
  scheduler:<id>   HASH   name (check), data (JSON template), state (JSON, written back by
                          runs), spec (Schedule JSON), slot (next slot without jitter),
                          scope (state is reset when it changes), epoch (bumped on reset),
                          rev (bumped by every change), seq (runs started), wseq (the run
                          that last wrote state), owner (a code from `owners`), overlap,
                          limit, attempts, count, skipped, fails (in a row), active (the
                          pending run's job id), report (the last run's outcome, JSON),
                          updated, last_run, last_change, since (the first successful run,
                          for stale alerts before any change), diff (the last change's
                          details, capped), respec (when the schedule last changed:
                          runs fired before it do not hold the next run back) (ms). Fields
                          at their default value (empty, 0, attempts 3, slot = score, name
                          etag) are not stored: an idle scheduler's hash keeps Redis's
                          compact encoding (about 240 bytes with its key)
  owners           HASH   "=" + owner -> code ("#1"), code -> owner, "#" -> the last code:
                          a config file's path is stored once, not in each scheduler
  wait             LIST   job ids ready to run
  marker           LIST   wake-up tokens for idle workers (BLPOP), capped at 64
  active           ZSET   job id -> lease deadline (ms)
  delayed          ZSET   job id -> time due (retries with backoff, delayed jobs)
  orphans          ZSET   job id (or "s:" + scheduler id) -> when a script first found it
                          without its hash (ms): put back (a scheduler: put off a second) for
                          up to a minute, as mid-reshard the hash may be on the other node,
                          then dropped (unscheduled); expires when unused
  job:<id>         HASH   name, data, sched, at (planned fire ms), st, att, max, token, wk,
                          seq, epoch, created, started, finished, res, err (TTL once finished)
  finished         LIST   the newest finished job ids, capped
  id               STRING job id counter
  epochs           STRING state epoch counter (queue-wide: a re-created scheduler never
                          reuses an epoch a run in flight could carry)
  stat:completed / stat:failed   STRING counters
  stat:fenced      STRING state write-backs dropped by fencing (a newer run or a reset was first)
  scheduler_count  STRING schedulers created minus removed: counted without a SCAN
  failing          ZSET   scheduler id -> failures in a row, while failing
  changed          ZSET   scheduler id -> time of its last change (ms), the newest 10,000
                          (status ranks the most telling resources from these two and
                          `schedulers`, without reading every scheduler)
  events           STREAM removed schedulers, skipped ticks, retries, failures, stalled
                          jobs (capped ~10,000)
  changes          STREAM the change history (capped, configurable)
  workers          ZSET   worker id -> last heartbeat (ms);  worker:<id> HASH its details
  hosts            HASH   host budgets from `hosts:` (host, *.domain or default -> "interval_ms
                          burst concurrency"); absent: no budgets (take admits every run)
  host:<h>         HASH   a host's budget state: tat (GCRA), paused (until ms), strikes (429s
                          in a row), held:<reason> counters
  host:<h>:slots   ZSET   job id -> lease deadline: the host's runs in flight
  host:<h>:waiting LIST   runs parked over the host's concurrency, freed one per ended run
  parked           SET    hosts with parked runs (recover.lua frees them when slots lapse)
  hostnames        SET    every host with budget state (host:<h>...): status lists them
  outbox:<notifier>, deadlines, outbox:failed, delivery:<id>, deliveries, delivery_id:
                          the notifier outbox (watcher/outbox.py)
  synced           HASH   at (ms), source (the config file), resources: written by every
                          sync; a worker that finds it gone knows Redis lost the queue's
                          data (restarted without persistence, or flushed)

Time is Redis server time (TIME) everywhere, so workers with skewed clocks agree: on a
cluster, the clock of the node that holds the queue (now.lua), the one the scripts read.

Every Redis command of the library goes through this class (the outbox's through its
`Outbox`, in watcher/outbox.py); a job's states and what moves
it between them are described in watcher/jobs.py, and each script's keys in its header.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
import traceback
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, cast

import redis.asyncio as aioredis
from redis.exceptions import (
    ClusterDownError,
    ClusterError,
    OutOfMemoryError,
    ReadOnlyError,
    ResponseError,
    SlotNotCoveredError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from watcher.change import Change
from watcher.hosts import Budget
from watcher.jobs import (
    DEFAULT_ATTEMPTS,
    DEFAULT_NAME,
    Fence,
    FinishCode,
    Finished,
    Job,
    JobInfo,
    Lease,
)
from watcher.outbox import Outbox
from watcher.schedule import Schedule, ScheduleError
from watcher.scripts import load_scripts

__all__ = [
    "KEEP",
    "UNAVAILABLE",
    "Due",
    "DueScheduler",
    "Fence",
    "Fire",
    "LostLeases",
    "Queue",
    "QueueError",
    "RedisInTransit",
    "Refusal",
    "SchedulerInfo",
    "SchedulerSpec",
    "SyncMarker",
    "check_id",
    "dump_json",
    "refusal",
    "unavailable",
]

ID_PATTERN = re.compile(r"^[A-Za-z0-9_.:@/-]{1,200}$")
QUEUE_PATTERN = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
KEEP = "~"  # "not given" in script arguments
UPSERT_CHUNK = 1000
SOCKET_TIMEOUT = 15.0  # seconds: far above any call's time, far below "hung"
READ_CHUNK = 2000  # schedulers read per script call: about a millisecond of Redis time
FIELDS_PER_TAKEN_JOB = 12  # take.lua's reply
PAUSE_STARTED = 8  # finish.lua's flag on a job's code
Held = dict[str, dict[str, int]]
"""Runs held back for their host's budget: {host: {"concurrency" | "rate" | "paused": n}}."""
FIELDS_PER_DUE = 4  # due.lua's reply

UNAVAILABLE: tuple[type[BaseException], ...] = (
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
"""What a call raises while Redis cannot be reached: ride it out, it is not a bug."""

_SLOT_MOVING = "Script attempted to access a non local key in a cluster node"
"""Redis Cluster's answer to a script that reads a key its node no longer serves, as each
node learns in turn that a resharded slot has moved (its keys are named from data, so the
client could not route by them): transient, like a slot being moved."""


class RedisInTransit(RedisConnectionError):
    """A script call that met a cluster slot moving, or redis-py's connection reset under
    it (see `unavailable`): raised by `Queue._call` in their place, so that everything that
    rides out UNAVAILABLE rides these out too."""


def unavailable(exc: BaseException) -> bool:
    """Whether `exc` says Redis cannot answer now (UNAVAILABLE, a cluster slot still moving,
    or redis-py's connection reset under a call): a call to ride out, not a bug."""
    if isinstance(exc, UNAVAILABLE):
        return True
    if isinstance(exc, ResponseError):
        return str(exc).startswith(_SLOT_MOVING)
    return isinstance(exc, AttributeError | TypeError) and _connection_reset_in_redis_py(exc)


def _connection_reset_in_redis_py(exc: BaseException) -> bool:
    """redis-py's asyncio client may find a connection's reader or writer gone (None) when
    another call reset it, as a cluster's topology changes (seen here while a slot moved:
    "'NoneType' object has no attribute 'writelines'"; redis-py issues #3546, #3835)."""
    if "'NoneType' object" not in str(exc):
        return False
    inside = f"{os.sep}redis{os.sep}asyncio{os.sep}"
    frames = traceback.walk_tb(exc.__traceback__)  # frames only: no source lines read
    return any(inside in frame.f_code.co_filename for frame, _ in frames)


DETAILS_KEPT = 4096
"""Characters of a change's details (its diff) kept on its scheduler, for `watcher status`;
the history keeps them whole."""

SCRIPTS = (
    "upsert",
    "remove",
    "due",
    "fire",
    "add",
    "take",
    "finish",
    "extend",
    "recover",
    "release",
    "change",
    "outbox_take",
    "outbox_done",
    "now",
    "fields",
    "schedulers",
)


class QueueError(ValueError):
    """Bad input to the queue API. Raised before anything is written."""


@dataclass(frozen=True)
class Refusal:
    """Why Redis refuses writes now: a server-side state to ride out like an outage."""

    code: str
    """OOM (maxmemory reached under noeviction), READONLY (a replica), MISCONF (it cannot
    persist), or NOREPLICAS (too few replicas for min-replicas-to-write)."""
    message: str
    """The server's first sentence, e.g. "command not allowed when used memory > 'maxmemory'"."""

    def __str__(self) -> str:
        return f"{self.code} {self.message}"


_REFUSAL_PREFIXES = ("MISCONF", "NOREPLICAS")
"""Refusals redis-py raises as a plain ResponseError, recognised by the server's error code."""
_PIPELINE_ERROR = re.compile(r"of pipeline caused error: \((['\"])(?P<text>.*)\1,\)$", re.DOTALL)


def refusal(exc: BaseException) -> Refusal | None:
    """The refusal `exc` reports, or None when it is not Redis refusing writes (a bug, a
    script error, Redis unreachable: see UNAVAILABLE)."""
    if not isinstance(exc, ResponseError):
        return None
    text = str(exc)
    if wrapped := _PIPELINE_ERROR.search(text):  # redis-py names the refused MULTI command
        text = wrapped.group("text")
    text = text.split(" script: ")[0]  # a refused write inside a script names the script
    if isinstance(exc, OutOfMemoryError):
        code = "OOM"
    elif isinstance(exc, ReadOnlyError):
        code = "READONLY"
    else:
        code, _, text = text.partition(" ")
        if code not in _REFUSAL_PREFIXES:
            return None
    return Refusal(code, text.split(". ")[0].rstrip("."))


@dataclass(frozen=True)
class HostState:
    """One host's budget at work (`Queue.host_states`)."""

    host: str
    in_flight: int
    parked: int
    """Runs waiting for one of its concurrency slots."""
    paused_until_ms: int | None
    held: dict[str, int]
    """Runs held back so far, by reason: concurrency, rate, paused."""


@dataclass(frozen=True)
class SyncMarker:
    """The last sync of a queue (its `synced` hash)."""

    at_ms: int
    source: str
    resources: int


@dataclass(frozen=True)
class LostLeases:
    """Leases `Queue.extend` could not extend."""

    taken: list[str]
    """Job ids whose lease lapsed and that were taken again (or finished) elsewhere."""
    vanished: list[str]
    """Job ids whose hash is gone: Redis lost its data, or the job was rerun elsewhere and
    has since expired."""


@dataclass
class SchedulerSpec:
    id: str
    name: str
    data: Mapping[str, Any] = field(default_factory=dict)
    every: float | None = None
    cron: str | None = None
    tz: str | None = None
    jitter: float = 0.0
    start: float | None = None
    end: float | None = None
    limit: int = 0
    attempts: int = DEFAULT_ATTEMPTS
    overlap: bool = False
    owner: str = ""
    scope: str | None = None
    """State is kept while the scope stays the same; a new scope resets it (fencing old runs)."""
    state: Mapping[str, Any] | None = None
    immediately: bool = False
    """When created, run once right away (then on the schedule's slots)."""


@dataclass
class SchedulerInfo:
    id: str
    name: str
    data: dict[str, Any]
    state: dict[str, Any]
    schedule: Schedule
    next_fire_ms: int | None
    rev: int
    epoch: int
    count: int
    skipped: int
    fails: int
    attempts: int
    """Attempts a run gets before it gives up."""
    owner: str
    scope: str
    overlap: bool
    active_job: str | None
    report: dict[str, Any] | None
    updated_ms: int | None
    """When a sync or a write-back last changed it (None: not since it was created)."""
    last_run_ms: int | None
    last_change_ms: int | None
    last_change_details: str | None = None
    """The last change's details (its diff), capped (DETAILS_KEPT); None without any."""

    @classmethod
    def from_hash(cls, id: str, h: Mapping[str, str], score: float | None) -> SchedulerInfo:
        def opt_int(key: str) -> int | None:
            value = h.get(key)
            return int(value) if value else None

        return cls(
            id=id,
            name=h.get("name") or DEFAULT_NAME,
            data=json.loads(h["data"]),
            state=json.loads(h.get("state") or "{}"),
            schedule=Schedule.decode(h["spec"]),
            next_fire_ms=None if score is None else int(score),
            rev=int(h.get("rev") or 0),
            epoch=int(h["epoch"]),
            count=int(h.get("count", 0)),
            skipped=int(h.get("skipped", 0)),
            fails=int(h.get("fails", 0)),
            attempts=int(h.get("attempts") or DEFAULT_ATTEMPTS),
            owner=h.get("owner", ""),
            scope=h.get("scope", ""),
            overlap=h.get("overlap") == "1",
            active_job=h.get("active") or None,
            report=json.loads(h["report"]) if h.get("report") else None,
            updated_ms=opt_int("updated"),
            last_run_ms=opt_int("last_run"),
            last_change_ms=opt_int("last_change"),
            last_change_details=h.get("diff") or None,
        )


@dataclass(frozen=True)
class _CheckedSpec:
    """A spec that passed every check, with what the checks computed: its row is encoded
    later, chunk by chunk, while Redis writes the previous chunk."""

    spec: SchedulerSpec
    schedule: Schedule
    slot: int
    data: str
    state: str

    def row(self, now: int) -> _UpsertRow:
        spec, schedule = self.spec, self.schedule
        return _UpsertRow(
            id=spec.id,
            name=spec.name,
            data=self.data,
            spec=schedule.encode(),
            next_ms=str(schedule.fire_time(self.slot)),
            slot=str(self.slot),
            scope=KEEP if spec.scope is None else spec.scope,
            owner=spec.owner,
            overlap=str(int(spec.overlap)),
            limit=str(spec.limit),
            attempts=str(spec.attempts),
            state=self.state,
            first=str(now) if spec.immediately else "",
        )


@dataclass(frozen=True)
class _UpsertRow:
    """One row of upsert.lua's input; KEEP leaves a field as it is."""

    id: str
    name: str = KEEP
    data: str = KEEP
    spec: str = KEEP
    next_ms: str = KEEP
    slot: str = KEEP
    scope: str = KEEP
    owner: str = KEEP
    overlap: str = KEEP
    limit: str = KEEP
    attempts: str = KEEP
    fence: str = ""
    state: str = KEEP
    first: str = ""

    def encode(self) -> list[str]:
        return [
            self.id,
            self.name,
            self.data,
            self.spec,
            self.next_ms,
            self.slot,
            self.scope,
            self.owner,
            self.overlap,
            self.limit,
            self.attempts,
            self.fence,
            self.state,
            self.first,
        ]


@dataclass(frozen=True)
class DueScheduler:
    """A scheduler due to fire, with what computing its next fire time needs."""

    id: str
    score_ms: int
    schedule: Schedule
    slot_ms: int
    """The planned slot (the score without jitter)."""


@dataclass(frozen=True)
class Due:
    now_ms: int
    soonest_ms: int | None
    """The earliest fire time among those not returned (None: nothing else is scheduled)."""
    schedulers: list[DueScheduler]


@dataclass(frozen=True)
class Fire:
    """Fire one scheduler if its score is still `expected_ms` (a compare-and-set), and
    move it to `next_ms` (None: its schedule has ended)."""

    id: str
    expected_ms: int
    next_ms: int | None
    slot_ms: int
    run: bool = True
    """False: only move it (an overdue run spread over its interval), start no run."""


def check_id(kind: str, value: object) -> str:
    if not isinstance(value, str) or not ID_PATTERN.fullmatch(value):
        raise QueueError(
            f"invalid {kind} {value!r}: use 1-200 characters from A-Z a-z 0-9 _ . : @ / -"
        )
    return value


_CANONICAL_JSON = json.JSONEncoder(separators=(",", ":"), sort_keys=True, allow_nan=False)
"""One encoder for every row: json.dumps with options builds one per call."""


def dump_json(what: str, value: object) -> str:
    try:
        return _CANONICAL_JSON.encode(value)
    except (TypeError, ValueError) as exc:
        raise QueueError(f"{what} is not JSON-serialisable: {exc}") from None


class Queue:
    def __init__(
        self,
        redis: aioredis.Redis | aioredis.RedisCluster,
        name: str = "watcher",
        *,
        changes_max: int = 10_000,
    ):
        if not QUEUE_PATTERN.fullmatch(name):
            raise QueueError(f"invalid queue name {name!r}: use 1-64 of A-Z a-z 0-9 _ . -")
        self.redis = redis
        self.name = name
        self.url: str | None = None
        """The URL it was opened with (`from_url`, `connect`), for other processes."""
        self.prefix = f"watcher:{{{name}}}:"
        self.changes_max = changes_max
        self._scripts = load_scripts(redis, self.prefix, SCRIPTS)
        self.outbox = Outbox(self)
        """The notifier outbox (watcher/outbox.py: its keys are this queue's too)."""

    @classmethod
    def from_url(
        cls, url: str, name: str = "watcher", *, cluster: bool = False, **kwargs: Any
    ) -> Queue:
        """A queue on the Redis at `url`; `cluster=True` for a Redis Cluster (any node's URL)."""
        client_class = aioredis.RedisCluster if cluster else aioredis.Redis
        client = client_class.from_url(
            url,
            decode_responses=True,
            health_check_interval=0,
            socket_keepalive=True,
            # No call waits forever on a peer that stopped answering: it fails as an outage
            # (the workers back off and retry). The longest a healthy call blocks is 1 s.
            socket_timeout=SOCKET_TIMEOUT,
            socket_connect_timeout=SOCKET_TIMEOUT,
        )
        queue = cls(client, name, **kwargs)
        queue.url = url
        return queue

    @classmethod
    async def connect(
        cls, url: str, name: str = "watcher", *, cluster: bool | None = None, **kwargs: Any
    ) -> Queue:
        """Like `from_url`, checked reachable; unless `cluster` says, asks the server whether
        it is a cluster node (INFO cluster), so one URL works for either."""
        queue = cls.from_url(url, name, cluster=bool(cluster), **kwargs)
        try:
            if cluster is None and (await queue.redis.info("cluster")).get("cluster_enabled"):
                await queue.close()
                queue = cls.from_url(url, name, cluster=True, **kwargs)
            await queue.redis.ping()
        except BaseException:
            await queue.close()
            raise
        return queue

    def key(self, part: str) -> str:
        return self.prefix + part

    async def _call(self, script: str, args: Sequence[Any]) -> Any:
        try:
            return await self._scripts[script](self.prefix, args)
        except (ResponseError, AttributeError, TypeError) as exc:
            if unavailable(exc):
                raise RedisInTransit(f"{type(exc).__name__}: {exc}") from exc
            raise

    async def close(self) -> None:
        await self.redis.aclose()

    async def now_ms(self) -> int:
        """Server time (ms) of the node holding the queue: a bare TIME has no key, and a
        cluster client would send it to any node."""
        seconds, micros = await self._call("now", [])
        return int(seconds) * 1000 + int(micros) // 1000

    # -- schedulers ---------------------------------------------------------------------

    async def upsert_scheduler(self, id: str, *, name: str, **fields: Any) -> str:
        """Create or update one scheduler; returns 'created', 'updated' or 'unchanged'."""
        return (await self.upsert_schedulers([SchedulerSpec(id=id, name=name, **fields)]))[0]

    async def upsert_schedulers(
        self, specs: Iterable[SchedulerSpec], progress: Callable[[int], None] | None = None
    ) -> list[str]:
        """Create or update many schedulers: all are validated before anything is written."""
        now = await self.now_ms()
        checked = [self._checked(spec, now) for spec in specs]
        results: list[str] = []
        in_flight: asyncio.Task[Any] | None = None
        try:
            for start in range(0, len(checked) + UPSERT_CHUNK, UPSERT_CHUNK):
                # The next chunk is encoded while Redis runs this one.
                chunk = checked[start : start + UPSERT_CHUNK]
                packed = _pack([row.row(now).encode() for row in chunk]) if chunk else None
                if in_flight is not None:
                    done = list(await in_flight)
                    results += done
                    if progress:
                        progress(len(done))
                in_flight = None
                if packed is not None:
                    in_flight = asyncio.ensure_future(self._call("upsert", [packed]))
                    await asyncio.sleep(0)  # sent before the next chunk is encoded
        finally:
            if in_flight is not None and not in_flight.done():
                in_flight.cancel()
        return results

    async def _upsert(self, rows: list[_UpsertRow]) -> list[str]:
        return list(await self._call("upsert", [_pack([row.encode() for row in rows])]))

    @staticmethod
    def _checked(spec: SchedulerSpec, now: int) -> _CheckedSpec:
        check_id("scheduler id", spec.id)
        if not spec.name or not isinstance(spec.name, str):
            raise QueueError(f"scheduler {spec.id!r}: a handler name is required")
        if not isinstance(spec.limit, int) or spec.limit < 0:
            raise QueueError(f"scheduler {spec.id!r}: limit must be an integer >= 0")
        if not isinstance(spec.attempts, int) or spec.attempts < 1:
            raise QueueError(f"scheduler {spec.id!r}: attempts must be an integer >= 1")
        try:
            schedule = Schedule.build(
                every=spec.every,
                cron=spec.cron,
                tz=spec.tz,
                jitter=spec.jitter,
                start=spec.start,
                end=spec.end,
            )
        except ScheduleError as exc:
            raise QueueError(f"scheduler {spec.id!r}: {exc}") from None
        slot = schedule.next_slot(spec.id, now)
        if slot is None:
            raise QueueError(f"scheduler {spec.id!r}: its schedule has already ended")
        data = dump_json(f"scheduler {spec.id!r} data", dict(spec.data))
        state = KEEP
        if spec.state is not None:
            state = dump_json(f"scheduler {spec.id!r} state", spec.state)
        return _CheckedSpec(spec, schedule, slot, data, state)

    async def write_back(
        self,
        id: str,
        fence: Fence,
        *,
        data: Mapping[str, Any] | None = None,
        state: Mapping[str, Any] | None = None,
        every: float | None = None,
    ) -> bool:
        """A run upserting its own scheduler. False when fenced off (a newer run wrote first,
        the scheduler's state was reset since this run fired) or the scheduler is gone."""
        row = _UpsertRow(
            id=id,
            fence=fence.encode(),
            data=KEEP if data is None else dump_json("data", dict(data)),
            state=KEEP if state is None else dump_json("state", dict(state)),
        )
        if every is not None:
            current = await self.redis.hget(self.key(f"scheduler:{id}"), "spec")
            old = Schedule.decode(cast(str, current)) if current else Schedule()
            try:  # a new interval; jitter (where it still fits), start and end are kept
                schedule = Schedule.build(
                    every=every,
                    jitter=old.jitter_ms / 1000 if old.jitter_ms < every * 1000 else 0.0,
                    start=None if old.start_ms is None else old.start_ms / 1000,
                    end=None if old.end_ms is None else old.end_ms / 1000,
                )
            except ScheduleError as exc:
                raise QueueError(f"scheduler {id!r}: {exc}") from None
            slot = schedule.next_slot(id, await self.now_ms()) or 0
            row = replace(
                row, spec=schedule.encode(), next_ms=str(schedule.fire_time(slot)), slot=str(slot)
            )
        return bool((await self._upsert([row]))[0] == "updated")

    async def remove_schedulers(self, ids: Iterable[str]) -> int:
        id_list = [check_id("scheduler id", i) for i in ids]
        if not id_list:
            return 0
        return int(await self._call("remove", id_list))

    async def remove_scheduler(self, id: str) -> bool:
        return await self.remove_schedulers([id]) == 1

    async def get_scheduler(self, id: str) -> SchedulerInfo | None:
        check_id("scheduler id", id)
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.hgetall(self.key(f"scheduler:{id}"))
            pipe.zscore(self.key("schedulers"), id)
            pipe.hgetall(self.key("owners"))
            h, score, owners = await pipe.execute()
        if not h:
            return None
        return SchedulerInfo.from_hash(id, _owner_named(h, _owner_codes(owners)), score)

    async def scheduler_ids(self) -> list[str]:
        """Every scheduler id, including ended ones (not in the `schedulers` ZSET)."""
        prefix = self.key("scheduler:")
        where: dict[str, Any] = {}
        if isinstance(self.redis, aioredis.RedisCluster):  # one slot: scan its node only
            await self.redis.initialize()
            where["target_nodes"] = self.redis.get_node_from_key(prefix)
        keys = self.redis.scan_iter(f"{prefix}*", count=10_000, **where)
        return sorted([key[len(prefix) :] async for key in keys])

    async def scheduler_fields(
        self, fields: Sequence[str], ids: Sequence[str] | None = None
    ) -> dict[str, list[str | None]]:
        """Selected hash fields of many schedulers, keyed by id (a scheduler gone is left
        out); a name not stored is the default one, an owner is named, not coded."""
        ids = await self.scheduler_ids() if ids is None else list(ids)
        found: dict[str, list[str | None]] = {}
        asked = json.dumps(["epoch", *fields])  # every scheduler has an epoch
        width = len(fields) + 1
        for start in range(0, len(ids), READ_CHUNK):
            chunk = ids[start : start + READ_CHUNK]
            reply = await self._call("fields", [asked, json.dumps(chunk)])
            for at, id in zip(range(0, len(reply), width), chunk, strict=True):
                if reply[at] is not None:
                    found[id] = reply[at + 1 : at + width]
        if "name" in fields:
            column = fields.index("name")
            for row in found.values():
                row[column] = row[column] or DEFAULT_NAME
        if "owner" in fields and found:
            column, names = fields.index("owner"), await self._owner_names()
            for row in found.values():
                row[column] = names.get(row[column] or "", row[column])
        return found

    async def list_schedulers(self, ids: Sequence[str] | None = None) -> list[SchedulerInfo]:
        ids = await self.scheduler_ids() if ids is None else list(ids)
        found: list[SchedulerInfo] = []
        names = await self._owner_names()
        for start in range(0, len(ids), READ_CHUNK):
            chunk = ids[start : start + READ_CHUNK]
            reply = await self._call("schedulers", [json.dumps(chunk)])
            for id, (flat, score) in zip(chunk, _rows(reply, 2), strict=True):
                if flat:
                    h = dict(zip(flat[::2], flat[1::2], strict=True))
                    found.append(SchedulerInfo.from_hash(id, _owner_named(h, names), score))
        return found

    async def _owner_names(self) -> dict[str, str]:
        """Each owner code ("#1") -> the owner it stands for (see upsert.lua)."""
        return _owner_codes(cast(dict[str, str], await self.redis.hgetall(self.key("owners"))))

    # -- ticks: firing due schedulers ---------------------------------------------------

    async def due(self, limit: int) -> Due:
        """Up to `limit` schedulers due now (by Redis time)."""
        reply = await self._call("due", [limit])
        due = [
            DueScheduler(
                id=sid,
                score_ms=int(float(score)),
                schedule=Schedule.decode(spec),
                slot_ms=int(slot) if slot else int(float(score)),
            )
            for sid, score, spec, slot in _rows(reply[2:], FIELDS_PER_DUE)
        ]
        soonest = int(float(reply[1])) if reply[1] != "" else None
        return Due(now_ms=int(reply[0]), soonest_ms=soonest, schedulers=due)

    async def fire(self, fires: Sequence[Fire]) -> tuple[int, int]:
        """Fire what is still due (see `Fire`); returns (fired, skipped as overlapping)."""
        if not fires:
            return 0, 0
        rows = [
            [
                f.id,
                str(f.expected_ms),
                "" if f.next_ms is None else str(f.next_ms),
                str(f.slot_ms),
                "1" if f.run else "0",
            ]
            for f in fires
        ]
        fired, skipped = await self._call("fire", [_pack(rows)])
        return int(fired), int(skipped)

    # -- jobs ---------------------------------------------------------------------------

    async def add_job(
        self,
        name: str,
        data: Mapping[str, Any] | None = None,
        *,
        delay: float = 0.0,
        attempts: int = DEFAULT_ATTEMPTS,
    ) -> str:
        return (await self.add_jobs(name, [data or {}], delay=delay, attempts=attempts))[0]

    async def add_jobs(
        self,
        name: str,
        items: Sequence[Mapping[str, Any]],
        *,
        delay: float = 0.0,
        attempts: int = DEFAULT_ATTEMPTS,
        chunk: int = 1000,
    ) -> list[str]:
        if not name or not isinstance(name, str):
            raise QueueError("a job needs a handler name")
        if delay < 0:
            raise QueueError(f"delay must be >= 0, got {delay!r}")
        if attempts < 1:
            raise QueueError(f"attempts must be >= 1, got {attempts!r}")
        delay_ms, most = str(round(delay * 1000)), str(attempts)
        rows = [[name, dump_json("job data", dict(item)), delay_ms, most] for item in items]
        ids: list[str] = []
        for start in range(0, len(rows), chunk):
            ids += await self._call("add", [_pack(rows[start : start + chunk])])
        return ids

    async def job(self, id: str) -> JobInfo | None:
        """A job as stored, or None once it has expired (or never existed)."""
        h = cast(dict[str, str], await self.redis.hgetall(self.key(f"job:{id}")))
        return JobInfo.from_hash(id, h) if h else None

    async def take(self, count: int, *, lease_ms: int, worker: str, token_prefix: str) -> list[Job]:
        """Lease up to `count` jobs for `worker`: a scheduler's run gets the scheduler's
        latest data and state, and the fence of its write-back."""
        jobs, _ = await self.take_counting_held(
            count, lease_ms=lease_ms, worker=worker, token_prefix=token_prefix
        )
        return jobs

    async def take_counting_held(
        self, count: int, *, lease_ms: int, worker: str, token_prefix: str
    ) -> tuple[list[Job], Held]:
        """`take`, and the runs it held back for their hosts' budgets: {host: {reason: n}}."""
        reply = await self._call("take", [count, lease_ms, worker, token_prefix])
        taken_at = int(reply[0])
        held: Held = json.loads(reply[1]) if reply[1] else {}
        jobs = []
        for jid, token, name, data, state, sched, at, att, mx, seq, epoch, fails in _rows(
            reply[2:], FIELDS_PER_TAKEN_JOB
        ):
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
                    queue=self,
                    taken_ms=taken_at,
                    failures=int(fails or 0),
                )
            )
        return jobs, held

    async def finish(
        self, finished: Sequence[Finished], *, keep_ms: int, keep_runs_ms: int, cap: int
    ) -> list[FinishCode]:
        """`finish_pausing`, for callers that do not tell host pauses."""
        codes, _ = await self.finish_pausing(
            finished, keep_ms=keep_ms, keep_runs_ms=keep_runs_ms, cap=cap
        )
        return codes

    async def finish_pausing(
        self, finished: Sequence[Finished], *, keep_ms: int, keep_runs_ms: int, cap: int
    ) -> tuple[list[FinishCode], list[Finished]]:
        """Complete, fail or retry jobs whose leases the caller holds; a scheduler run's
        state is written back fenced. Finished jobs are kept `keep_ms` (a scheduler's
        successful run: `keep_runs_ms`), and the newest `cap` are listed. Also returns the
        finished runs that started a pause of their host (it was not paused before)."""
        rows = [
            [
                f.lease.job_id,
                f.lease.token,
                f.kind,
                str(f.delay_ms),
                f.payload,
                KEEP if f.state is None else f.state,
                KEEP if f.report is None else f.report,
                f.pause,
                "" if f.hold_ms is None else str(f.hold_ms),
                f.alert,
            ]
            for f in finished
        ]
        reply = await self._call("finish", [keep_ms, keep_runs_ms, cap, _pack(rows)])
        codes = [FinishCode(int(code) & ~PAUSE_STARTED) for code in reply]
        paused = [f for f, code in zip(finished, reply, strict=True) if int(code) & PAUSE_STARTED]
        return codes, paused

    async def extend(self, leases: Sequence[Lease], lease_ms: int) -> LostLeases:
        """Extend leases the caller still holds; returns those it lost."""
        if not leases:
            return LostLeases([], [])
        args: list[Any] = [lease_ms]
        for lease in leases:
            args += [lease.job_id, lease.token]
        taken, vanished = await self._call("extend", args)
        return LostLeases(list(taken), list(vanished))

    async def release(self, leases: Sequence[Lease]) -> int:
        """Give unfinished jobs back to the queue, their attempt undone; returns how many."""
        if not leases:
            return 0
        args: list[Any] = []
        for lease in leases:
            args += [lease.job_id, lease.token]
        return int(await self._call("release", args))

    async def recover(self, *, limit: int, keep_ms: int, cap: int) -> int:
        """Requeue (or fail, when out of attempts) up to `limit` jobs whose lease expired."""
        return int(await self._call("recover", [limit, keep_ms, cap]))

    async def wait_for_work(self, max_wait: float) -> None:
        """Block until a job may be ready: a wake-up marker, the next delayed job's due
        time, or `max_wait` seconds."""
        timeout = max_wait
        head = await self.redis.zrange(self.key("delayed"), 0, 0, withscores=True)
        if head:
            due_ms = float(head[0][1])
            timeout = min(timeout, max(0.0, (due_ms - await self.now_ms()) / 1000))
        if timeout > 0:
            await self.redis.blpop([self.key("marker")], timeout)

    async def telling_ids(self, limit: int) -> list[str]:
        """Up to `limit` scheduler ids, the most telling first: the most failing, then the
        most recently changed, then the next to run."""
        if limit <= 0:
            return []
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.zrevrange(self.key("failing"), 0, limit - 1)
            pipe.zrevrange(self.key("changed"), 0, limit - 1)
            pipe.zrange(self.key("schedulers"), 0, limit - 1)
            replies = await pipe.execute()
        chosen = dict.fromkeys(id for reply in replies for id in reply)
        return list(chosen)[:limit]

    async def scheduler_count(self) -> int:
        """Every scheduler, ended ones included (schedulers created before the count was
        kept are counted from `schedulers`, the scheduled ones)."""
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.get(self.key("scheduler_count"))
            pipe.zcard(self.key("schedulers"))
            counted, scheduled = await pipe.execute()
        return max(int(counted or 0), int(scheduled))

    async def counts(self) -> dict[str, int]:
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.llen(self.key("wait"))
            pipe.zcard(self.key("active"))
            pipe.zcard(self.key("delayed"))
            pipe.get(self.key("stat:completed"))
            pipe.get(self.key("stat:failed"))
            pipe.get(self.key("stat:fenced"))
            pipe.zcard(self.key("schedulers"))
            pipe.zcard(self.key("failing"))
            replies = await pipe.execute()
        names = (
            "wait",
            "active",
            "delayed",
            "completed",
            "failed",
            "fenced",
            "schedulers",
            "failing",
        )
        return {name: int(value or 0) for name, value in zip(names, replies, strict=True)}

    async def events(self, count: int = 100) -> list[dict[str, str]]:
        """The newest events first."""
        entries = _entries(await self.redis.xrevrange(self.key("events"), count=count))
        return [{"id": entry_id, **fields} for entry_id, fields in entries]

    # -- change history -----------------------------------------------------------------

    async def record_change(
        self,
        scheduler_id: str,
        fence: Fence,
        change: Change,
        *,
        notify: Sequence[tuple[str, int]] = (),
        alert: str = "",
    ) -> str | None:
        """Append to the changes stream unless the run is fenced off, with one delivery per
        notifier in `notify` ((name, ms to deliver within)) in the outbox; `alert` (JSON)
        tells a resource's alert notifiers it changes again after being stale. The entry id,
        or None when fenced off or the same change (old and new) was the last recorded."""
        args = [
            scheduler_id,
            fence.seq,
            fence.epoch,
            self.changes_max,
            change.resource,
            change.to_json(),
            change_key(change),
            json.dumps([[name, within] for name, within in notify]),
            alert,
            (change.details or "")[:DETAILS_KEPT],
        ]
        reply = await self._call("change", args)
        if reply is None or not int(reply[1]):
            return None
        return str(reply[0])

    async def changes(self, resource: str | None = None, limit: int = 20) -> list[Change]:
        """The newest changes first, optionally of one resource."""
        return [change for change, _ in await self.change_entries(resource, limit)]

    async def change_entries(
        self, resource: str | None = None, limit: int = 20
    ) -> list[tuple[Change, list[str]]]:
        """The newest changes first, each with the notifiers it went into the outbox for (its
        deliveries are "<change id>/<notifier>": `outbox.states`)."""
        found: list[tuple[Change, list[str]]] = []
        end = "+"
        while len(found) < limit:
            page = _entries(await self.redis.xrevrange(self.key("changes"), max=end, count=500))
            for entry_id, fields in page:
                if resource is None or fields.get("resource") == resource:
                    change = Change.from_dict({**json.loads(fields["change"]), "id": entry_id})
                    found.append((change, json.loads(fields.get("notify") or "[]")))
                    if len(found) == limit:
                        break
            if len(page) < 500:
                break
            end = "(" + page[-1][0]
        return found

    # -- workers ------------------------------------------------------------------------

    async def heartbeat(self, worker: str, info: Mapping[str, Any], ttl_ms: int) -> int:
        """Say `worker` is alive (with `info` for status); returns the server time (ms)."""
        now = await self.now_ms()
        key = self.key(f"worker:{worker}")
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.zadd(self.key("workers"), {worker: now})
            pipe.zremrangebyscore(self.key("workers"), "-inf", now - 3_600_000)
            pipe.hset(key, mapping={name: str(value) for name, value in info.items()})
            pipe.hset(key, "seen", now)
            pipe.pexpire(key, ttl_ms)
            await pipe.execute()
        return now

    async def forget_worker(self, worker: str) -> None:
        await self.redis.zrem(self.key("workers"), worker)

    async def workers(self, alive_within_ms: int = 30_000) -> list[dict[str, str]]:
        now = await self.now_ms()
        found = await self.redis.zrangebyscore(self.key("workers"), now - alive_within_ms, "+inf")
        ids = cast(list[str], found)
        async with self.redis.pipeline(transaction=False) as pipe:
            for wid in ids:
                pipe.hgetall(self.key(f"worker:{wid}"))
            details = await pipe.execute()
        return [{"id": wid, **info} for wid, info in zip(ids, details, strict=True)]

    # -- host budgets ----------------------------------------------------------------------

    async def set_budgets(self, budgets: Mapping[str, Budget]) -> bool:
        """Replace the host budgets (watcher/hosts.py); True when they changed."""
        encoded = {key: budget.encode() for key, budget in budgets.items()}
        if await self.budgets_encoded() == encoded:
            return False
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.delete(self.key("hosts"))
            if encoded:
                pipe.hset(self.key("hosts"), mapping={k: v for k, v in encoded.items()})
            await pipe.execute()
        return True

    async def budgets_encoded(self) -> dict[str, str]:
        return cast(dict[str, str], await self.redis.hgetall(self.key("hosts")))

    async def host_states(self, hosts: Sequence[str]) -> dict[str, HostState]:
        """What each host's budget is doing now: runs in flight and parked, pause, holds."""
        now = await self.now_ms()
        async with self.redis.pipeline(transaction=False) as pipe:
            for host in hosts:
                key = self.key(f"host:{host}")
                pipe.hgetall(key)
                pipe.zcount(f"{key}:slots", now, "+inf")
                pipe.llen(f"{key}:waiting")
            replies = await pipe.execute()
        states = {}
        for index, host in enumerate(hosts):
            h, in_flight, parked = replies[3 * index : 3 * index + 3]
            paused = int(h.get("paused") or 0)
            states[host] = HostState(
                host=host,
                in_flight=int(in_flight),
                parked=int(parked),
                paused_until_ms=paused if paused > now else None,
                held={k[5:]: int(v) for k, v in h.items() if k.startswith("held:")},
            )
        return states

    async def host_names(self) -> list[str]:
        """Every host with budget state in this queue (named by the scripts that write it:
        no SCAN: the SCAN alone took 0.7 s in a Redis of a million keys)."""
        return sorted(cast(set[str], await self.redis.smembers(self.key("hostnames"))))

    # -- the other queues of this Redis ------------------------------------------------

    async def queue_names(self) -> list[str]:
        """Every queue in this Redis that holds schedulers or was synced (a SCAN: for the
        commands that survey a Redis, not for the hot path)."""
        names: set[str] = set()
        for part in ("scheduler_count", "synced"):
            async for key in self.redis.scan_iter(f"watcher:{{*}}:{part}", count=10_000):
                names.add(key[len("watcher:{") : -len(f"}}:{part}")])
        return sorted(name for name in names if QUEUE_PATTERN.fullmatch(name))

    def sibling(self, name: str) -> Queue:
        """Queue `name` on the same Redis connection (close this one, not the sibling)."""
        other = Queue(self.redis, name)
        other.url = self.url
        return other

    async def drop(self) -> int:
        """Delete every key of this queue (its history too); returns how many."""
        deleted = 0
        batch: list[str] = []
        async for key in self.redis.scan_iter(f"{self.prefix}*", count=10_000):
            batch.append(key)
            if len(batch) >= READ_CHUNK:
                deleted += await self.redis.unlink(*batch)
                batch.clear()
        if batch:
            deleted += await self.redis.unlink(*batch)
        return deleted

    # -- the queue's health -------------------------------------------------------------

    async def mark_synced(self, source: str, resources: int) -> None:
        """Record a sync of `source` (a config file, `resources` declared in it)."""
        await self.redis.hset(
            self.key("synced"),
            mapping={"at": await self.now_ms(), "source": source, "resources": resources},
        )

    async def sync_marker(self) -> SyncMarker | None:
        """The last sync, or None: never synced, or Redis lost the queue's data since."""
        h = cast(dict[str, str], await self.redis.hgetall(self.key("synced")))
        if not h:
            return None
        return SyncMarker(int(h.get("at") or 0), h.get("source", ""), int(h.get("resources") or 0))

    async def write_refusal(self) -> Refusal | None:
        """Whether Redis refuses writes now (None: it accepts them, or cannot tell)."""
        try:
            # Redis vets a SETRANGE like any write (memory, replica, disk) before running it,
            # and one that writes nothing stores nothing: a probe that changes no data.
            await self.redis.setrange(self.key("probe"), 0, "")
        except ResponseError as exc:  # e.g. NOPERM for a read-only user: cannot tell
            return refusal(exc)
        return None


StreamEntries = list[tuple[str, dict[str, str]]]


def _entries(reply: object) -> StreamEntries:
    """A stream range's reply, as a client with decode_responses gives it."""
    return cast(StreamEntries, reply or [])


def _pack(rows: list[list[str]]) -> str:
    """Rows for a script in one JSON argument: redis-py packs one long argument far faster
    than thousands of short ones."""
    return json.dumps(rows, ensure_ascii=False, separators=(",", ":"))


def _owner_codes(table: Mapping[str, str]) -> dict[str, str]:
    """The `owners` hash read as code -> owner (its other fields: owner -> code, the counter)."""
    return {code: owner for code, owner in table.items() if code[:1] == "#" and code != "#"}


def _owner_named(h: dict[str, str], names: Mapping[str, str]) -> dict[str, str]:
    """A scheduler's hash with its owner code replaced by the owner it stands for (a hash
    written before owners had codes holds the owner itself)."""
    if "owner" in h:
        h["owner"] = names.get(h["owner"], h["owner"])
    return h


def _rows(flat: Sequence[Any], width: int) -> Iterable[Sequence[Any]]:
    """A script's flat reply, `width` fields a row."""
    return (flat[start : start + width] for start in range(0, len(flat), width))


def change_key(change: Change) -> str:
    """What makes a change the same change: its resource's old and new, hashed."""
    shown = json.dumps([change.old, change.new], sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(shown.encode()).hexdigest()[:32]
