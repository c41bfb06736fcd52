"""The change history: fenced appends, newest first per resource, a configurable cap."""

from __future__ import annotations

from watcher.change import Change
from watcher.queue import Fence, Queue


def change(resource: str, n: int) -> Change:
    return Change(
        resource=resource,
        check="etag",
        url="http://x/",
        time=float(n),
        old={"etag": f'"{n - 1}"'},
        new={"etag": f'"{n}"'},
        summary=f"#{n}",
    )


async def test_changes_newest_first_per_resource_and_capped(
    redis_url: str, queue_name: str
) -> None:
    queue = Queue.from_url(redis_url, queue_name, changes_max=5)
    try:
        epochs = {}
        for id in ("a", "b"):
            await queue.upsert_scheduler(id, name="etag", every=60)
            epochs[id] = (await queue.get_scheduler(id)).epoch  # type: ignore[union-attr]
        for n in range(1, 5):
            for id in ("a", "b"):
                assert await queue.record_change(id, Fence(n, epochs[id]), change(id, n))
        assert [c.summary for c in await queue.changes("a")] == ["#4", "#3"]  # cap 5 of 8
        assert [c.summary for c in await queue.changes(limit=3)] == ["#4", "#4", "#3"]
        assert await queue.redis.xlen(queue.key("changes")) == 5
        newest = (await queue.changes("b", limit=1))[0]
        assert newest.id and newest.old == {"etag": '"3"'} and newest.new == {"etag": '"4"'}
    finally:
        await queue.close()


async def test_fenced_off_run_records_nothing(queue: Queue) -> None:
    await queue.upsert_scheduler("a", name="etag", every=60, scope="url-1")
    assert await queue.write_back("a", Fence(5, 1), state={"etag": '"5"'})
    assert await queue.record_change("a", Fence(4, 1), change("a", 4)) is None  # overtaken
    await queue.upsert_scheduler("a", name="etag", every=60, scope="url-2")  # URL changed
    assert await queue.record_change("a", Fence(6, 1), change("a", 6)) is None  # old epoch
    assert await queue.record_change("gone", Fence(1, 1), change("gone", 1)) is None
    assert await queue.changes() == []
