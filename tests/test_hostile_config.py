"""Hostile and careless configuration files (issue 8): YAML alias bombs and oversized
values are refused quickly and in little memory, a reload of a bad file does not stall
`watcher run`, schedules that cannot work fail at load, and secrets written as ``${VAR}``
never reach Redis. CLI runs go through the console script against a private Redis."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
import resource
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest
import redis

from watcher.check import CheckFailed, Resource
from watcher.cli import off_the_loop
from watcher.config import ConfigError, ResourceConfig, load_config, parse_config
from watcher.queue import Queue
from watcher.secrets import url_keeping_references
from watcher.sync import plan_sync

from .helpers import wait_for
from .origin import Origin

WATCHER = str(Path(sys.executable).parent / "watcher")
FAST = "    every: 200ms\n    min_every: 100ms\n"
"""A resource checked five times a second: the documented opt-in below the 1 s floor."""


def billion_laughs(indent: str = "") -> str:
    """Ten levels of ten aliases each: 10**10 strings once expanded, 400 bytes written."""
    lines = [f'{indent}l0: &l0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for level in range(1, 10):
        aliases = ",".join([f"*l{level - 1}"] * 10)
        lines.append(f"{indent}l{level}: &l{level} [{aliases}]")
    return "\n".join(lines) + "\n"


def bomb_config(redis_url: str, queue: str) -> str:
    return (
        f"redis: {redis_url}\nqueue: {queue}\nresources:\n"
        "  - id: bomb\n    url: http://127.0.0.1:9/\n    options:\n" + billion_laughs("      ")
    )


def watcher(
    *args: str, cwd: Path, env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("WATCHER_")}
    environment.update({"COLUMNS": "200", "NO_COLOR": "1", **(env or {})})
    return subprocess.run(
        [WATCHER, *args], cwd=cwd, env=environment, capture_output=True, text=True, timeout=timeout
    )


def start_watcher(
    *args: str, cwd: Path, env: dict[str, str] | None = None
) -> subprocess.Popen[str]:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("WATCHER_")}
    return subprocess.Popen(
        [WATCHER, *args],
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**environment, "COLUMNS": "300", "NO_COLOR": "1", **(env or {})},
    )


def stop(process: subprocess.Popen[str], within: float = 10) -> tuple[str, float]:
    """SIGTERM; the output, and how long the process took to exit."""
    process.send_signal(signal.SIGTERM)
    started = time.monotonic()
    out, _ = process.communicate(timeout=within)
    return out, time.monotonic() - started


def queue_keys(redis_url: str, queue: str) -> list[bytes]:
    return list(redis.Redis.from_url(redis_url).scan_iter(f"watcher:{{{queue}}}:*"))


# ---------------------------------------------------------------------------- alias bombs


def _limit_child_memory() -> None:
    """A broken loader must fail this test, not take the machine's memory with it."""
    resource.setrlimit(resource.RLIMIT_AS, (2 * 1024**3, 2 * 1024**3))


def test_billion_laughs_is_refused_in_milliseconds_and_little_memory(tmp_path: Path) -> None:
    """In a fresh interpreter, so that its peak memory is the parse's alone."""
    path = tmp_path / "watcher.yaml"
    path.write_text(
        "resources:\n  - id: bomb\n    url: http://127.0.0.1:9/\n    options:\n"
        + billion_laughs("      ")
    )
    probe = textwrap.dedent(
        f"""
        import json, resource, time
        from watcher.config import ConfigError, load_config
        started = time.perf_counter()
        try:
            load_config({str(path)!r}, env={{}})
            error = None
        except ConfigError as exc:
            error = str(exc)
        seconds = time.perf_counter() - started
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        print(json.dumps({{"error": error, "seconds": seconds, "peak": peak}}))
        """
    )
    child = subprocess.run(
        [sys.executable, "-c", probe],
        capture_output=True,
        text=True,
        timeout=60,
        preexec_fn=_limit_child_memory,
    )
    assert child.returncode == 0, child.stderr[-2000:]
    result = json.loads(child.stdout)
    assert result["seconds"] < 1.0
    assert result["peak"] < 200 * 1024**2
    error = result["error"]
    assert error is not None and error.startswith(f"{path}:")
    line = int(error.split(":")[1])
    assert path.read_text().splitlines()[line - 1].lstrip().startswith("l")  # an alias line
    assert "aliases expand" in error and "WATCHER_MAX_CONFIG_NODES" in error


