"""The queue: its whole Redis data model, and one Lua script per atomic step (watcher/lua/).

Every key of queue ``q`` is ``watcher:{q}:<part>``; the hash tag keeps them in one
cluster slot, so every script runs unchanged on Redis Cluster.

  schedulers       ZSET   scheduler id -> next fire time (ms, jitter included)
  scheduler:<id>   HASH   name (check), data (JSON template), state (JSON, written back by
                          runs), spec (Schedule JSON), slot (next slot without jitter),
                          scope (state is reset when it changes), epoch (bumped on reset),
                          rev (bumped by every change), seq (runs started), wseq (the run
                          that last wrote state), owner, overlap, limit, attempts, count,
                          skipped, fails (in a row), active (the pending run's job id),
                          report (the last run's outcome, JSON), created, updated,
                          last_run, last_change (ms). Fields at their default value
                          (empty, 0, attempts 3, slot = score, updated = created) are
                          not stored: an idle scheduler stays under 400 bytes.
  wait             LIST   job ids ready to run
  marker           LIST   wake-up tokens for idle workers (BLPOP), capped at 64
  active           ZSET   job id -> lease deadline (ms)
  delayed          ZSET   job id -> time due (retries with backoff, delayed jobs)
  job:<id>         HASH   name, data, sched, at (planned fire ms), st, att, max, token, wk,
                          seq, epoch, created, started, finished, res, err (TTL once finished)
  finished         LIST   the newest finished job ids, capped
  id               STRING job id counter
  epochs           STRING state epoch counter (queue-wide: a re-created scheduler never
                          reuses an epoch a run in flight could carry)
  stat:completed / stat:failed   STRING counters
  events           STREAM removed schedulers, skipped ticks, retries, failures, stalled
                          jobs (capped ~10,000)
  changes          STREAM the change history (capped, configurable)
  workers          ZSET   worker id -> last heartbeat (ms);  worker:<id> HASH its details

Time is Redis server time (TIME) everywhere, so workers with skewed clocks agree: on a
cluster, the clock of the node that holds the queue (now.lua), the one the scripts read.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib.resources import files
from typing import Any

import redis.asyncio as aioredis
from redis.commands.core import AsyncScript

from watcher.change import Change
from watcher.schedule import Schedule, ScheduleError

ID_PATTERN = re.compile(r"^[A-Za-z0-9_.:@/-]{1,200}$")
QUEUE_PATTERN = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
KEEP = "~"  # "not given" in script arguments
UPSERT_CHUNK = 1000


class QueueError(ValueError):
    """Bad input to the queue API. Raised before anything is written."""


@dataclass(frozen=True)
class Fence:
    """Identifies one run of a scheduler: its write-back applies only if still current."""

    seq: int
    epoch: int

    def encode(self) -> str:
        return f"{self.seq}:{self.epoch}"


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
    attempts: int = 3
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
    owner: str
    scope: str
    overlap: bool
    active_job: str | None
    report: dict[str, Any] | None
    created_ms: int
    updated_ms: int
    last_run_ms: int | None
    last_change_ms: int | None

    @classmethod
    def from_hash(cls, id: str, h: Mapping[str, str], score: float | None) -> SchedulerInfo:
        def opt_int(key: str) -> int | None:
            value = h.get(key)
            return int(value) if value else None

        return cls(
            id=id,
            name=h["name"],
            data=json.loads(h["data"]),
            state=json.loads(h.get("state") or "{}"),
            schedule=Schedule.decode(h["spec"]),
            next_fire_ms=None if score is None else int(score),
            rev=int(h["rev"]),
            epoch=int(h["epoch"]),
            count=int(h.get("count", 0)),
            skipped=int(h.get("skipped", 0)),
            fails=int(h.get("fails", 0)),
            owner=h.get("owner", ""),
            scope=h.get("scope", ""),
            overlap=h.get("overlap") == "1",
            active_job=h.get("active") or None,
            report=json.loads(h["report"]) if h.get("report") else None,
            created_ms=int(h["created"]),
            updated_ms=int(h.get("updated") or h["created"]),
            last_run_ms=opt_int("last_run"),
            last_change_ms=opt_int("last_change"),
        )


def check_id(kind: str, value: object) -> str:
    if not isinstance(value, str) or not ID_PATTERN.fullmatch(value):
        raise QueueError(
            f"invalid {kind} {value!r}: use 1-200 characters from A-Z a-z 0-9 _ . : @ / -"
        )
    return value


def dump_json(what: str, value: object) -> str:
    try:
        return json.dumps(value, separators=(",", ":"), sort_keys=True, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise QueueError(f"{what} is not JSON-serialisable: {exc}") from None


def _script_source(name: str) -> str:
    return files("watcher").joinpath("lua", f"{name}.lua").read_text()


class Queue:
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
        "now",
    )

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
        self.prefix = f"watcher:{{{name}}}:"
        self.changes_max = changes_max
        self._scripts: dict[str, AsyncScript] = {
            script: redis.register_script(_script_source(script)) for script in self.SCRIPTS
        }

    @classmethod
    def from_url(
        cls, url: str, name: str = "watcher", *, cluster: bool = False, **kwargs: Any
    ) -> Queue:
        """A queue on the Redis at `url`; `cluster=True` for a Redis Cluster (any node's URL)."""
        client_class = aioredis.RedisCluster if cluster else aioredis.Redis
        client = client_class.from_url(
            url, decode_responses=True, health_check_interval=0, socket_keepalive=True
        )
        return cls(client, name, **kwargs)

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

    async def run_script(self, script: str, key: str, args: Sequence[Any]) -> Any:
        return await self._scripts[script](keys=[self.key(key)], args=[self.prefix, *args])

    async def close(self) -> None:
        await self.redis.aclose()

    async def now_ms(self) -> int:
        """Server time (ms) of the node holding the queue: a bare TIME has no key, and a
        cluster client would send it to any node."""
        seconds, micros = await self.run_script("now", "id", [])
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
        prepared = [self._prepare(spec, now) for spec in specs]
        results: list[str] = []
        for start in range(0, len(prepared), UPSERT_CHUNK):
            rows = []
            for spec, schedule, slot, data, state in prepared[start : start + UPSERT_CHUNK]:
                scope = KEEP if spec.scope is None else spec.scope
                rows.append(
                    [
                        spec.id,
                        spec.name,
                        data,
                        schedule.encode(),
                        str(schedule.fire_time(slot)),
                        str(slot),
                        scope,
                        spec.owner,
                        str(int(spec.overlap)),
                        str(spec.limit),
                        str(spec.attempts),
                        "",
                        state,
                        str(now) if spec.immediately else "",
                    ]
                )
            results += await self._upsert_rows(rows)
            if progress:
                progress(len(rows))
        return results

    async def _upsert_rows(self, rows: list[list[str]]) -> list[str]:
        return list(await self.run_script("upsert", "schedulers", [json.dumps(rows)]))

    def _prepare(
        self, spec: SchedulerSpec, now: int
    ) -> tuple[SchedulerSpec, Schedule, int, str, str]:
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
        state = (
            KEEP if spec.state is None else dump_json(f"scheduler {spec.id!r} state", spec.state)
        )
        return spec, schedule, slot, data, state

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
        spec_text, nxt, slot = KEEP, 0, 0
        if every is not None:
            current = await self.redis.hget(self.key(f"scheduler:{id}"), "spec")
            old = Schedule.decode(current) if current else Schedule()
            try:  # a new interval; jitter (where it still fits), start and end are kept
                schedule = Schedule.build(
                    every=every,
                    jitter=old.jitter_ms / 1000 if old.jitter_ms < every * 1000 else 0.0,
                    start=None if old.start_ms is None else old.start_ms / 1000,
                    end=None if old.end_ms is None else old.end_ms / 1000,
                )
            except ScheduleError as exc:
                raise QueueError(f"scheduler {id!r}: {exc}") from None
            slot = schedule.next_slot(id, await self.now_ms())
            spec_text, nxt = schedule.encode(), schedule.fire_time(slot or 0)
        row = [
            id,
            KEEP,
            KEEP if data is None else dump_json("data", dict(data)),
            spec_text,
            str(nxt),
            str(slot),
            KEEP,
            KEEP,
            KEEP,
            KEEP,
            KEEP,
            fence.encode(),
            KEEP if state is None else dump_json("state", dict(state)),
            "",
        ]
        result = await self._upsert_rows([row])
        return bool(result[0] == "updated")

    async def remove_schedulers(self, ids: Iterable[str]) -> int:
        id_list = [check_id("scheduler id", i) for i in ids]
        if not id_list:
            return 0
        return int(await self.run_script("remove", "schedulers", id_list))

    async def remove_scheduler(self, id: str) -> bool:
        return await self.remove_schedulers([id]) == 1

    async def get_scheduler(self, id: str) -> SchedulerInfo | None:
        check_id("scheduler id", id)
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.hgetall(self.key(f"scheduler:{id}"))
            pipe.zscore(self.key("schedulers"), id)
            h, score = await pipe.execute()
        return SchedulerInfo.from_hash(id, h, score) if h else None

    async def scheduler_ids(self) -> list[str]:
        """Every scheduler id, including ended ones (not in the `schedulers` ZSET)."""
        prefix = self.key("scheduler:")
        where: dict[str, Any] = {}
        if isinstance(self.redis, aioredis.RedisCluster):  # one slot: scan its node only
            await self.redis.initialize()
            where["target_nodes"] = self.redis.get_node_from_key(prefix)
        keys = self.redis.scan_iter(f"{prefix}*", count=1000, **where)
        return sorted([key[len(prefix) :] async for key in keys])

    async def scheduler_fields(
        self, fields: Sequence[str], ids: Sequence[str] | None = None
    ) -> dict[str, list[str | None]]:
        """Selected hash fields of many schedulers (pipelined), keyed by id."""
        ids = await self.scheduler_ids() if ids is None else list(ids)
        found: dict[str, list[str | None]] = {}
        for start in range(0, len(ids), 2000):
            chunk = ids[start : start + 2000]
            async with self.redis.pipeline(transaction=False) as pipe:
                for id in chunk:
                    pipe.hmget(self.key(f"scheduler:{id}"), list(fields))
                replies = await pipe.execute()
            for id, values in zip(chunk, replies, strict=True):
                if values[0] is not None:
                    found[id] = values
        return found

    async def list_schedulers(self, ids: Sequence[str] | None = None) -> list[SchedulerInfo]:
        ids = await self.scheduler_ids() if ids is None else list(ids)
        found: list[SchedulerInfo] = []
        for start in range(0, len(ids), 1000):
            chunk = ids[start : start + 1000]
            async with self.redis.pipeline(transaction=False) as pipe:
                for id in chunk:
                    pipe.hgetall(self.key(f"scheduler:{id}"))
                    pipe.zscore(self.key("schedulers"), id)
                replies = await pipe.execute()
            for i, id in enumerate(chunk):
                h, score = replies[2 * i], replies[2 * i + 1]
                if h:
                    found.append(SchedulerInfo.from_hash(id, h, score))
        return found

    # -- jobs ---------------------------------------------------------------------------

    async def add_job(
        self,
        name: str,
        data: Mapping[str, Any] | None = None,
        *,
        delay: float = 0.0,
        attempts: int = 3,
    ) -> str:
        return (await self.add_jobs(name, [data or {}], delay=delay, attempts=attempts))[0]

    async def add_jobs(
        self,
        name: str,
        items: Sequence[Mapping[str, Any]],
        *,
        delay: float = 0.0,
        attempts: int = 3,
        chunk: int = 1000,
    ) -> list[str]:
        if not name or not isinstance(name, str):
            raise QueueError("a job needs a handler name")
        if delay < 0:
            raise QueueError(f"delay must be >= 0, got {delay!r}")
        if attempts < 1:
            raise QueueError(f"attempts must be >= 1, got {attempts!r}")
        encoded = [dump_json("job data", dict(item)) for item in items]
        ids: list[str] = []
        for start in range(0, len(encoded), chunk):
            args: list[Any] = []
            for data in encoded[start : start + chunk]:
                args += [name, data, round(delay * 1000), attempts]
            ids += await self.run_script("add", "wait", args)
        return ids

    async def job(self, id: str) -> dict[str, str]:
        return await self.redis.hgetall(self.key(f"job:{id}"))

    async def counts(self) -> dict[str, int]:
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.llen(self.key("wait"))
            pipe.zcard(self.key("active"))
            pipe.zcard(self.key("delayed"))
            pipe.get(self.key("stat:completed"))
            pipe.get(self.key("stat:failed"))
            pipe.zcard(self.key("schedulers"))
            replies = await pipe.execute()
        names = ("wait", "active", "delayed", "completed", "failed", "schedulers")
        return {name: int(value or 0) for name, value in zip(names, replies, strict=True)}

    async def events(self, count: int = 100) -> list[dict[str, str]]:
        """The newest events first."""
        entries = await self.redis.xrevrange(self.key("events"), count=count)
        return [{"id": entry_id, **fields} for entry_id, fields in entries]

    # -- change history -----------------------------------------------------------------

    async def record_change(self, scheduler_id: str, fence: Fence, change: Change) -> str | None:
        """Append to the changes stream unless the run is fenced off; the entry id or None."""
        args = [
            scheduler_id,
            fence.seq,
            fence.epoch,
            self.changes_max,
            change.resource,
            change.to_json(),
        ]
        return await self.run_script("change", "changes", args)

    async def changes(self, resource: str | None = None, limit: int = 20) -> list[Change]:
        """The newest changes first, optionally of one resource."""
        found: list[Change] = []
        end = "+"
        while len(found) < limit:
            page = await self.redis.xrevrange(self.key("changes"), max=end, count=500)
            for entry_id, fields in page:
                if resource is None or fields.get("resource") == resource:
                    found.append(Change.from_dict({**json.loads(fields["change"]), "id": entry_id}))
                    if len(found) == limit:
                        break
            if len(page) < 500:
                break
            end = "(" + page[-1][0]
        return found

    # -- workers ------------------------------------------------------------------------

    async def workers(self, alive_within_ms: int = 30_000) -> list[dict[str, str]]:
        now = await self.now_ms()
        ids = await self.redis.zrangebyscore(self.key("workers"), now - alive_within_ms, "+inf")
        async with self.redis.pipeline(transaction=False) as pipe:
            for wid in ids:
                pipe.hgetall(self.key(f"worker:{wid}"))
            details = await pipe.execute()
        return [{"id": wid, **info} for wid, info in zip(ids, details, strict=True)]
