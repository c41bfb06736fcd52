"""The plugin API is the built-ins' API: a third-party check's change shows its own old → new
values, and the public safe fetch keeps credentials from other origins.

Real parts throughout: local HTTP origins on 127.0.0.1, the private test Redis, the real
`CheckRunner` under a real `Worker`, the `watcher` console script, the real HTTP clients.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import re
import subprocess
import sys
import threading
from collections.abc import Iterator, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from watcher.check import CheckContext, CheckFailed, CheckResult, Resource
from watcher.http import make_client
from watcher.masking import MASK
from watcher.queue import Queue
from watcher.registry import load_check
from watcher.runner import CheckRunner

from .helpers import wait_for
from .origin import Origin
from .test_e2e_checks import checking as e2e_checking

WATCHER = str(Path(sys.executable).parent / "watcher")
PLUGIN_SOURCE = Path(__file__).resolve().parent.parent / "examples" / "plugins"
API_KEY = "key-7f3a9c2e51d84b06"
PRICE = re.compile(r"price: (.+)")


# -- plugins, written as a third party would: watcher.check and the context only ---------------


async def price_check(ctx: CheckContext) -> CheckResult:
    """Watches the price on a page; its state keeps more than the change shows."""
    page = await ctx.fetch()
    found = PRICE.search(page.text)
    if found is None:
        raise CheckFailed("no price on the page", status_code=page.status_code)
    state = {"price": found.group(1), "page_sha256": hashlib.sha256(page.body).hexdigest()}
    if ctx.first_run:
        return CheckResult(False, state, f"baseline: {state['price']}", baseline=True)
    before = ctx.state["price"]
    return CheckResult(
        changed=state["price"] != before,
        state=state,
        summary=f"price {before} → {state['price']}",
        status_code=page.status_code,
        old={"price": before},
        new={"price": state["price"]},
    )


async def hash_check(ctx: CheckContext) -> CheckResult:
    """Sets no old/new: its change shows the state before and after."""
    page = await ctx.fetch()
    state = {"sha256": hashlib.sha256(page.body).hexdigest()[:16]}
    if ctx.first_run:
        return CheckResult(False, state, "baseline", baseline=True)
    return CheckResult(state != ctx.state, state, "page changed", status_code=page.status_code)


# -- helpers --------------------------------------------------------------------------------------


def template(id: str, url: str, **extra: Any) -> dict[str, Any]:
    """A scheduler's template data, as `watcher sync` stores it for a resource."""
    return {"id": id, "url": url, "method": "GET", "timeout": 5.0, "options": {}, **extra}


def checking(
    queue: Queue, notifiers: Mapping[str, Mapping[str, Any]] | None = None
) -> contextlib.AbstractAsyncContextManager[CheckRunner]:
    """A check worker in this process (with its courier), stopped on exit."""
    return e2e_checking(queue, transport="httpx", notifiers=notifiers)


async def stored(queue: Queue, id: str, key: str) -> Any:
    info = await queue.get_scheduler(id)
    assert info is not None, f"scheduler {id!r} is gone"
    return info.state.get(key)