def test_billion_laughs_exits_2_from_sync_quickly_and_changes_nothing(
    tmp_path: Path, redis_url: str, queue_name: str
) -> None:
    (tmp_path / "watcher.yaml").write_text(bomb_config(redis_url, queue_name))
    # A wrapper whose only child is `watcher`: RUSAGE_CHILDREN is then that process's peak.
    wrapper = (
        "import resource, subprocess, sys; "
        f"done = subprocess.run([{WATCHER!r}, 'sync'], capture_output=True, text=True); "
        "sys.stderr.write(done.stderr); sys.stdout.write(done.stdout); "
        "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024); "
        "sys.exit(done.returncode)"
    )
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-c", wrapper],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "COLUMNS": "200", "NO_COLOR": "1"},
        preexec_fn=_limit_child_memory,
    )
    wall = time.monotonic() - started
    assert done.returncode == 2, done.stderr
    assert wall < 10  # the parse itself is milliseconds; this is the interpreter's start-up
    peak = done.stdout.split()[-1]
    assert int(peak) < 200 * 1024**2
    assert "watcher.yaml:" in done.stderr and "aliases expand" in done.stderr
    assert "Traceback" not in done.stderr and "to create" not in done.stdout
    assert queue_keys(redis_url, queue_name) == []


def test_every_use_of_an_alias_counts() -> None:
    """One anchor of 10 values used N times adds 11 * N values (the list and its items)."""
    anchor = "a: &ten [1,2,3,4,5,6,7,8,9,10]\n"

    def uses(count: int) -> str:
        return anchor + "b: [" + ",".join(["*ten"] * count) + "]\n"

    limit = {"WATCHER_MAX_CONFIG_NODES": "1000"}
    with pytest.raises(ConfigError) as refused:
        parse_config(uses(91), env=limit)  # 1,001 values
    assert "watcher.yaml:2:" in str(refused.value) and "1,000 values" in str(refused.value)
    with pytest.raises(ConfigError) as accepted:
        parse_config(uses(90), env=limit)  # 990: within the limit, so only `a`, `b` are wrong
    assert "unknown key `a`" in str(accepted.value)


def test_aliased_text_counts_against_the_size_limit() -> None:
    text = 'a: &big "' + "x" * 1000 + '"\nb: [' + ",".join(["*big"] * 20) + "]\n"
    with pytest.raises(ConfigError) as refused:
        parse_config(text, env={"WATCHER_MAX_CONFIG_BYTES": "16KB"})
    assert "watcher.yaml:2:" in str(refused.value) and "16KB of text" in str(refused.value)


def test_merge_keys_do_not_multiply() -> None:
    """`<<: [*a, *a]` on every level doubled the pairs each level: 2**24 here."""
    lines = ["resources:", "  - id: a", "    url: http://127.0.0.1:9/"]
    lines += ["    check: mypkg.checks:price", "    options:"]  # a plugin: any options
    lines.append("      m0: &m0 {x: 1}")
    lines += [f"      m{i}: &m{i} {{<<: [*m{i - 1}, *m{i - 1}], k{i}: {i}}}" for i in range(1, 25)]
    started = time.perf_counter()
    options = parse_config("\n".join(lines), env={}).resources[0].options
    assert time.perf_counter() - started < 1.0
    assert options["m24"] == {"x": 1, **{f"k{i}": i for i in range(1, 25)}}


def test_deep_nesting_is_an_error_not_a_crash() -> None:
    with pytest.raises(ConfigError) as error:
        parse_config("x: " + "[" * 500 + "]" * 500)
    assert "watcher.yaml:1:" in str(error.value) and "nested deeper than" in str(error.value)
    chained = "".join(
        f"a{i}: &a{i} [[[[[[[[[[{'*a' + str(i - 1) if i else 1}]]]]]]]]]]\n" for i in range(20)
    )
    with pytest.raises(ConfigError) as through_aliases:
        parse_config(chained)
    assert "nested deeper than" in str(through_aliases.value)


