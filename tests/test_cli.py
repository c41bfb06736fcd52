"""The `watcher` console script, run as a real subprocess against a real Redis and a real
local HTTP origin."""

from __future__ import annotations

import asyncio
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis
from rich.console import Console

from watcher.queue import Queue
from watcher.status import collect, live, render
from watcher.worker import Fail, Job, Worker

from .helpers import running, wait_for
from .origin import Origin

WATCHER = str(Path(sys.executable).parent / "watcher")


def watcher(*args: str, cwd: Path, env: dict[str, str] | None = None, timeout: float = 60):
    environment = {k: v for k, v in os.environ.items() if k != "WATCHER_REDIS_URL"}
    environment.update({"COLUMNS": "160", "NO_COLOR": "1", **(env or {})})
    return subprocess.run(
        [WATCHER, *args],
        cwd=cwd,
        env=environment,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def start_run(cwd: Path) -> subprocess.Popen[str]:
    """`watcher run` in the background, its log wide enough not to wrap."""
    environment = {k: v for k, v in os.environ.items() if k != "WATCHER_REDIS_URL"}
    return subprocess.Popen(
        [WATCHER, "run"],
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**environment, "COLUMNS": "300"},
    )


def write_config(path: Path, redis_url: str, queue: str, resources: str) -> Path:
    path.write_text(f"redis: {redis_url}\nqueue: {queue}\nresources:\n{resources}")
    return path


def resource(id: str, url: str, every: str = "200ms", extra: str = "") -> str:
    return f"  - id: {id}\n    url: {url}\n    every: {every}\n    min_every: 100ms\n{extra}"


def snapshot(redis_url: str, queue: str) -> dict[bytes, bytes]:
    client = redis.Redis.from_url(redis_url)
    keys = sorted(client.keys(f"watcher:{{{queue}}}:*"))
    return {key: client.dump(key) for key in keys}


