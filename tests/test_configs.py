"""Several config files and one Redis, through the console script: each config sees and
runs its own resources; a renamed or moved file says so and offers the fix; `queues` lists
a Redis's queues; `prune` removes what no config owns; the embedded Redis keeps its address,
and a worker in another terminal reconnects when `run` restarts."""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from watcher.redis_server import RedisServer

from .helpers import Watcher, wait_for
from .origin import Origin
from .test_cli import resource, snapshot, watcher


@pytest.fixture
def own_redis() -> Iterator[str]:
    """A Redis of this test alone: `prune` judges every queue in the Redis it is given."""
    with RedisServer() as server:
        yield server.url


def config(path: Path, redis_url: str | None, *resources: str) -> Path:
    head = f"redis: {redis_url}\n" if redis_url else ""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(head + "resources:\n" + "".join(resources))
    return path


def status_ids(path: Path) -> list[str]:
    result = watcher("status", "--json", "-c", str(path), cwd=path.parent)
    assert result.returncode == 0, result.stderr
    return sorted(r["id"] for r in json.loads(result.stdout)["resources"])


def test_two_configs_sharing_a_redis_each_see_and_run_only_their_own(
    tmp_path: Path, own_redis: str, origin: Origin
) -> None:
    sample = config(
        tmp_path / "sample.yaml",
        own_redis,
        *(resource(f"s{n}", f"{origin.url}sample/{n}", "1h") for n in range(3)),
    )
    mine = config(
        tmp_path / "mine.yaml",
        own_redis,
        *(resource(f"m{n}", f"{origin.url}mine/{n}", "300ms") for n in range(2)),
    )
    assert watcher("sync", "-c", str(sample), cwd=tmp_path).returncode == 0
    run = Watcher("run", "-c", str(mine), "--processes", "1", "-q", cwd=tmp_path)
    try:
        asyncio.run(wait_for(lambda: len(origin.requests) >= 6, 20, what="checks of mine.yaml"))
    finally:
        assert run.stop() == 0, run.output
    assert "queue 'mine'" in run.saying("watching 2 resource(s)")[0]
    assert {r.path.split("/")[1] for r in origin.requests} == {"mine"}
    assert status_ids(mine) == ["m0", "m1"]
    assert status_ids(sample) == ["s0", "s1", "s2"]