def history_json(redis_url: str, queue: Queue, id: str, cwd: Path) -> list[dict[str, Any]]:
    """`watcher history ID --json`, the console script, in a directory without a YAML."""
    done = subprocess.run(
        [WATCHER, "history", id, "--json", "--redis", redis_url, "--queue", queue.name],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    changes: list[dict[str, Any]] = json.loads(done.stdout)
    return changes


class Redirector:
    """A local origin that answers every GET with a 302 to `target`, recording the headers
    it was sent (names lower-cased)."""

    def __init__(self, target: str) -> None:
        self.target = target
        self.received: list[dict[str, str]] = []
        redirector = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                redirector.received.append({k.lower(): v for k, v in self.headers.items()})
                self.send_response(302)
                self.send_header("Location", redirector.target)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/start"

    def __enter__(self) -> Redirector:
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()


@pytest.fixture
def example_plugin(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The example plugin importable from its source, as `watcher_example.word_count`."""
    monkeypatch.syspath_prepend(str(PLUGIN_SOURCE))
    yield
    for name in [m for m in sys.modules if m.partition(".")[0] == "watcher_example"]:
        del sys.modules[name]


# -- a plugin's change shows its own old → new ---------------------------------------------------


async def test_a_plugins_old_and_new_reach_the_history_and_the_webhook(
    queue: Queue, redis_url: str, tmp_path: Path
) -> None:
    with Origin(etag=None, body=b"price: 12.00\n") as origin, Origin() as sink:
        data = template("offer", origin.url, headers={"X-Api-Key": API_KEY}, notify=["hook"])
        await queue.upsert_scheduler(
            "offer", name=f"{__name__}:price_check", data=data, every=0.2, scope=origin.url
        )
        hook = {"hook": {"type": "webhook", "url": f"{sink.url}hook"}}
        async with checking(queue, notifiers=hook):
            await wait_for(lambda: stored(queue, "offer", "price"), 5, what="the baseline run")
            # The server echoes the credential: what is shown must be masked.
            origin.set(body=f"price: 13.50 for {API_KEY}\n".encode())
            await wait_for(lambda: sink.requests, 5, what="the webhook call")
        posts = sink.requests

    shown = ({"price": "12.00"}, {"price": f"13.50 for {MASK}"})
    [change] = history_json(redis_url, queue, "offer", tmp_path)
    assert (change["old"], change["new"]) == shown
    assert change["check"] == f"{__name__}:price_check"
    assert change["summary"] == f"price 12.00 → 13.50 for {MASK}"

    [post] = posts
    payload = json.loads(post.body)
    assert (payload["old"], payload["new"]) == shown
    assert payload["id"] == change["id"]
    assert API_KEY not in post.body.decode()


async def test_a_plugin_that_sets_no_old_and_new_shows_its_state(queue: Queue) -> None:
    with Origin(etag=None, body=b"first\n") as origin:
        await queue.upsert_scheduler(
            "page",
            name=f"{__name__}:hash_check",
            data=template("page", origin.url),
            every=0.2,
            scope=origin.url,
        )
        async with checking(queue):
            first = await wait_for(lambda: stored(queue, "page", "sha256"), 5, what="baseline")
            origin.set(body=b"second\n")
            changes = await wait_for(lambda: queue.changes("page"), 5, what="the change")

    second = hashlib.sha256(b"second\n").hexdigest()[:16]
    assert [(c.old, c.new) for c in changes] == [({"sha256": first}, {"sha256": second})]


# -- the public safe fetch keeps credentials from other origins ----------------------------------


@pytest.mark.parametrize("transport", ["aiohttp", "httpx"])
@pytest.mark.usefixtures("example_plugin")
async def test_a_plugin_using_the_public_fetch_keeps_credentials_from_another_origin(
    transport: str,
) -> None:
    headers = {
        "X-Api-Key": API_KEY,
        "Authorization": "Bearer tok-2b8e61f0",
        "X-Tenant": "tenant-41c9",  # secret only because the resource says so
        "X-Env": "prod",
        "Accept-Language": "en",
    }
    check = load_check("watcher_example.word_count:check")
    with Origin(etag=None, body=b"<p>one two three</p>") as other, Redirector(other.url) as start:
        resource = Resource(
            id="page", url=start.url, headers=headers, secret_headers=frozenset({"x-tenant"})
        )
        async with make_client(transport=transport) as client:

            async def no_upsert(*, state: Any = None, every: Any = None) -> bool:
                return False

            ctx = CheckContext(resource, {}, client, logging.getLogger("test"), no_upsert)
            result = await check(ctx)
        [first_hop] = start.received
        [second_hop] = [seen.headers for seen in other.requests]

    assert result.baseline and result.state == {"words": 3}  # the redirect was followed
    sent = {name.lower(): value for name, value in headers.items()}
    assert {name: first_hop.get(name) for name in sent} == sent  # all sent to the first origin
    assert second_hop.get("x-env") == "prod"
    assert second_hop.get("accept-language") == "en"
    for secret in ("x-api-key", "authorization", "x-tenant"):
        assert secret not in second_hop, f"{secret} was forwarded to another origin"
