"""Hostile servers: slow, malformed, and echoing secrets (issue 8, items 1, 3 and 7).

Real servers on 127.0.0.1 (a raw asyncio server for byte-level misbehaviour, tests/origin.py
for well-behaved origins and webhook sinks), real Redis, the real `CheckRunner` under a real
`Worker`, both HTTP transports.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import io
import itertools
import json
import logging
import os
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from rich.console import Console

from watcher.change import Change
from watcher.check import CheckContext, CheckFailed, CheckResult, Resource
from watcher.fetch import run_check
from watcher.http import make_client
from watcher.masking import MASK
from watcher.notifiers import NotifyFailed, WebhookNotifier
from watcher.oneshot import check_once
from watcher.queue import Queue
from watcher.status import write_json

from .helpers import wait_for
from .origin import Origin
from .test_e2e_checks import checking, events_of, find_in_queue, history, scheduler, template

TRANSPORTS = ["aiohttp", "httpx"]
TOKEN = "tok-5ecret-9f8e7d6c"
PASSWORD = "pw-H1dden-4242"
REDIS_PASSWORD = "redis-pw-77aa31"
BASIC = base64.b64encode(f"bot:{PASSWORD}".encode()).decode()


# -- a raw origin --------------------------------------------------------------------------------


@dataclass
class RawRequest:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    """Names lower-cased."""
    at: float = field(default_factory=time.monotonic)


Answer = Callable[[RawRequest, asyncio.StreamWriter], Awaitable[None]]


class RawOrigin:
    """An HTTP/1.1 server on 127.0.0.1 that answers each request with whatever bytes `answer`
    writes, as slowly or as wrongly as it likes; the connection is closed after each answer."""

    def __init__(self, answer: Answer) -> None:
        self.answer = answer
        self.requests: list[RawRequest] = []
        self._serving: set[asyncio.Task[Any]] = set()
        self._server: asyncio.Server | None = None
        self.port = 0

    async def __aenter__(self) -> RawOrigin:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for task in self._serving:
            task.cancel()
        await asyncio.gather(*self._serving, return_exceptions=True)

    def url(self, path: str = "/", host: str = "127.0.0.1", user_info: str = "") -> str:
        return f"http://{user_info}{host}:{self.port}{path}"

    def hits(self, path: str) -> list[RawRequest]:
        return [r for r in self.requests if r.path == path]

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._serving.add(task)
        try:
            head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
            request_line, *lines = head.split("\r\n")
            method, target, _ = request_line.split(" ", 2)
            split = urlsplit(target)
            headers = {}
            for line in filter(None, lines):
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
            query = {k: v[0] for k, v in parse_qs(split.query).items()}
            await reader.readexactly(int(headers.get("content-length") or 0))
            request = RawRequest(method, split.path, query, headers)
            self.requests.append(request)
            await self.answer(request, writer)
            await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
            pass  # the client hung up, or the test is over
        finally:
            self._serving.discard(task)
            writer.close()


async def drip(writer: asyncio.StreamWriter, data: bytes, every: float = 1.0) -> None:
    """Send `data` one byte every `every` seconds, until the client hangs up."""
    for byte in data:
        if writer.is_closing():
            return
        writer.write(bytes([byte]))
        await writer.drain()
        await asyncio.sleep(every)


async def add(queue: Queue, id: str, url: str, *, every: float = 1.0, **data: Any) -> None:
    data.setdefault("timeout", 2.0)
    await queue.upsert_scheduler(
        id, name="etag", data=template(url, id=id, **data), every=every, scope=id, immediately=True
    )


def recording_console() -> tuple[Console, io.StringIO]:
    out = io.StringIO()
    return Console(file=out, width=300, color_system=None), out


# -- 1. timeout bounds the whole run -------------------------------------------------------------

SLOW_HEAD = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nETag: " + b'"slow"' * 40 + b"\r\n\r\nok"
SLOW_BODY_HEAD = b"HTTP/1.1 200 OK\r\nContent-Length: 300\r\n\r\n"


async def answer_slowly(request: RawRequest, writer: asyncio.StreamWriter) -> None:
    if request.path == "/slow-head":  # the status line and headers at 1 byte/s
        await drip(writer, SLOW_HEAD)
    else:  # headers at once (no validator: the body is read), then the body at 1 byte/s
        writer.write(SLOW_BODY_HEAD)
        await drip(writer, b"x" * 300)


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_a_slow_origin_times_out_and_does_not_starve_the_others(
    queue: Queue, transport: str
) -> None:
    """Four resources on a 1 byte/s origin (headers or body) with `timeout: 2s`, five fast
    controls, all every second, at concurrency 4: each slow run fails "timed out after 2s"
    within about 2 s, and every control is still checked about every second. With a
    per-read timeout only, the slow runs hold all four slots for minutes."""
    async with RawOrigin(answer_slowly) as slow:
        with Origin() as fast:
            for n in range(4):
                path = "/slow-head" if n % 2 else "/slow-body"
                await add(queue, f"slow{n}", slow.url(path))
            for n in range(5):
                await add(queue, f"control{n}", f"{fast.url}c{n}")
            async with checking(queue, transport=transport, concurrency=4, backoff_base=1.0):
                start = time.monotonic()
                for n in range(4):
                    info = await wait_for(
                        functools.partial(_reported, queue, f"slow{n}"), 4, what=f"slow{n} to fail"
                    )
                    assert info.report is not None
                    assert info.report["outcome"] == "retrying"
                    assert info.report["summary"] == "timed out after 2s"
                    assert 1900 <= info.report["ms"] <= 3000, info.report
                await asyncio.sleep(start + 6.5 - time.monotonic())
                end = time.monotonic()
            controls = [r for r in fast.requests if start <= r.at <= end]

    for n in range(5):
        times = [start] + [r.at for r in controls if r.path == f"/c{n}"] + [end]
        gaps = [b - a for a, b in itertools.pairwise(times)]
        assert len(times) - 2 >= 4, f"control{n} checked {len(times) - 2} times in 6.5 s"
        assert max(gaps) < 3.5, f"control{n} waited {max(gaps):.1f} s for a slot"
    # Retried with backoff like any timeout, never recorded as a change.
    assert await history(queue, "slow0") == []


async def _reported(queue: Queue, id: str) -> Any:
    info = await scheduler(queue, id)
    return info if info.report else None


# -- 2. malformed responses are invalid responses ------------------------------------------------

MALFORMED = {
    "oversized header block": (
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-Big: " + b"a" * 200_000 + b"\r\n\r\nok"
    ),
    "too many headers": b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n"
    + b"".join(b"X-H%d: v\r\n" % i for i in range(300))
    + b"\r\nok",
    # No validator, so the etag check reads (and hashes) the body.
    "bad chunk size": (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n"
    ),
    "status 999": b"HTTP/1.1 999 Weird\r\nContent-Length: 2\r\n\r\nok",
}
EXPECTED_REASON = {
    ("oversized header block", "aiohttp"): "Got more than 8190 bytes when reading",
    ("oversized header block", "httpx"): "header block too large",
    ("too many headers", "aiohttp"): "Too many headers received",
    ("too many headers", "httpx"): "too many headers (301; limit 128)",
    ("bad chunk size", "aiohttp"): "Invalid character in chunk size",
    ("bad chunk size", "httpx"): "illegal chunk header",
    ("status 999", "aiohttp"): "status 999 is not an HTTP status (100-599)",
    ("status 999", "httpx"): "status 999 is not an HTTP status (100-599)",
}


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("case", list(MALFORMED))
async def test_malformed_responses_fail_as_invalid_responses(
    queue: Queue, transport: str, case: str
) -> None:
    """Not "check crashed", not retried (the run fails for good; the next tick tries again),
    and `watcher check` says the same and exits 1."""

    async def answer(request: RawRequest, writer: asyncio.StreamWriter) -> None:
        writer.write(MALFORMED[case])

    async with RawOrigin(answer) as origin:
        await add(queue, "bad", origin.url(), every=60)
        since_ms = await queue.now_ms()
        async with checking(queue, transport=transport):
            info = await wait_for(lambda: _reported(queue, "bad"), 3, what="the run")
            await asyncio.sleep(0.3)  # time for a retry, were there one
        runs = len(origin.requests)
        console, out = recording_console()
        exit_code = await check_once(console, template(origin.url(), id="cli"), "etag", transport)

    assert info.report is not None and info.report["outcome"] == "failed"
    summary = info.report["summary"]
    assert summary.startswith("invalid response: "), summary
    assert EXPECTED_REASON[case, transport] in summary
    assert "\n" not in summary and len(summary) < 250
    assert not await events_of(queue, "retry", since_ms)
    # One request a run (its first slot may come right after the first run, at random).
    failed = await events_of(queue, "failed", since_ms)
    assert {e["error"] for e in failed} == {summary} and runs == len(failed)
    assert len(origin.requests) == runs + 1  # and `watcher check` stopped after its first run
    printed = out.getvalue()
    assert exit_code == 1
    assert f"first run: failed: {summary}" in " ".join(printed.split())


# -- 3. secrets leave no output ------------------------------------------------------------------


class Echoes:
    """/start redirects to /final, and /final answers with an ETag, both echoing the secrets
    they were sent (the API key, the password of the Basic credentials); both want those
    credentials (401 without them). /cross redirects to another origin (localhost)."""

    def __init__(self) -> None:
        self.version = 1
        self.busy = False
        """Answer 503, with a reason phrase that echoes the secrets as a URL's user info."""

    async def __call__(self, request: RawRequest, writer: asyncio.StreamWriter) -> None:
        key = request.headers.get("x-api-key", "")
        scheme, _, credentials = request.headers.get("authorization", "").partition(" ")
        password = base64.b64decode(credentials).decode().partition(":")[2]
        body = ""
        if request.path == "/cross":
            head = f"302 Found\r\nLocation: http://localhost:{request.query['port']}/final"
        elif scheme != "Basic" or password != PASSWORD:
            head = "401 Unauthorized\r\nContent-Length: 0"
        elif self.busy:
            head = f"503 Busy: retry http://bot:{password}@host/?key={key}\r\nContent-Length: 0"
        elif request.path == "/start":
            head = f"302 Found\r\nLocation: /final?key={key}&pw={password}"
        else:
            trace = request.headers.get("x-trace", "")
            etag = f'"{key}.{password}.{trace}.v{self.version}"'
            if request.headers.get("if-none-match") == etag:
                head = f"304 Not Modified\r\nETag: {etag}"
            else:
                head, body = f"200 OK\r\nETag: {etag}\r\nContent-Length: 2", "ok"
        writer.write(f"HTTP/1.1 {head}\r\n\r\n{body}".encode())


