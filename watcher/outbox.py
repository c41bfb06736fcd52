"""The notifier outbox: each (change or event, notifier) pair is a delivery record in Redis,
sent by any worker that knows the notifier, retried with backoff across worker restarts and
Redis outages until it is sent or its deadline passes (then kept as failed, and shown).

  outbox:<name>    ZSET   a notifier's delivery ids -> when due (ms); while being sent, the
                          lease end (one per notifier: one no worker knows holds up no other)
  deadlines        ZSET   delivery id -> its deadline (ms): swept by every take, so a delivery
                          of any notifier ends in failed when it passes
  outbox:failed    ZSET   delivery id -> when it failed for good (the newest 10,000)
  delivery:<id>    HASH   notifier, resource, event, payload (JSON), change (stream entry id),
                          state (pending | sending | sent | failed), att, created, deadline,
                          done, error; a sent one loses its payload and expires after KEEP_SENT
  deliveries       HASH   "<notifier>:pending" / ":failed" (now) and ":sent" (so far)
  delivery_id      STRING the counter of event deliveries ("e<n>"); a change's delivery is
                          "<stream entry id>/<notifier>", so the history finds it

Records are made atomically with what they tell (change.lua for changes, finish.lua for
down, recovered and stale), so a change is recorded and queued for delivery, or neither. A
delivery is leased while being sent: a worker SIGKILLed mid-send leaves it to be taken again
when the lease ends. Delivery is at least once: a worker that dies after the target accepted
a message but before recording it (or a Redis outage at that moment) sends it again, so the
webhook payload carries the change's id for receivers that must deduplicate.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from watcher.queue import Queue

__all__ = ["Delivery", "DeliveryCounts", "DeliveryResult", "DeliveryState", "Outbox"]

KEEP_SENT_MS = 7 * 86_400_000
"""How long a sent delivery's record stays for `watcher history`."""
FAILED_MAX = 10_000
"""Failed deliveries kept (the newest)."""
DEFAULT_DELIVER_WITHIN = 86_400.0
"""Seconds a delivery is retried before it is marked failed, unless its notifier says."""


@dataclass(frozen=True)
class Delivery:
    """A delivery taken to send: `attempt` is its lease token."""

    id: str
    attempt: int
    notifier: str
    payload: dict[str, Any]
    change_id: str
    """The change's stream entry id ("" for an event: down, recovered, stale, changing)."""


@dataclass(frozen=True)
class DeliveryResult:
    delivery: Delivery
    outcome: str
    """sent | retry | failed (failed for good: not worth retrying)."""
    delay_ms: int = 0
    error: str = ""


@dataclass(frozen=True)
class DeliveryCounts:
    pending: int = 0
    failed: int = 0
    """Failed for good and kept (the newest FAILED_MAX of every notifier)."""
    sent: int = 0


@dataclass(frozen=True)
class DeliveryState:
    notifier: str
    state: str
    """pending | sending | sent | failed, or "unknown" once a sent record has expired."""
    attempts: int
    error: str


class Outbox:
    """The outbox of one queue (`Queue.outbox`): its keys and scripts are the queue's."""

    def __init__(self, queue: Queue) -> None:
        self._queue = queue

    async def take(self, leases_ms: Mapping[str, int], limit: int) -> list[Delivery]:
        """Due deliveries of these notifiers, each leased for its notifier's time (and
        first, any delivery past its deadline marked failed, whatever its notifier)."""
        pairs = [[name, lease] for name, lease in leases_ms.items()]
        args = [limit, json.dumps(pairs), FAILED_MAX]
        reply = await self._queue._call("outbox_take", args)
        return [
            Delivery(
                id=reply[at],
                attempt=int(reply[at + 1]),
                notifier=reply[at + 2],
                payload=_payload(reply[at + 3]),
                change_id=reply[at + 4],
            )
            for at in range(0, len(reply), 5)
        ]

    async def done(self, results: Sequence[DeliveryResult]) -> list[int]:
        """Record how deliveries went; one code each: 0 lease lost, 1 sent, 2 retried later,
        3 failed for good (or its deadline passed)."""
        if not results:
            return []
        rows = [
            [r.delivery.id, str(r.delivery.attempt), r.outcome, str(r.delay_ms), r.error[:1000]]
            for r in results
        ]
        reply = await self._queue._call("outbox_done", [KEEP_SENT_MS, FAILED_MAX, json.dumps(rows)])
        return [int(code) for code in reply]

    async def counts(self) -> dict[str, DeliveryCounts]:
        """Per notifier: deliveries pending and failed now, sent so far."""
        raw = await self._queue.redis.hgetall(self._queue.key("deliveries"))
        found: dict[str, dict[str, int]] = {}
        for field, value in raw.items():
            name, _, kind = str(field).rpartition(":")
            found.setdefault(name, {})[kind] = max(0, int(value))
        return {name: DeliveryCounts(**values) for name, values in sorted(found.items())}

    async def states(self, ids: Sequence[str]) -> dict[str, DeliveryState]:
        """The state of each delivery record by id (a change's: "<entry id>/<notifier>")."""
        fields = ("notifier", "state", "att", "error")
        async with self._queue.redis.pipeline(transaction=False) as pipe:
            for id in ids:
                pipe.hmget(self._queue.key(f"delivery:{id}"), fields)
            replies = await pipe.execute()
        states = {}
        for id, (notifier, state, attempts, error) in zip(ids, replies, strict=True):
            states[id] = DeliveryState(
                notifier=notifier or id.rpartition("/")[2],
                state=state or "unknown",
                attempts=int(attempts or 0),
                error=error or "",
            )
        return states

    async def failed(self, limit: int = 20) -> list[dict[str, str]]:
        """The newest deliveries that failed for good, with what they were about."""
        found = await self._queue.redis.zrevrange(self._queue.key("outbox:failed"), 0, limit - 1)
        ids = [str(id) for id in found]  # the client decodes replies
        fields = ("notifier", "resource", "event", "error", "done", "att")
        async with self._queue.redis.pipeline(transaction=False) as pipe:
            for id in ids:
                pipe.hmget(self._queue.key(f"delivery:{id}"), fields)
            replies = await pipe.execute()
        return [
            {"id": id, **{f: str(v or "") for f, v in zip(fields, reply, strict=True)}}
            for id, reply in zip(ids, replies, strict=True)
        ]


def _payload(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}