# ---------------------------------------------------------------------------- size limits


def test_a_50mb_string_is_refused_with_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "watcher.yaml"
    with path.open("w") as file:
        file.write("resources:\n  - id: big\n    url: http://127.0.0.1:9/\n    options:\n")
        file.write('      blob: "' + "x" * 50_000_000 + '"\n')
    with pytest.raises(ConfigError) as too_big:
        load_config(path, env={})
    message = str(too_big.value)
    assert message.startswith(f"{path}:5:") and "larger than 10MB" in message

    with pytest.raises(ConfigError) as too_long:
        load_config(path, env={"WATCHER_MAX_CONFIG_BYTES": "100MB"})
    message = str(too_long.value)
    assert message.startswith(f"{path}:5:13: resources[0].options.blob:")
    assert "50,000,000 characters" in message and "WATCHER_MAX_CONFIG_STRING" in message


def test_limits_come_from_the_environment() -> None:
    text = (
        "resources:\n  - id: a\n    url: http://127.0.0.1:9/\n    check: mypkg.checks:price\n"
        '    options: {s: "' + "y" * 100 + '"}\n'
    )
    assert parse_config(text, env={}).resources[0].options["s"] == "y" * 100
    with pytest.raises(ConfigError) as short:
        parse_config(text, env={"WATCHER_MAX_CONFIG_STRING": "99"})
    assert "watcher.yaml:5:18: resources[0].options.s:" in str(short.value)
    with pytest.raises(ConfigError) as small:
        parse_config(text, env={"WATCHER_MAX_CONFIG_BYTES": "64"})
    assert "larger than 64 bytes" in str(small.value)
    for name in (
        "WATCHER_MAX_CONFIG_BYTES",
        "WATCHER_MAX_CONFIG_STRING",
        "WATCHER_MAX_CONFIG_NODES",
    ):
        with pytest.raises(ConfigError) as bad:
            parse_config(text, env={name: "lots"})
        assert name in str(bad.value)


# ---------------------------------------------------------------------------- the reload