RECORD_COMMAND = """
import json, os, sys
with open(sys.argv[1], "a") as out:
    out.write(json.dumps({"stdin": sys.stdin.read(), "env": dict(os.environ)}) + "\\n")
"""


def assert_no_secret(where: str, text: str) -> None:
    for secret in (TOKEN, PASSWORD, BASIC, REDIS_PASSWORD):
        assert secret not in text, f"{secret!r} in {where}: {text[:2000]}"


@pytest.fixture
def planted_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """The worker's environment holds the Redis password, as `watcher run` would."""
    monkeypatch.setenv("WATCHER_REDIS_URL", f"redis://:{REDIS_PASSWORD}@127.0.0.1:6399/0")


@pytest.mark.usefixtures("planted_env")
@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_secrets_echoed_by_a_server_appear_in_no_output(
    queue: Queue, transport: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The URL carries user info (sent as Basic auth: the origin refuses the request
    without it), a header carries an API key; the origin echoes both into a redirect's
    Location and into its ETag, and the worker's environment has the Redis password. None
    of them shows in the logs, the history, the changes and events streams, the webhook
    payload, the command's stdin and environment, `watcher check` or `status --json`;
    what is shown says where they were (***)."""
    caplog.set_level(logging.DEBUG, logger="watcher")
    commands = tmp_path / "commands.jsonl"
    echoes = Echoes()
    async with RawOrigin(echoes) as origin:
        url = origin.url("/start", user_info=f"bot:{PASSWORD}@")
        headers = {"X-Api-Key": TOKEN, "X-Trace": "t1"}
        with Origin() as sink:
            record = [sys.executable, "-c", RECORD_COMMAND, str(commands)]
            notifiers: dict[str, dict[str, Any]] = {
                "hook": {"type": "webhook", "url": f"{sink.url}hook"},
                "cmd": {"type": "command", "command": record},
            }
            await add(
                queue, "docs", url, every=0.2, headers=headers, notify=["hook", "cmd", "console"]
            )
            async with checking(queue, transport=transport, notifiers=notifiers):
                await wait_for(lambda: _stored_etag(queue), 3, what="the baseline run")
                since_ms = await queue.now_ms()
                echoes.busy = True
                await wait_for(lambda: events_of(queue, "retry", since_ms), 3, what="a retry")
                echoes.busy = False
                echoes.version = 2
                await wait_for(lambda: history(queue), 3, what="the change")
                await wait_for(lambda: len(sink.requests) == 1, 3, what="the webhook")
                await wait_for(commands.exists, 3, what="the command")
            webhook = sink.requests[0].body.decode()
        status = io.StringIO()
        await write_json(queue, status)
        console, out = recording_console()
        exit_code = await check_once(console, template(url, headers=headers), "etag", transport)
    sent = [r for r in origin.requests if r.path == "/final"]

    # The credentials worked: sent as Basic auth, the URL without them, a change detected.
    assert all(r.headers["authorization"] == f"Basic {BASIC}" for r in origin.requests)
    assert sent and all(r.query == {"key": TOKEN, "pw": PASSWORD} for r in sent)
    assert exit_code == 0
    [change] = await history(queue)
    masked_etag = f'"{MASK}.{MASK}.t1.v%d"'
    assert (change.old, change.new) == ({"etag": masked_etag % 1}, {"etag": masked_etag % 2})
    assert change.url == origin.url("/start", user_info=f"bot:{MASK}@")

    # ... and no output carries a secret.
    assert_no_secret("the logs", caplog.text)
    assert_no_secret("the history", json.dumps([c.to_dict() for c in await history(queue)]))
    for stream in ("changes", "events"):
        entries = await queue.redis.xrange(queue.key(stream))
        assert entries, f"nothing in the {stream} stream"
        assert_no_secret(f"the {stream} stream", json.dumps(entries))
    assert_no_secret("the webhook payload", webhook)
    assert json.loads(webhook)["new"] == {"etag": masked_etag % 2}
    [command] = [json.loads(line) for line in commands.read_text().splitlines()]
    assert_no_secret("the command's stdin", command["stdin"])
    assert_no_secret("the command's environment", json.dumps(command["env"]))
    assert "WATCHER_REDIS_URL" not in command["env"]
    assert command["env"]["WATCHER_OLD_ETAG"] == masked_etag % 1
    assert command["env"]["WATCHER_NEW_ETAG"] == masked_etag % 2
    assert command["env"]["WATCHER_URL"] == change.url
    printed = out.getvalue()
    assert_no_secret("`watcher check`", printed)
    assert f"/final?key={MASK}&pw={MASK}" in printed  # the redirect hop, shown masked
    assert_no_secret("`watcher status --json`", status.getvalue())
    assert f"bot:{MASK}@" in status.getvalue()
    # In Redis the secrets are only where the runs need them: the template the runs are made
    # from (sync stores ${VAR} references there instead) and the validators sent back.
    for secret in (TOKEN, PASSWORD):
        places = {where for _, where in await find_in_queue(queue, secret)}
        assert places <= {"data", "state"}, places


async def _stored_etag(queue: Queue) -> Any:
    return (await scheduler(queue)).state.get("etag")


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_url_credentials_are_not_sent_to_another_origin(transport: str) -> None:
    """A redirect to another origin (localhost vs 127.0.0.1) drops the Authorization made
    of the URL's user info, as it drops any secret header."""
    async with RawOrigin(Echoes()) as origin:
        url = origin.url(f"/cross?port={origin.port}", user_info=f"bot:{PASSWORD}@")
        console, out = recording_console()
        exit_code = await check_once(console, template(url), "etag", transport)
    [first, final] = origin.requests
    assert first.path == "/cross" and first.headers["authorization"] == f"Basic {BASIC}"
    assert final.path == "/final" and "authorization" not in final.headers
    assert exit_code == 1 and "first run: failed: 401 Unauthorized" in out.getvalue()
    assert_no_secret("`watcher check`", out.getvalue())


@pytest.mark.usefixtures("planted_env")
async def test_watcher_check_command_with_url_credentials(tmp_path: Path) -> None:
    """`watcher check http://bot:PASSWORD@host/` on the default (aiohttp) transport: the
    credentials work (aiohttp used to refuse them), and the output shows none of them."""
    async with RawOrigin(Echoes()) as origin:
        url = origin.url("/start", user_info=f"bot:{PASSWORD}@")
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "watcher.cli",
            "check",
            url,
            cwd=tmp_path,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            env={**os.environ, "COLUMNS": "300"},
        )
        output, _ = await asyncio.wait_for(proc.communicate(), 30)
    printed = output.decode()
    assert proc.returncode == 0, printed
    assert "second run: unchanged" in printed and f"pw={MASK}" in printed
    assert_no_secret("`watcher check`", printed)