def test_full_cycle(tmp_path: Path, redis_url: str, queue_name: str, origin: Origin) -> None:
    config = write_config(
        tmp_path / "watcher.yaml",
        redis_url,
        queue_name,
        resource("docs", origin.url + "docs") + resource("api", origin.url + "api", "1h"),
    )
    first = watcher("sync", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    assert "2 to create" in first.stdout
    again = watcher("sync", cwd=tmp_path)
    assert "nothing to do" in again.stdout

    run = start_run(tmp_path)

    def recorded(changes: int) -> None:
        """Wait until `docs` has that many changes in its history."""
        deadline = time.monotonic() + 20
        while len(json.loads(watcher("history", "docs", "--json", cwd=tmp_path).stdout)) < changes:
            assert time.monotonic() < deadline, f"not {changes} change(s) within 20 s"
            time.sleep(0.2)

    try:
        deadline = time.monotonic() + 20
        while not any(seen.path == "/docs" for seen in origin.requests):  # the baseline
            assert time.monotonic() < deadline, "docs never checked"
            time.sleep(0.1)
        time.sleep(0.5)  # the baseline's state written back
        origin.set(etag='"v2"')
        recorded(1)
        origin.set(etag='"v3"')
        recorded(2)
    finally:
        run.send_signal(signal.SIGTERM)
        out, _ = run.communicate(timeout=30)
    assert run.returncode == 0, out
    assert "docs changed" in out

    history = watcher("history", "docs", "--json", cwd=tmp_path)
    changes = json.loads(history.stdout)
    assert [(c["old"]["etag"], c["new"]["etag"]) for c in changes] == [
        ('"v2"', '"v3"'),
        ('"v1"', '"v2"'),
    ]
    assert "v3" in watcher("history", cwd=tmp_path).stdout

    status = json.loads(watcher("status", "--json", cwd=tmp_path).stdout)
    rows = {row["id"]: row for row in status["resources"]}
    assert rows["docs"]["outcome"] in ("unchanged", "changed")
    assert rows["docs"]["status_code"] in (200, 304)
    assert rows["docs"]["last_change"] is not None
    assert rows["api"]["outcome"] == "baseline"
    table = watcher("status", cwd=tmp_path).stdout
    assert "docs" in table and "every 200ms" in table and "every 1h" in table

    write_config(
        config,
        redis_url,
        queue_name,
        resource("docs", origin.url + "docs", "2s") + resource("new", origin.url + "new", "1h"),
    )
    dry = watcher("sync", "--dry-run", cwd=tmp_path)
    assert "1 to create, 1 to update, 1 to remove" in dry.stdout
    assert watcher("sync", "--dry-run", cwd=tmp_path).stdout == dry.stdout  # changed nothing
    edited = watcher("sync", cwd=tmp_path)
    lines = edited.stdout.splitlines()
    assert any("docs" in line and "schedule" in line for line in lines)
    assert any("new" in line and "create" in line for line in lines)
    assert any("api" in line and "remove" in line for line in lines)
    kept = json.loads(watcher("status", "--json", cwd=tmp_path).stdout)
    docs = next(r for r in kept["resources"] if r["id"] == "docs")
    assert docs["schedule"] == "every 2s" and docs["last_change"] is not None
    assert {r["id"] for r in kept["resources"]} == {"docs", "new"}
    assert "nothing to do" in watcher("sync", cwd=tmp_path).stdout


BAD_CONFIGS = {
    "syntax": ("resources:\n  - id: a\n    url: [unclosed\n", 4, "line 5"),
    "unknown key": (
        "resources:\n  - id: a\n    url: http://127.0.0.1/\n    evrey: 5m\n",
        4,
        "evrey",
    ),
    "duplicate id": (
        "resources:\n  - id: a\n    url: http://127.0.0.1/\n  - id: a\n    url: http://127.0.0.1/b\n",
        4,
        "id",
    ),
    "bad duration": (
        "resources:\n  - id: a\n    url: http://127.0.0.1/\n    every: soon\n",
        4,
        "every",
    ),
    "bad cron": (
        'resources:\n  - id: a\n    url: http://127.0.0.1/\n    cron: "61 * * * *"\n',
        4,
        "cron",
    ),
    "bad tz": (
        'resources:\n  - id: a\n    url: http://127.0.0.1/\n    cron: "0 * * * *"\n'
        "    tz: Mars/Base\n",
        5,
        "tz",
    ),
    "unknown check": (
        "resources:\n  - id: a\n    url: http://127.0.0.1/\n    check: etgg\n",
        4,
        "check",
    ),
    "unknown notifier": (
        "resources:\n  - id: a\n    url: http://127.0.0.1/\n    notify: [pager]\n",
        4,
        "notify",
    ),
    "missing env var": (
        "resources:\n  - id: a\n    url: http://127.0.0.1/\n    headers:\n"
        "      Authorization: ${WATCHER_TEST_UNSET_TOKEN}\n",
        5,
        "WATCHER_TEST_UNSET_TOKEN",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_CONFIGS))
def test_bad_config_exit_2_names_line_and_field_and_changes_nothing(
    case: str, tmp_path: Path, redis_url: str, queue_name: str
) -> None:
    good = write_config(
        tmp_path / "watcher.yaml",
        redis_url,
        queue_name,
        resource("keep", "http://127.0.0.1:9/keep", "1h"),
    )
    assert watcher("sync", cwd=tmp_path).returncode == 0
    before = snapshot(redis_url, queue_name)
    text, line, field = BAD_CONFIGS[case]
    good.write_text(f"redis: {redis_url}\nqueue: {queue_name}\n{text}")
    for command in ("sync", "run"):
        result = watcher(command, cwd=tmp_path)
        assert result.returncode == 2, result.stdout + result.stderr
        message = result.stderr
        assert f"watcher.yaml:{line + 2}" in message, message  # +2: the redis and queue lines
        assert field in message
        assert "Traceback" not in message
        assert len(message.splitlines()) <= 25
    assert snapshot(redis_url, queue_name) == before


def test_check_url_shows_conditional_request(tmp_path: Path, origin: Origin) -> None:
    result = watcher("check", origin.url + "page", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    out = result.stdout.lower()
    assert "baseline" in out and "304" in out and 'if-none-match: "v1"' in out
    assert not (tmp_path / ".watcher").exists()  # no Redis was started


def test_check_by_id_uses_the_yaml_resource(tmp_path: Path, origin: Origin) -> None:
    (tmp_path / "watcher.yaml").write_text(
        "resources:\n"
        + resource(
            "page",
            origin.url + "page",
            extra="    headers:\n      Authorization: Bearer sekrit-token\n",
        )
    )
    result = watcher("check", "--id", "page", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "304" in result.stdout and "sekrit-token" not in result.stdout
    assert origin.requests[0].header("authorization") == "Bearer sekrit-token"
    origin.set(status=403, reason="Forbidden for {authorization}")  # a server echoing it
    echoed = watcher("check", "--id", "page", cwd=tmp_path)
    assert echoed.returncode == 1 and "Forbidden for ***" in echoed.stdout
    assert "sekrit-token" not in echoed.stdout + echoed.stderr
    missing = watcher("check", "--id", "nope", cwd=tmp_path)
    assert missing.returncode == 2 and "no resource 'nope'" in missing.stderr


def test_check_failure_exit_1(tmp_path: Path, origin: Origin) -> None:
    origin.set(status=404)
    result = watcher("check", origin.url + "missing", cwd=tmp_path)
    assert result.returncode == 1 and "404" in result.stdout


def test_version_and_help(tmp_path: Path) -> None:
    version = watcher("--version", cwd=tmp_path)
    assert version.returncode == 0 and version.stdout.startswith("watcher ")
    for command in ("run", "sync", "worker", "status", "history", "check"):
        help_text = watcher(command, "--help", cwd=tmp_path)
        assert help_text.returncode == 0 and "examples:" in help_text.stdout
    assert watcher("frobnicate", cwd=tmp_path).returncode == 2


def test_unreachable_redis_is_exit_1_without_traceback(tmp_path: Path) -> None:
    write_config(
        tmp_path / "watcher.yaml",
        "redis://127.0.0.1:9/0",
        "q",
        resource("a", "http://127.0.0.1:9/"),
    )
    result = watcher("status", cwd=tmp_path)
    assert result.returncode == 1
    assert "cannot reach Redis" in result.stderr and "Traceback" not in result.stderr


def test_embedded_default(tmp_path: Path, origin: Origin) -> None:
    """No Redis configured: `watcher run` starts the embedded one, says so first, keeps its
    data under .watcher/ between runs."""
    (tmp_path / "watcher.yaml").write_text("resources:\n" + resource("page", origin.url))
    run = start_run(tmp_path)
    try:
        asyncio.run(wait_for(lambda: len(origin.requests) >= 2, 30, what="two runs"))
        time.sleep(0.3)  # the second run's outcome is written
    finally:
        run.send_signal(signal.SIGINT)
        out, _ = run.communicate(timeout=30)
    assert run.returncode == 0, out
    assert "embedded Redis" in out.splitlines()[0]
    assert (tmp_path / ".watcher" / "redis").is_dir()
    assert not (tmp_path / ".watcher" / "redis.url").exists()  # stopped with `run`
    status = json.loads(watcher("status", "--json", cwd=tmp_path).stdout)
    assert [r["id"] for r in status["resources"]] == ["page"]
    assert status["resources"][0]["outcome"] in ("baseline", "unchanged")  # runs were kept


async def test_status_live_renders_the_table(queue: Queue) -> None:
    await queue.upsert_scheduler("docs", name="etag", data={"url": "http://x/"}, every=30)
    buffer = io.StringIO()
    console = Console(file=buffer, width=120, force_terminal=True, color_system=None)
    task = asyncio.create_task(live(queue, console, interval=0.1))
    await asyncio.sleep(0.5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    screen = buffer.getvalue()
    assert "docs" in screen and "every 30s" in screen and "checks/min" in screen
    assert screen.count("resource") >= 3  # refreshed in place several times
    static = Console(file=io.StringIO(), width=120, record=True)
    static.print(render(await collect(queue)))
    assert "pending" in static.export_text()


async def test_status_table_shows_failing_resources_first_within_the_limit(queue: Queue) -> None:
    for id in ("ok0", "ok1", "ok2", "broken", "ok3", "ok4"):
        await queue.upsert_scheduler(
            id, name="etag", data={"url": "http://x/"}, every=30, immediately=True
        )

    async def run(job: Job) -> None:
        if job.scheduler_id == "broken":
            raise Fail("404 Not Found")

    async with running(Worker(queue, {"etag": run})):
        await wait_for(lambda: _failures(queue, "broken"), 5)
    console = Console(file=io.StringIO(), width=120, record=True)
    console.print(render(await collect(queue, limit=2), limit=2))
    text = console.export_text()
    shown = [id for id in ("ok0", "ok1", "ok2", "ok3", "ok4") if id in text]
    assert len(shown) == 1 and text.index("broken") < text.index(shown[0])
    assert "4 more not shown" in text


async def _failures(queue: Queue, id: str) -> int:
    info = await queue.get_scheduler(id)
    return info.fails if info else 0


async def test_run_reloads_the_yaml_and_keeps_running_on_a_bad_edit(
    tmp_path: Path, redis_url: str, queue_name: str, origin: Origin
) -> None:
    config = write_config(
        tmp_path / "watcher.yaml", redis_url, queue_name, resource("one", origin.url + "1", "1h")
    )
    run = start_run(tmp_path)
    notified = tmp_path / "notified"

    def both_synced() -> bool:
        status = json.loads(watcher("status", "--json", cwd=tmp_path).stdout)
        rows = {r["id"]: r for r in status["resources"]}
        return set(rows) == {"one", "two"} and bool(rows["two"]["outcome"])

    try:
        await asyncio.sleep(1.5)
        record = f"import sys; open({str(notified)!r}, 'a').write(sys.stdin.read())"
        write_config(
            config,
            redis_url,
            queue_name,
            resource("one", origin.url + "1", "1h")
            + resource("two", origin.url + "2", extra="    notify: [log]\n"),
        )
        with config.open("a") as yaml_file:  # a notifier the running process did not have
            yaml_file.write(
                f"notifiers:\n  log:\n    type: command\n"
                f"    command: [{sys.executable!r}, -c, {record!r}]\n"
            )
        await wait_for(both_synced, 10, step=0.3, what="the edited YAML synced")
        origin.set(etag='"v2"')
        await wait_for(notified.exists, 10, step=0.2, what="the new notifier run")
        assert '"resource":"two"' in notified.read_text()
        config.write_text(config.read_text() + "    every: never\n")
        await asyncio.sleep(2.5)
        assert run.poll() is None, "a bad edit stopped `watcher run`"
        elsewhere = ("-c", "none.yaml", "--redis", redis_url, "--queue", queue_name)
        status = json.loads(watcher("status", "--json", *elsewhere, cwd=tmp_path).stdout)
        assert {r["id"] for r in status["resources"]} == {"one", "two"}
    finally:
        run.send_signal(signal.SIGTERM)
        out, _ = run.communicate(timeout=30)
    assert run.returncode == 0, out
    assert "invalid" in out and "keeping the running configuration" in out


def test_read_commands_in_an_empty_folder_start_nothing_and_say_so(tmp_path: Path) -> None:
    for command in (["status"], ["status", "--json"], ["history"]):
        done = watcher(*command, cwd=tmp_path)
        assert done.returncode == 1, done
        assert "no Redis to read" in done.stderr and "watcher run" in done.stderr
    assert list(tmp_path.iterdir()) == []  # no .watcher/, no Redis started


def test_usage_errors_exit_2_with_a_hint(tmp_path: Path, redis_url: str, queue_name: str) -> None:
    check = watcher("check", "example.org", cwd=tmp_path)
    assert check.returncode == 2 and "did you mean https://example.org?" in check.stderr
    status = watcher("status", "--redis", "localhost:6379", cwd=tmp_path)
    assert status.returncode == 2 and "did you mean redis://localhost:6379?" in status.stderr
    history = watcher(
        "history", "nosuchid", "--redis", redis_url, "--queue", queue_name, cwd=tmp_path
    )
    assert history.returncode == 2 and "no resource 'nosuchid'" in history.stderr


def test_read_commands_read_the_yaml_within_its_size_limit(tmp_path: Path) -> None:
    (tmp_path / "watcher.yaml").write_text("queue: q\nresources: []\n" + "# padding\n" * 100)
    done = watcher("status", cwd=tmp_path, env={"WATCHER_MAX_CONFIG_BYTES": "200"})
    assert done.returncode == 2, done
    assert "watcher.yaml" in done.stderr and "200" in done.stderr
