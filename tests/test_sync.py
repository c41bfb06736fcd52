"""Sync: create, update (keeping or resetting state), remove only what this config owns."""

from __future__ import annotations

from watcher.config import Config, parse_config
from watcher.queue import Fence, Queue
from watcher.sync import apply_plan, plan_sync


def config(source: str, *resources: str) -> Config:
    """Resources as "id" or "id=path" (the path of the URL)."""
    entries = [r.partition("=") for r in resources]
    text = "resources:\n" + "".join(
        f"  - id: {id}\n    url: http://127.0.0.1:9/{path or id}\n    every: 1h\n"
        for id, _, path in entries
    )
    return parse_config(text, filename=source)


async def sync(queue: Queue, source: str, *resources: str) -> dict[str, list[str]]:
    plan = await plan_sync(queue, config(source, *resources))
    await apply_plan(queue, plan)
    return {a: sorted(s.id for s in plan.of(a)) for a in ("create", "update", "remove", "conflict")}


async def test_each_config_manages_only_its_own_schedulers(queue: Queue) -> None:
    assert (await sync(queue, "/a/watcher.yaml", "x", "y"))["create"] == ["x", "y"]
    other = await sync(queue, "/b/watcher.yaml", "y", "z")
    assert other["create"] == ["z"] and other["conflict"] == ["y"]
    again = await sync(queue, "/a/watcher.yaml", "x")
    assert again["remove"] == ["y"] and again["update"] == []
    assert await queue.scheduler_ids() == ["x", "z"]  # z, declared by /b, is left alone
    assert await sync(queue, "/a/watcher.yaml", "x") == {
        "create": [],
        "update": [],
        "remove": [],
        "conflict": [],
    }


async def test_url_change_resets_state_other_changes_keep_it(queue: Queue) -> None:
    await sync(queue, "/a/watcher.yaml", "x=one")
    info = await queue.get_scheduler("x")
    assert info is not None
    assert await queue.write_back("x", Fence(1, info.epoch), state={"etag": '"1"'})
    text = (
        "resources:\n  - id: x\n    url: http://127.0.0.1:9/one\n    every: 1h\n    timeout: 3s\n"
    )
    plan = await plan_sync(queue, parse_config(text, filename="/a/watcher.yaml"))
    assert [(s.id, s.fields) for s in plan.of("update")] == [("x", ["timeout"])]
    await apply_plan(queue, plan)
    kept = await queue.get_scheduler("x")
    assert kept is not None and kept.state == {"etag": '"1"'}
    assert kept.next_fire_ms == info.next_fire_ms  # the phase is kept too
    changes = await sync(queue, "/a/watcher.yaml", "x=two")
    assert changes["update"] == ["x"]
    reset = await queue.get_scheduler("x")
    assert reset is not None and reset.state == {} and reset.epoch == info.epoch + 1
