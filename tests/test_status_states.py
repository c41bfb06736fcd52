"""`watcher status`: each resource's state (ok, changed, failing, down, waiting), the header's
count of what fails now, and `--json` with ISO-8601 times and real numbers. Through the
console script against a private Redis and local origins, and the state rules one by one."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import subprocess
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from watcher.queue import Queue, SchedulerInfo
from watcher.redis_server import free_port
from watcher.status import RECENT_CHANGE_MS, STATES, iso, resource_state

from .helpers import WATCHER, Watcher, wait_for
from .origin import Origin

ISO = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")


def write_config(folder: Path, redis_url: str, queue: str, resources: dict[str, str]) -> None:
    """`resources`: id -> "URL" (the etag check) or "URL status" (the status check)."""
    lines = [f"redis: {redis_url}", f"queue: {queue}", "resources:"]
    for id, target in resources.items():
        url, _, check = target.partition(" ")
        lines += [f"  - id: {id}", f"    url: {url}", "    every: 200ms", "    min_every: 100ms"]
        lines += [f"    check: {check}"] if check else []
    (folder / "watcher.yaml").write_text("\n".join(lines) + "\n")


def status(folder: Path, *args: str) -> str:
    environment = {k: v for k, v in os.environ.items() if k != "WATCHER_REDIS_URL"}
    done = subprocess.run(
        [WATCHER, "status", *args],
        cwd=folder,
        env={**environment, "COLUMNS": "400", "NO_COLOR": "1"},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def status_json(folder: Path) -> dict[str, Any]:
    parsed: dict[str, Any] = json.loads(status(folder, "--json"))
    return parsed


def states(folder: Path) -> dict[str, str]:
    return {row["id"]: row["state"] for row in status_json(folder)["resources"]}


def failing_in_header(folder: Path) -> int:
    found = re.search(r"\bfailing (\d+)\b", status(folder).splitlines()[0])
    assert found, "no failing count in the header"
    return int(found.group(1))


def assert_typed(snapshot: dict[str, Any]) -> None:
    """Times are ISO-8601 UTC strings, counts are ints, flags are booleans."""
    assert ISO.fullmatch(snapshot["time"]) and datetime.fromisoformat(snapshot["time"]).tzinfo
    for key in ("total_resources", "failing_now", "scheduled", "checks_per_minute"):
        assert type(snapshot[key]) is int, key
    assert all(type(n) is int for n in [*snapshot["jobs"].values(), *snapshot["totals"].values()])
    assert set(snapshot["states"]) == set(STATES)
    for worker in snapshot["workers"]:
        assert type(worker["concurrency"]) is int and type(worker["pid"]) is int
        assert type(worker["host"]) is str and ISO.fullmatch(worker["seen"])
    for row in snapshot["resources"]:
        assert type(row["failures"]) is int and type(row["skipped"]) is int
        assert type(row["not_modified"]) is bool
        assert row["status_code"] is None or type(row["status_code"]) is int
        for key in ("last_run", "last_change", "next_run"):
            assert row[key] is None or ISO.fullmatch(row[key]), (key, row[key])


async def test_each_state_in_status_json_and_the_table(
    tmp_path: Path, redis_url: str, queue_name: str, origin: Origin
) -> None:
    with Origin() as changing, Origin() as unavailable:
        unavailable.set(status=503)
        resources = {
            "healthy": origin.url,
            "changing": changing.url,
            "refused": f"http://127.0.0.1:{free_port()}/ status",
            "unavailable": f"{unavailable.url} status",
        }
        write_config(tmp_path, redis_url, queue_name, resources)
        sync = subprocess.run([WATCHER, "sync"], cwd=tmp_path, capture_output=True, timeout=30)
        assert sync.returncode == 0, sync.stderr
        before = status_json(tmp_path)
        assert {row["state"] for row in before["resources"]} == {"waiting"}  # nothing ran
        assert before["states"]["waiting"] == 4 and before["failing_now"] == 0
        assert_typed(before)
        assert "waiting first run pending" in status(tmp_path)

        run = Watcher("run", "--processes", "1", cwd=tmp_path)
        try:
            expected = {"healthy": "ok", "changing": "ok", "refused": "down", "unavailable": "down"}
            await wait_for(lambda: states(tmp_path) == expected, 20, step=0.2, what="states")
            changing.set(etag='"v2"')
            expected["changing"] = "changed"
            await wait_for(lambda: states(tmp_path) == expected, 20, step=0.2, what="a change")
            during = status_json(tmp_path)
            table = status(tmp_path)
        finally:
            assert run.stop() == 0, run.output
    assert_typed(during)
    assert during["workers"], "the running worker is listed"
    rows = {row["id"]: row for row in during["resources"]}
    assert rows["unavailable"]["status_code"] == 503
    assert rows["refused"]["failures"] == 0  # down by its own account: the runs succeed
    assert during["states"] == {"ok": 1, "changed": 1, "failing": 0, "down": 2, "waiting": 0}
    assert during["failing_now"] == 2
    assert failing_in_header(tmp_path) == 2  # the down resources are among those shown
    down_rows = [line for line in table.splitlines() if " down" in line]
    assert {line.split()[0] for line in down_rows} == {"refused", "unavailable"}
    assert "unchanged" not in table and "retrying" not in table


async def test_failing_then_down_then_ok_and_the_header_counts_it_now(
    tmp_path: Path, redis_url: str, queue_name: str, origin: Origin
) -> None:
    origin.set(status=503)
    write_config(tmp_path, redis_url, queue_name, {"flaky": origin.url})
    run = Watcher("run", "--processes", "1", cwd=tmp_path)
    seen: set[str] = set()

    def state_is(wanted: str) -> bool:
        now = states(tmp_path).get("flaky", "")
        seen.add(now)
        return now == wanted

    try:
        await wait_for(lambda: state_is("down"), 20, step=0.1, what="down after its retries")
        assert "failing" in seen, seen  # while attempts remained
        snapshot = status_json(tmp_path)
        assert snapshot["failing_now"] == 1 and snapshot["totals"]["runs_failed"] >= 1
        assert failing_in_header(tmp_path) == 1
        origin.set(status=None)
        await wait_for(lambda: state_is("ok"), 20, step=0.1, what="ok after recovery")
        assert failing_in_header(tmp_path) == 0
        recovered = status_json(tmp_path)
    finally:
        assert run.stop() == 0, run.output
    assert recovered["failing_now"] == 0
    assert recovered["totals"]["runs_failed"] >= 1  # the running total stays, labelled so
    [row] = recovered["resources"]
    assert row["failures"] == 0 and row["outcome"] == "unchanged"


# -- the rules, on scheduler records as the queue returns them ------------------------------------

NOW_MS = 1_800_000_000_000


@pytest.fixture
async def base(queue: Queue) -> SchedulerInfo:
    await queue.upsert_scheduler("r", name="etag", data={"url": "http://x/"}, every=60)
    info = await queue.get_scheduler("r")
    assert info is not None
    return info


def report(outcome: str) -> dict[str, Any]:
    return {"outcome": outcome, "summary": "", "at": NOW_MS / 1000}


@pytest.mark.parametrize(
    ("fields", "state"),
    [
        ({}, "waiting"),
        ({"active_job": "7"}, "waiting"),  # the first run is under way
        ({"report": report("baseline")}, "ok"),
        ({"report": report("unchanged")}, "ok"),
        ({"report": report("changed")}, "changed"),
        ({"report": report("unchanged"), "last_change_ms": NOW_MS - 60_000}, "changed"),
        ({"report": report("unchanged"), "last_change_ms": NOW_MS - RECENT_CHANGE_MS}, "ok"),
        ({"report": report("retrying"), "fails": 1, "active_job": "7"}, "failing"),
        ({"report": report("retrying"), "fails": 2, "active_job": "7"}, "failing"),
        ({"fails": 1, "active_job": "7"}, "failing"),  # the first run's first attempt failed
        ({"report": report("retrying"), "fails": 3, "active_job": None}, "down"),  # gave up
        ({"report": report("retrying"), "fails": 4, "active_job": "8"}, "down"),  # again
        ({"report": report("failed"), "fails": 1, "active_job": None}, "down"),  # permanent
        ({"report": report("failed"), "fails": 1, "active_job": "8"}, "down"),
        ({"report": report("unchanged"), "state": {"up": False}}, "down"),
        ({"report": report("changed"), "state": {"up": False}}, "down"),  # went down
        ({"report": report("changed"), "state": {"up": True}}, "changed"),  # came back
        ({"report": report("unchanged"), "state": {"up": True}}, "ok"),
    ],
)
def test_state_rules(base: SchedulerInfo, fields: dict[str, Any], state: str) -> None:
    assert resource_state(dataclasses.replace(base, **fields), NOW_MS) == state


def test_iso_times() -> None:
    assert iso(None) is None
    assert iso(0) == "1970-01-01T00:00:00.000Z"
    assert iso(1_796_299_200.1235) == "2026-12-03T12:00:00.124Z"
    assert iso(1_796_299_200.9996) == "2026-12-03T12:00:01.000Z"