async def test_off_the_loop_keeps_the_loop_running_and_does_not_hold_up_exit() -> None:
    gaps: list[float] = []

    async def tick() -> None:
        last = time.monotonic()
        while True:
            await asyncio.sleep(0.01)
            gaps.append(time.monotonic() - last)
            last = time.monotonic()

    ticker = asyncio.create_task(tick())
    try:

        def slow() -> int:
            time.sleep(0.5)
            return 42

        assert await off_the_loop(slow) == 42
    finally:
        ticker.cancel()
    assert len(gaps) > 20 and max(gaps) < 0.2
    with pytest.raises(ZeroDivisionError):
        await off_the_loop(lambda: 1 // 0)

    # A process whose loop ends while the work still runs exits at once.
    script = (
        "import asyncio, time\n"
        "from watcher.cli import off_the_loop\n"
        "async def main():\n"
        "    try:\n"
        "        await asyncio.wait_for(off_the_loop(lambda: time.sleep(30)), 0.2)\n"
        "    except TimeoutError:\n"
        "        pass\n"
        "asyncio.run(main())\n"
    )
    started = time.monotonic()
    subprocess.run([sys.executable, "-c", script], check=True, timeout=20)
    assert time.monotonic() - started < 10


async def test_run_survives_a_billion_laughs_reload_and_stops_on_sigterm(
    tmp_path: Path, redis_url: str, queue_name: str, origin: Origin
) -> None:
    config = tmp_path / "watcher.yaml"
    config.write_text(
        f"redis: {redis_url}\nqueue: {queue_name}\n"
        f"resources:\n  - id: steady\n    url: {origin.url}steady\n{FAST}"
    )
    run = start_watcher("run", "--transport", "httpx", cwd=tmp_path)
    try:
        await wait_for(lambda: len(origin.requests) >= 3, 20, step=0.1, what="first checks")
        config.write_text(bomb_config(redis_url, queue_name))
        await asyncio.sleep(2.5)  # the reload polls once a second
        before = len(origin.requests)
        await asyncio.sleep(2.0)
        assert len(origin.requests) - before >= 5, "checks stalled after the reload"
        assert run.poll() is None
    finally:
        out, took = stop(run)
    assert run.returncode == 0, out
    assert took < 5
    assert "keeping the running configuration" in out and "aliases expand" in out


# ---------------------------------------------------------------------------- schedules

BAD_SCHEDULES = [
    ("    cron: '0 0 30 2 *'\n", "cron", "never fires"),
    ("    every: 10s\n    jitter: 10s\n", "jitter", "shorter than `every`"),
    ("    cron: '*/5 * * * *'\n    jitter: 5m\n", "jitter", "between the cron's runs"),
    ("    every: 99999999999d\n", "every", "at most 365d"),
    ("    every: 1ms\n", "every", "min_every"),
]


@pytest.mark.parametrize(("schedule", "field", "message"), BAD_SCHEDULES)
def test_a_schedule_that_cannot_work_exits_2_at_its_line(
    tmp_path: Path, redis_url: str, queue_name: str, schedule: str, field: str, message: str
) -> None:
    text = (
        f"redis: {redis_url}\nqueue: {queue_name}\nresources:\n"
        f"  - id: fine\n    url: http://127.0.0.1:9/fine\n    every: 1h\n"
        f"  - id: bad\n    url: http://127.0.0.1:9/bad\n{schedule}"
    )
    (tmp_path / "watcher.yaml").write_text(text)
    lines = text.splitlines()
    bad = lines.index("  - id: bad")
    line = next(i for i, t in enumerate(lines[bad:], bad + 1) if t.strip().startswith(field))
    done = watcher("sync", cwd=tmp_path)
    assert done.returncode == 2, done.stdout + done.stderr
    assert f"watcher.yaml:{line}:" in done.stderr
    assert f'resources[1] (id "bad").{field}:' in done.stderr and message in done.stderr
    assert "Traceback" not in done.stderr and "to create" not in done.stdout
    assert queue_keys(redis_url, queue_name) == []


def test_min_every_lets_a_resource_go_below_the_floor(
    tmp_path: Path, redis_url: str, queue_name: str
) -> None:
    (tmp_path / "watcher.yaml").write_text(
        f"redis: {redis_url}\nqueue: {queue_name}\n"
        f"resources:\n  - id: quick\n    url: http://127.0.0.1:9/\n{FAST}"
    )
    done = watcher("sync", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "1 to create" in done.stdout


async def test_sync_refuses_a_schedule_before_the_plan(queue: Queue) -> None:
    """Whatever gets past validation, the queue's own rules are tried before a plan exists."""
    config = parse_config("resources:\n  - id: a\n    url: http://127.0.0.1:9/\n", env={})
    unchecked = ResourceConfig.model_construct(**{**config.resources[0].__dict__, "every": 1e15})
    config.resources[0] = unchecked
    with pytest.raises(ConfigError) as error:
        await plan_sync(queue, config)
    assert 'resources[0] (id "a").every: `every` must be at most 365d' in str(error.value)
    assert await queue.scheduler_ids() == []


# ---------------------------------------------------------------------------- secrets

SECRET_ENV = {
    "WATCHER_TEST_TOKEN": "tok-7Qx9-planted",
    "WATCHER_TEST_KEY": "key-3Fv2-planted",
    "WATCHER_TEST_PASS": "pw-8Lm4-planted",
}


def read_key(client: Any, key: bytes) -> bytes:
    """A key, its value read according to its type, and its DUMP, as one blob."""
    kind = client.type(key).decode()
    seen: list[Any] = [key, client.dump(key)]
    if kind == "string":
        seen.append(client.get(key))
    elif kind == "hash":
        seen += [part for pair in client.hgetall(key).items() for part in pair]
    elif kind == "list":
        seen += client.lrange(key, 0, -1)
    elif kind == "set":
        seen += client.smembers(key)
    elif kind == "zset":
        seen += [member for member, _ in client.zrange(key, 0, -1, withscores=True)]
    elif kind == "stream":
        for _, fields in client.xrange(key):
            seen += [part for pair in fields.items() for part in pair]
    return b"\n".join(part for part in seen if isinstance(part, bytes))


def everything_in(redis_url: str, queue: str | None = None) -> dict[bytes, bytes]:
    """Every key of the Redis server (SCAN), or of one queue, each read whole. (Other tests'
    finished runs expire meanwhile in a shared server: a queue of its own is the stable view.)"""
    client: Any = redis.Redis.from_url(redis_url)  # redis-py's stubs type replies loosely
    match = "*" if queue is None else f"watcher:{{{queue}}}:*"
    return {key: read_key(client, key) for key in client.scan_iter(match=match, count=1000)}


async def test_secrets_reach_the_origin_but_never_redis(
    tmp_path: Path, redis_url: str, queue_name: str, origin: Origin
) -> None:
    host = origin.url.removeprefix("http://")
    (tmp_path / "watcher.yaml").write_text(
        f"redis: {redis_url}\nqueue: {queue_name}\nresources:\n"
        f"  - id: bearer\n    url: {origin.url}bearer\n{FAST}"
        "    headers:\n"
        "      Authorization: Bearer ${WATCHER_TEST_TOKEN}\n"
        "      X-Api-Key: ${WATCHER_TEST_KEY}\n"
        f"  - id: basic\n    url: http://bot:${{WATCHER_TEST_PASS}}@{host}basic\n{FAST}"
    )
    synced = watcher("sync", cwd=tmp_path, env=SECRET_ENV)
    assert synced.returncode == 0, synced.stderr
    run = start_watcher("run", "--transport", "httpx", cwd=tmp_path, env=SECRET_ENV)
    try:

        def checked_often() -> bool:
            paths = [r.path for r in origin.requests]
            return paths.count("/bearer") >= 3 and paths.count("/basic") >= 3

        await wait_for(checked_often, 30, step=0.2, what="a few runs of each resource")
        origin.set(etag='"v2"')  # a change: history, events and the changes stream too
        await asyncio.sleep(1.0)
    finally:
        out, _ = stop(run)
    assert run.returncode == 0, out

    bearer = [r for r in origin.requests if r.path == "/bearer"]
    basic = [r for r in origin.requests if r.path == "/basic"]
    assert {r.header("authorization") for r in bearer} == {"Bearer tok-7Qx9-planted"}
    assert {r.header("x-api-key") for r in bearer} == {"key-3Fv2-planted"}
    credentials = base64.b64encode(b"bot:pw-8Lm4-planted").decode()
    assert {r.header("authorization") for r in basic} == {f"Basic {credentials}"}

    dump = everything_in(redis_url)
    assert any(b"${WATCHER_TEST_TOKEN}" in value for value in dump.values())  # the reference
    assert any(b"bot:${WATCHER_TEST_PASS}@" in value for value in dump.values())
    assert any(key.endswith(b":changes") for key in dump), "no change was recorded"
    for secret in [*SECRET_ENV.values(), credentials]:
        leaked = [key for key, value in dump.items() if secret.encode() in value]
        assert leaked == [], f"{secret} is stored in {leaked}"


async def test_a_worker_without_the_variable_fails_the_run_naming_it(
    tmp_path: Path, redis_url: str, queue_name: str, origin: Origin
) -> None:
    (tmp_path / "watcher.yaml").write_text(
        f"redis: {redis_url}\nqueue: {queue_name}\nresources:\n"
        f"  - id: bearer\n    url: {origin.url}bearer\n{FAST}"
        "    headers:\n      Authorization: Bearer ${WATCHER_TEST_TOKEN}\n"
    )
    assert watcher("sync", cwd=tmp_path, env=SECRET_ENV).returncode == 0
    # As on another machine: no variables, no YAML.
    elsewhere = ("-c", "none.yaml", "--redis", redis_url, "--queue", queue_name)
    worker = start_watcher("worker", *elsewhere, "--transport", "httpx", cwd=tmp_path)
    try:
        await asyncio.sleep(3.0)
    finally:
        out, _ = stop(worker)
    assert "environment variable WATCHER_TEST_TOKEN is not set on this worker" in out
    assert origin.requests == []  # nothing was sent without its credential


def test_from_template_expands_only_what_sync_kept() -> None:
    template = {
        "id": "r",
        "url": "https://bot:${PASS}@example.test/a$$b",
        "headers": {"Authorization": "Bearer ${TOKEN}", "Accept": "${NOT_EXPANDED}"},
        "from_env": ["headers.Authorization", "url"],
    }
    resource = Resource.from_template(template, env={"PASS": "p", "TOKEN": "t"})
    assert resource.url == "https://bot:p@example.test/a$b"
    assert resource.headers == {"Authorization": "Bearer t", "Accept": "${NOT_EXPANDED}"}
    with pytest.raises(CheckFailed) as missing:
        Resource.from_template(template, env={"PASS": "p"})
    assert "environment variable TOKEN is not set" in missing.value.reason
    assert "p" not in missing.value.reason.replace("stored", "")


def test_what_sync_stores_for_secrets(caplog: pytest.LogCaptureFixture) -> None:
    env = {"TOKEN": "t0ken", "PASS": "pa55", "HOST": "example.test", "URL": "https://u:p@h/"}
    text = """
        defaults:
          headers:
            Authorization: Bearer ${TOKEN}
        resources:
          - id: refs
            url: https://bot:${PASS}@${HOST}/x
            headers:
              Accept: ${HOST}
          - id: literal
            url: https://bot:hunter2@example.test/
            headers:
              Cookie: session=abc
          - id: whole
            url: ${URL}
    """
    with caplog.at_level(logging.WARNING, logger="watcher.config"):
        refs, literal, whole = parse_config(textwrap.dedent(text), env=env).resources
    assert refs.template()["url"] == "https://bot:${PASS}@example.test/x"
    assert refs.template()["headers"] == {
        "Authorization": "Bearer ${TOKEN}",
        "Accept": "example.test",  # not a secret: stored expanded
    }
    assert refs.template()["from_env"] == ["headers.Authorization", "url"]
    assert refs.url == "https://bot:pa55@example.test/x"  # what the check sees, once expanded
    assert whole.template()["url"] == "${URL}"
    assert literal.template()["headers"]["Cookie"] == "session=abc"
    assert literal.template()["from_env"] == ["headers.Authorization"]  # from defaults
    (warning,) = [r.getMessage() for r in caplog.records]
    assert 'resources[1] (id "literal").headers.Cookie (line 13)' in warning
    assert 'resources[1] (id "literal").url (line 11)' in warning
    assert "${VAR}" in warning and "refs" not in warning


def test_a_rotated_secret_keeps_the_identity() -> None:
    text = (
        "resources:\n  - id: a\n    url: https://x.test/\n    headers:\n      Authorization: ${T}\n"
    )
    first = parse_config(text, env={"T": "one"}).resources[0]
    rotated = parse_config(text, env={"T": "two"}).resources[0]
    assert first.identity() == rotated.identity()
    assert first.template() == rotated.template()


@pytest.mark.parametrize(
    ("written", "stored"),
    [
        ("https://${U}:${P}@h.test/", "https://${U}:${P}@h.test/"),
        ("https://bot:${P}@h.test/${Q}", "https://bot:${P}@h.test/q"),
        ("https://bot:${P}@h.test/$$x", "https://bot:${P}@h.test/$$x"),
        ("https://bot:${P:-}@h.test/", "https://bot:${P:-}@h.test/"),
        ("https://h.test/${P}", None),  # no user info: nothing to keep
        ("https://bot:pw@h.test/${Q}", None),  # user info written literally
    ],
)
def test_url_keeping_references(written: str, stored: str | None) -> None:
    assert url_keeping_references(written, {"U": "u", "P": "p", "Q": "q"}) == stored
