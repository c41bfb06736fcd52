from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import sys
import threading
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from rich.text import Text

from watcher.change import Change
from watcher.notifiers import (
    CommandNotifier,
    ConsoleNotifier,
    Notifier,
    NotifyFailed,
    WebhookNotifier,
    build_notifiers,
    notify_all,
)

SECRET = "Bearer s3cr3t-value"


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(var, raising=False)


def make_change(**overrides: Any) -> Change:
    values: dict[str, Any] = {
        "resource": "docs",
        "check": "etag",
        "url": "https://example.test/docs",
        "time": 1_700_000_000.5,
        "old": {"etag": '"a"'},
        "new": {"etag": '"b"'},
        "status_code": 200,
        "summary": 'ETag "a" → "b"',
    }
    values.update(overrides)
    return Change(**values)


# --- a real HTTP server on 127.0.0.1 ---------------------------------------------------------


@dataclass
class Reply:
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    hang: bool = False


@dataclass
class Received:
    at: float
    path: str
    headers: dict[str, str]
    body: bytes


class HookServer:
    def __init__(self) -> None:
        self.replies: deque[Reply] = deque()
        self.requests: list[Received] = []
        self.release = threading.Event()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                server.requests.append(
                    Received(time.monotonic(), self.path, dict(self.headers), body)
                )
                reply = server.replies.popleft() if server.replies else Reply()
                if reply.hang:
                    server.release.wait(5)
                    return
                self.send_response(reply.status)
                for name, value in reply.headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/hook/tok123"
        # a short poll interval keeps shutdown() (and so each test's teardown) fast
        self.thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )

    def reply(self, *replies: Reply) -> None:
        self.replies.extend(replies)


@pytest.fixture
def hook() -> Iterator[HookServer]:
    server = HookServer()
    server.thread.start()
    try:
        yield server
    finally:
        server.release.set()
        server.httpd.shutdown()
        server.httpd.server_close()


def webhook(url: str, **kwargs: Any) -> WebhookNotifier:
    kwargs.setdefault("backoff_base", 0.02)
    kwargs.setdefault("backoff_cap", 0.5)
    return WebhookNotifier(kwargs.pop("name", "hook"), url, **kwargs)