# -- plugins that use the shared client directly -------------------------------------------------


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_a_plugin_using_the_client_directly_gets_the_same_treatment(transport: str) -> None:
    """URL credentials work (httpx makes them a Basic header; the shared client's transport
    sends the URL without them: aiohttp refused to send both), and an invalid response let
    through by the plugin fails its run as one, not as a crash."""

    async def direct(ctx: CheckContext) -> CheckResult:
        response = await ctx.client.get(ctx.resource.url)
        return CheckResult(False, {"status": response.status_code}, "fetched")

    async def answer(request: RawRequest, writer: asyncio.StreamWriter) -> None:
        if request.path == "/bad":
            writer.write(MALFORMED["too many headers"])
        else:
            await Echoes()(request, writer)

    async with RawOrigin(answer) as origin, make_client(transport=transport) as client:

        def context(url: str) -> CheckContext:
            return CheckContext(
                Resource(id="plugin", url=url), {}, client, logging.getLogger("test"), _no_upsert
            )

        good = await run_check(direct, context(origin.url("/final", user_info=f"bot:{PASSWORD}@")))
        with pytest.raises(CheckFailed) as failed:
            await run_check(direct, context(origin.url("/bad")))

    assert good.state == {"status": 200}
    assert origin.requests[0].headers["authorization"] == f"Basic {BASIC}"
    assert type(failed.value) is CheckFailed  # permanent, not a TransientCheckError
    assert failed.value.reason.startswith("invalid response: ")


async def _no_upsert(*, state: Any = None, every: Any = None) -> bool:
    return False


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_a_webhook_receiver_answering_garbage_is_not_asked_again(transport: str) -> None:
    async def answer(request: RawRequest, writer: asyncio.StreamWriter) -> None:
        writer.write(MALFORMED["status 999"])

    async with RawOrigin(answer) as receiver, make_client(transport=transport) as client:
        hook = WebhookNotifier("hook", receiver.url("/hook"), retries=2, client=client)
        with pytest.raises(NotifyFailed) as failed:
            await hook.send(Change(resource="docs", check="etag", url="http://x/", time=0.0))
    assert failed.value.reason == (
        "invalid response: status 999 is not an HTTP status (100-599) (not retried)"
    )
    assert len(receiver.requests) == 1