def test_a_renamed_config_says_so_and_prune_removes_what_no_config_owns(
    tmp_path: Path, own_redis: str, origin: Origin
) -> None:
    old = config(tmp_path / "old.yaml", own_redis, resource("a", origin.url, "1h"))
    other = config(tmp_path / "other.yaml", own_redis, resource("b", origin.url, "1h"))
    for path in (old, other):
        assert watcher("sync", "-c", str(path), cwd=tmp_path).returncode == 0
    renamed = old.rename(tmp_path / "renamed.yaml")

    synced = watcher("sync", "-c", str(renamed), cwd=tmp_path)
    assert synced.returncode == 0, synced.stderr
    told = " ".join(synced.stderr.split())
    assert f"queue 'old' holds 1 resource(s) of {old}, which is gone" in told
    assert "add `queue: old`" in told and "`watcher prune`" in told

    listed = watcher("queues", "-c", str(renamed), cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr
    rows = {line.split()[0]: line for line in listed.stdout.splitlines()[1:] if line.strip()}
    assert set(rows) >= {"old", "other", "renamed"}
    assert "which is gone" in rows["old"] and "gone" not in rows["other"]

    before = {name: snapshot(own_redis, name) for name in ("old", "other", "renamed")}
    dry = watcher("prune", "--dry-run", "-c", str(renamed), cwd=tmp_path)
    assert dry.returncode == 0, dry.stderr
    assert "queue 'old': would remove 1 resource(s) and its history" in dry.stdout
    assert "'other'" not in dry.stdout and "'renamed'" not in dry.stdout
    assert {name: snapshot(own_redis, name) for name in before} == before

    pruned = watcher("prune", "-c", str(renamed), cwd=tmp_path)
    assert pruned.returncode == 0, pruned.stderr
    assert "removed 1 resource(s)" in pruned.stdout
    assert snapshot(own_redis, "old") == {}
    assert snapshot(own_redis, "other") == before["other"]
    assert snapshot(own_redis, "renamed") == before["renamed"]
    again = watcher("prune", "-c", str(renamed), cwd=tmp_path)
    assert "nothing to prune" in again.stdout


def stored_owner(client: redis.Redis, queue: str, id: str) -> str | None:
    """The owner a scheduler's hash names, through the queue's table of owner codes."""
    code = client.hget(f"watcher:{{{queue}}}:scheduler:{id}", "owner")
    return client.hget(f"watcher:{{{queue}}}:owners", code) if code else None


def test_a_moved_config_is_told_to_adopt_and_adopting_keeps_the_state(
    tmp_path: Path, own_redis: str, origin: Origin
) -> None:
    first = config(tmp_path / "one" / "site.yaml", own_redis, resource("page", origin.url, "1h"))
    assert watcher("sync", "-c", str(first), cwd=tmp_path).returncode == 0
    client = redis.Redis.from_url(own_redis, decode_responses=True)
    client.hset("watcher:{site}:scheduler:page", "state", '{"etag": "\\"v1\\""}')
    moved = tmp_path / "two" / "site.yaml"
    moved.parent.mkdir()
    first.rename(moved)

    told = watcher("sync", "-c", str(moved), cwd=tmp_path)
    assert told.returncode == 0, told.stderr
    text = " ".join(told.stdout.split())
    assert f"declared by {first}, which is gone: `watcher sync --adopt`" in text
    assert stored_owner(client, "site", "page") == f"yaml:{first}"

    adopted = watcher("sync", "--adopt", "-c", str(moved), cwd=tmp_path)
    assert adopted.returncode == 0, adopted.stderr
    assert f"owner: {first} → {moved}" in " ".join(adopted.stdout.split())
    assert stored_owner(client, "site", "page") == f"yaml:{moved}"
    assert len(client.hget("watcher:{site}:scheduler:page", "owner") or "") <= 3  # a code
    assert client.hget("watcher:{site}:scheduler:page", "state") == '{"etag": "\\"v1\\""}'
    assert "nothing to do" in watcher("sync", "-c", str(moved), cwd=tmp_path).stdout


def test_the_sync_plan_shows_old_and_new_values_with_secrets_masked(
    tmp_path: Path, own_redis: str, origin: Origin
) -> None:
    path = config(
        tmp_path / "w.yaml",
        own_redis,
        resource(
            "page", origin.url + "a", "1h", "    headers: {Authorization: Bearer one-secret}\n"
        ),
    )
    assert watcher("sync", "-c", str(path), cwd=tmp_path).returncode == 0
    config(
        path,
        own_redis,
        resource(
            "page", origin.url + "b", "2h", "    headers: {Authorization: Bearer two-secret}\n"
        ),
    )
    plan = watcher("sync", "--dry-run", "-c", str(path), cwd=tmp_path)
    assert plan.returncode == 0, plan.stderr
    line = " ".join(plan.stdout.split())
    assert f"url: {origin.url}a → {origin.url}b" in line
    assert "schedule: every 1h → every 2h" in line
    assert 'headers: {"Authorization":"***"} → {"Authorization":"***"}' in line
    assert "one-secret" not in plan.stdout + plan.stderr
    assert "two-secret" not in plan.stdout + plan.stderr


def test_a_worker_in_another_terminal_finds_the_embedded_redis_and_reconnects(
    tmp_path: Path, origin: Origin
) -> None:
    config(tmp_path / "watcher.yaml", None, resource("page", origin.url, "300ms"))
    alone = watcher("worker", cwd=tmp_path)
    assert alone.returncode == 1 and "watcher run` here first" in alone.stderr

    def start_run() -> tuple[Watcher, str]:
        run = Watcher("run", "--processes", "1", "-q", cwd=tmp_path)
        asyncio.run(wait_for(lambda: run.saying("watching"), 30, what="run started"))
        found = re.search(r"redis://127\.0\.0\.1:\d+/0", run.output)
        assert found, run.output
        return run, found[0]

    run, address = start_run()
    worker = Watcher("worker", "--processes", "1", "-v", cwd=tmp_path)
    try:
        asyncio.run(wait_for(lambda: worker.saying("page"), 30, what="the worker's checks"))
        assert f"worker on queue 'watcher' at {address}" in worker.output
        assert run.stop() == 0, run.output
        time.sleep(1.0)  # the worker meets the outage
        run, again = start_run()
        assert again == address, run.output
        seen = len(worker.lines)
        asyncio.run(
            wait_for(
                lambda: any("page" in line for line in worker.lines[seen:]),
                30,
                what="checks by the worker after the restart",
            )
        )
    finally:
        assert worker.stop() == 0, worker.output
        assert run.stop() == 0, run.output