def notify_warnings(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [
        r for r in caplog.records if r.name == "watcher.notify" and r.levelno >= logging.WARNING
    ]


# --- console -----------------------------------------------------------------------------------


async def test_console_logs_one_markup_line(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="watcher.changes")
    await ConsoleNotifier().send(make_change())
    [record] = [r for r in caplog.records if r.name == "watcher.changes"]
    assert record.levelno == logging.INFO
    assert record.getMessage() == '[bold]docs[/] changed: ETag "a" → "b" (200)'
    assert record.markup is True  # type: ignore[attr-defined]


async def test_console_escapes_markup_in_values(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="watcher.changes")
    change = make_change(resource="api[v2]", summary='ETag "[/x]" → "[bold]"', status_code=None)
    await ConsoleNotifier().send(change)
    [record] = [r for r in caplog.records if r.name == "watcher.changes"]
    assert Text.from_markup(record.getMessage()).plain == 'api[v2] changed: ETag "[/x]" → "[bold]"'


async def test_console_describes_validators_without_summary(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="watcher.changes")
    await ConsoleNotifier().send(make_change(summary=""))
    assert 'changed: ETag "a" → "b" (200)' in caplog.records[-1].getMessage()


# --- webhook -----------------------------------------------------------------------------------


async def test_webhook_posts_change_json(hook: HookServer) -> None:
    change = make_change(id="1700000000500-0", details="- a\n+ b")
    await webhook(hook.url, headers={"X-Env": "prod", "Authorization": SECRET}).send(change)
    [req] = hook.requests
    assert req.path == "/hook/tok123"
    sent = json.loads(req.body)
    assert (sent.pop("title"), sent.pop("body")) == (
        "watcher: docs changed",
        'docs (https://example.test/docs) changed at 2023-11-14 22:13 UTC: ETag "a" → "b"'
        "\n\n- a\n+ b",
    )
    assert sent == {**change.to_dict(), "event": "change"}
    headers = {k.lower(): v for k, v in req.headers.items()}
    assert headers["content-type"] == "application/json"
    assert headers["x-env"] == "prod"
    assert headers["authorization"] == SECRET
    assert headers["user-agent"].startswith("watcher/")


async def test_webhook_uses_shared_client_and_leaves_it_open(hook: HookServer) -> None:
    async with httpx.AsyncClient() as client:
        notifier = webhook(hook.url, client=client)
        await notifier.send(make_change())
        await notifier.send(make_change())
        assert not client.is_closed
    assert len(hook.requests) == 2


async def test_webhook_retries_5xx_with_backoff(
    hook: HookServer, caplog: pytest.LogCaptureFixture
) -> None:
    hook.reply(Reply(500), Reply(502))
    await webhook(hook.url, retries=3, backoff_base=0.05).send(make_change())
    assert len(hook.requests) == 3
    gaps = [b.at - a.at for a, b in zip(hook.requests, hook.requests[1:], strict=False)]
    # jitter keeps each delay within 50-100% of base * 2**retry
    assert gaps[0] >= 0.025
    assert gaps[1] >= 0.05
    assert notify_warnings(caplog) == []


async def test_webhook_404_is_not_retried(hook: HookServer) -> None:
    hook.reply(Reply(404))
    with pytest.raises(NotifyFailed, match=r"HTTP 404 Not Found \(not retried\)"):
        await webhook(hook.url, retries=3).send(make_change())
    assert len(hook.requests) == 1


async def test_webhook_honours_retry_after_on_429(hook: HookServer) -> None:
    hook.reply(Reply(429, {"Retry-After": "0.3"}))
    await webhook(hook.url, retries=2, backoff_base=0.01).send(make_change())
    assert len(hook.requests) == 2
    assert hook.requests[1].at - hook.requests[0].at >= 0.3


async def test_webhook_gives_up_when_retry_after_exceeds_cap(hook: HookServer) -> None:
    hook.reply(Reply(429, {"Retry-After": "120"}))
    started = time.monotonic()
    with pytest.raises(NotifyFailed, match="Retry-After 120s"):
        await webhook(hook.url, retries=3, backoff_cap=1.0).send(make_change())
    assert len(hook.requests) == 1
    assert time.monotonic() - started < 1.0


async def test_webhook_final_failure_is_one_masked_reason_for_the_caller_to_say(
    hook: HookServer, caplog: pytest.LogCaptureFixture
) -> None:
    hook.reply(*[Reply(500)] * 3)
    headers = {"Authorization": SECRET, "X-Hook-Token": "tok-value", "X-Env": "prod"}
    notifier = webhook(hook.url, name="ops-hook", headers=headers, retries=2)
    with pytest.raises(NotifyFailed) as info:
        await notifier.send(make_change())
    assert not info.value.logged  # the courier says it, once per delivery
    assert "HTTP 500" in info.value.reason and "after 3 attempts" in info.value.reason
    assert "/hook/tok123" not in info.value.reason  # the URL's path may be its credential
    assert len(hook.requests) == 3
    assert notify_warnings(caplog) == []
    assert "s3cr3t" not in str(info.value) and "tok-value" not in str(info.value)


async def test_webhook_timeout_is_retried_then_fails(hook: HookServer) -> None:
    hook.reply(Reply(hang=True), Reply(hang=True))
    started = time.monotonic()
    with pytest.raises(NotifyFailed, match=r"timed out after 0\.2s after 2 attempts"):
        await webhook(hook.url, timeout=0.2, retries=1).send(make_change())
    assert len(hook.requests) == 2
    assert time.monotonic() - started < 1.5


async def test_webhook_connect_error_is_retried() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(NotifyFailed, match=r"ConnectError.*after 2 attempts"):
        await webhook(f"http://127.0.0.1:{port}/", retries=1).send(make_change())


def test_webhook_rejects_bad_url() -> None:
    with pytest.raises(ValueError, match="http"):
        WebhookNotifier("hook", "ftp://example.test/")


# --- command -----------------------------------------------------------------------------------

RECORD_SCRIPT = """
import json, os, sys
out = {"stdin": sys.stdin.read(), "env": dict(os.environ)}
with open(sys.argv[1], "w") as f:
    json.dump(out, f)
"""


async def test_command_gets_json_on_stdin_and_env(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("INHERITED_VAR", "not passed on")
    monkeypatch.setenv("LC_TIME", "C")
    out = tmp_path / "out.json"
    change = make_change(id="1-0")
    await CommandNotifier("cmd", [sys.executable, "-c", RECORD_SCRIPT, str(out)], 5).send(change)
    seen = json.loads(out.read_text())
    assert json.loads(seen["stdin"]) == change.to_dict()
    watcher_vars = {k: v for k, v in seen["env"].items() if k.startswith("WATCHER_")}
    assert watcher_vars == {
        "WATCHER_RESOURCE": "docs",
        "WATCHER_URL": "https://example.test/docs",
        "WATCHER_CHECK": "etag",
        "WATCHER_SUMMARY": 'ETag "a" → "b"',
        "WATCHER_STATUS_CODE": "200",
        "WATCHER_OLD_ETAG": '"a"',
        "WATCHER_NEW_ETAG": '"b"',
        "WATCHER_CHANGE_JSON": change.to_json(),
        "WATCHER_TITLE": "watcher: docs changed",
        "WATCHER_BODY": "docs (https://example.test/docs) changed at 2023-11-14 22:13 UTC: "
        'ETag "a" → "b"',
    }
    # A clean environment: the basics, not whatever the worker inherited.
    assert "INHERITED_VAR" not in seen["env"]
    assert seen["env"]["PATH"] == os.environ["PATH"] and seen["env"]["LC_TIME"] == "C"


@pytest.mark.parametrize(
    "env",
    [["API_TOKEN", "UNSET_VAR"], {"API_TOKEN": "given", "MODE": "prod"}],
    ids=["names", "map"],
)
async def test_command_env_passes_on_only_what_its_config_names(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, env: list[str] | dict[str, str]
) -> None:
    monkeypatch.setenv("API_TOKEN", "from-the-worker")
    monkeypatch.setenv("WATCHER_REDIS_URL", "redis://:hunter2@db:6379/0")
    monkeypatch.delenv("UNSET_VAR", raising=False)
    out = tmp_path / "out.json"
    argv = [sys.executable, "-c", RECORD_SCRIPT, str(out)]
    await CommandNotifier("cmd", argv, 5, env=env).send(make_change())
    seen = json.loads(out.read_text())["env"]
    if isinstance(env, dict):
        assert seen["API_TOKEN"] == "given" and seen["MODE"] == "prod"
    else:
        assert seen["API_TOKEN"] == "from-the-worker" and "UNSET_VAR" not in seen
    assert "WATCHER_REDIS_URL" not in seen
    assert not any("hunter2" in value for value in seen.values())


def test_command_env_rejects_bad_names() -> None:
    with pytest.raises(ValueError, match="invalid variable name 'A=B'"):
        CommandNotifier("cmd", ["true"], env=["A=B"])


async def test_command_timeout_kills_and_reaps(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    pid_file = tmp_path / "pid"
    script = "import os, sys, time; open(sys.argv[1], 'w').write(str(os.getpid())); time.sleep(30)"
    argv = [sys.executable, "-c", script, str(pid_file)]
    notifier = CommandNotifier("slow", argv, timeout=0.5)
    started = time.monotonic()
    with pytest.raises(NotifyFailed, match=r"timed out after 0\.5s"):
        await notifier.send(make_change())
    assert time.monotonic() - started < 2.5
    pid = int(pid_file.read_text())
    with pytest.raises(ProcessLookupError):  # a zombie would still answer signal 0
        os.kill(pid, 0)
    assert len(notify_warnings(caplog)) == 1


async def test_command_nonzero_exit_reports_code_and_last_stderr_line() -> None:
    script = "import sys; sys.stderr.write('first line\\nboom: bad thing\\n\\n'); sys.exit(3)"
    with pytest.raises(NotifyFailed) as info:
        await CommandNotifier("cmd", [sys.executable, "-c", script], 5).send(make_change())
    assert info.value.reason == "exit code 3: boom: bad thing"
    assert info.value.logged


async def test_command_that_ignores_stdin_still_succeeds() -> None:
    await CommandNotifier("cmd", [sys.executable, "-c", "pass"], 5).send(make_change())


async def test_command_missing_program_fails(tmp_path: Path) -> None:
    with pytest.raises(NotifyFailed, match="cannot run"):
        await CommandNotifier("cmd", [str(tmp_path / "nope")], 5).send(make_change())


# --- build_notifiers ---------------------------------------------------------------------------


def test_build_notifiers_from_config_dicts() -> None:
    built = build_notifiers(
        {
            "hook": {"type": "webhook", "url": "https://example.test/h", "headers": {"A": "1"}},
            "run": {"type": "command", "command": "notify-send 'watcher says' hi", "timeout": 5},
            "list": {"type": "command", "command": ["/bin/true"]},
        }
    )
    assert set(built) == {"hook", "run", "list", "console"}
    hook, run, listed = built["hook"], built["run"], built["list"]
    assert isinstance(hook, WebhookNotifier)
    assert (hook.url, hook.headers, hook.timeout, hook.retries) == (
        "https://example.test/h",
        {"A": "1"},
        10.0,
        0,  # the outbox retries deliveries; no quick retries by default
    )
    assert isinstance(run, CommandNotifier)
    assert run.argv == ["notify-send", "watcher says", "hi"] and run.timeout == 5.0
    assert isinstance(listed, CommandNotifier) and listed.timeout == 30.0
    assert isinstance(built["console"], ConsoleNotifier)
    assert all(isinstance(n, Notifier) for n in built.values())


def test_build_notifiers_always_has_console() -> None:
    assert list(build_notifiers({})) == ["console"]


@pytest.mark.parametrize(
    ("definition", "message"),
    [
        ({"type": "pager"}, "'pager' .* expected tags: 'console', 'webhook', 'command'"),
        ({"type": "webhook"}, "url: Field required"),
        ({"type": "webhook", "url": "https://x.test", "timeout": "soon"}, "number"),
        ({"type": "command", "command": ""}, "empty"),
        ({"type": "command", "command": 42}, "command: Input should be a valid list"),
    ],
)
def test_build_notifiers_rejects_bad_definitions(definition: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        build_notifiers({"bad": definition})


# --- notify_all --------------------------------------------------------------------------------


class Sleepy:
    def __init__(self, name: str, delay: float, max_duration: float | None = None) -> None:
        self.name = name
        self.delay = delay
        self.max_duration = max_duration
        self.sent: list[Change] = []

    async def send(self, change: Change) -> None:
        await asyncio.sleep(self.delay)
        self.sent.append(change)


class Broken:
    name = "broken"

    async def send(self, change: Change) -> None:
        raise RuntimeError("bug in a plugin")


async def test_notify_all_isolates_failures(
    hook: HookServer, caplog: pytest.LogCaptureFixture
) -> None:
    log = logging.getLogger("test.notify_all")
    failing = CommandNotifier("bad", [sys.executable, "-c", "import sys; sys.exit(1)"], 5)
    good = webhook(hook.url, name="good")
    slow = Sleepy("slow", 0.2)
    started = time.monotonic()
    failed = await notify_all(
        [failing, good, slow, Broken(), ConsoleNotifier()], make_change(), log=log
    )
    assert failed == ["bad", "broken"]
    assert len(hook.requests) == 1 and len(slow.sent) == 1
    assert time.monotonic() - started < 1.5
    # the command logged its own failure; notify_all adds one line for the crash only
    assert len(notify_warnings(caplog)) == 1
    [crash] = [r for r in caplog.records if r.name == "test.notify_all"]
    assert crash.levelno == logging.ERROR and "bug in a plugin" in crash.getMessage()


async def test_notify_all_bounds_a_notifier_by_its_max_duration(
    caplog: pytest.LogCaptureFixture,
) -> None:
    log = logging.getLogger("test.notify_all")
    stuck, fine = Sleepy("stuck", 30, max_duration=0.2), Sleepy("fine", 0)
    started = time.monotonic()
    assert await notify_all([stuck, fine], make_change(), log=log) == ["stuck"]
    assert time.monotonic() - started < 1.0
    assert fine.sent and not stuck.sent
    assert "'stuck'" in caplog.text and "0.2s" in caplog.text


async def test_notify_all_runs_concurrently() -> None:
    notifiers = [Sleepy(f"n{i}", 0.2) for i in range(5)]
    started = time.monotonic()
    assert await notify_all(notifiers, make_change(), log=logging.getLogger("t")) == []
    assert time.monotonic() - started < 0.6
