"""What one Redis holds: every queue with its resources and owner, and what no config owns.

A scheduler's owner is the config file that declared it (``yaml:/abs/path``). It is an
orphan when that file, judged on this machine, no longer declares it: the file is gone
(moved, renamed, deleted), or it now uses another queue. Schedulers made through the
Python API have no owner and are never orphans. Files on other machines cannot be judged
here: `watcher prune` runs where the config files are.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from watcher.connection import read_queue_settings
from watcher.queue import Queue
from watcher.yaml_source import ConfigError

__all__ = ["Orphans", "QueueSummary", "find_orphans", "owner_path", "prune", "survey"]

OWNER_PREFIX = "yaml:"
WORKERS_ALIVE_MS = 30_000


def owner_path(owner: str) -> str | None:
    """The config file an owner names, or None (made through the API)."""
    return owner[len(OWNER_PREFIX) :] if owner.startswith(OWNER_PREFIX) else None


def why_orphaned(owner: str, queue: str) -> str | None:
    """Why the file `owner` names no longer declares resources of `queue` ("is gone", "now
    uses queue 'x'"); None when it may still (or cannot be read: then it is not judged)."""
    path = owner_path(owner)
    if path is None:
        return None
    if not os.path.exists(path):
        return "is gone"
    try:
        uses = read_queue_settings(path).queue
    except (ConfigError, OSError, ValueError):
        return None
    return None if uses == queue else f"now uses queue {uses!r}"


@dataclass
class QueueSummary:
    name: str
    resources: int
    source: str
    """The config file of its last sync ("" when never synced)."""
    synced_ms: int | None
    workers: int
    """Worker processes that said they are alive in the last 30 s."""
    orphaned: str | None
    """Why its last sync's file no longer owns it, or None."""


async def survey(queue: Queue) -> list[QueueSummary]:
    """Every queue in `queue`'s Redis, by name."""
    found = []
    for name in await queue.queue_names():
        other = queue.sibling(name)
        marker = await other.sync_marker()
        source = marker.source if marker else ""
        found.append(
            QueueSummary(
                name=name,
                resources=await other.scheduler_count(),
                source=source,
                synced_ms=marker.at_ms if marker else None,
                workers=len(await other.workers(WORKERS_ALIVE_MS)),
                orphaned=why_orphaned(OWNER_PREFIX + source, name) if source else None,
            )
        )
    return found


@dataclass
class Orphans:
    """What no config owns in one queue."""

    queue: str
    ids: list[str] = field(default_factory=list)
    owners: dict[str, str] = field(default_factory=dict)
    """Each orphaning file and why ("/x/mine.yaml" -> "is gone")."""
    kept: int = 0
    """Schedulers that stay: owned by a config, or made through the API."""
    workers: int = 0

    @property
    def whole_queue(self) -> bool:
        """Nothing would be left: the queue's other keys (its history) go too."""
        return self.kept == 0


async def find_orphans(queue: Queue) -> list[Orphans]:
    """Per queue of the Redis with any orphan, what no config owns (queues with live
    workers are listed too: `prune` leaves them alone)."""
    found = []
    for name in await queue.queue_names():
        other = queue.sibling(name)
        rows = await other.scheduler_fields(("name", "owner"))
        owners = {id: row[1] or "" for id, row in rows.items()}
        verdicts = {owner: why_orphaned(owner, name) for owner in set(owners.values())}
        orphans = Orphans(name)
        for id, owner in sorted(owners.items()):
            if (why := verdicts[owner]) is not None:
                orphans.ids.append(id)
                orphans.owners[owner_path(owner) or owner] = why
            else:
                orphans.kept += 1
        marker = await other.sync_marker()
        if not owners and marker and (why := why_orphaned(OWNER_PREFIX + marker.source, name)):
            orphans.owners[marker.source] = why  # an empty queue whose config left
        if orphans.owners:
            orphans.workers = len(await other.workers(WORKERS_ALIVE_MS))
            found.append(orphans)
    return found


async def prune(queue: Queue, orphans: Orphans) -> int:
    """Remove one queue's orphans (the whole queue when nothing else is left in it);
    returns the schedulers removed. The caller leaves queues with live workers alone."""
    other = queue.sibling(orphans.queue)
    removed = 0
    for start in range(0, len(orphans.ids), 2000):
        removed += await other.remove_schedulers(orphans.ids[start : start + 2000])
    if orphans.whole_queue:
        await other.drop()
    return removed
