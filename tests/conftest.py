"""Fixtures: private Redis servers (never the machine's own), queues with fresh names."""

from __future__ import annotations

import itertools
import logging
import os
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from watcher.check import CheckContext, Resource
from watcher.http import make_client
from watcher.queue import Queue
from watcher.redis_server import RedisServer

from .origin import Origin

ROOT = Path(__file__).resolve().parent.parent
_names = itertools.count()


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """One private redis-server for the session; tests isolate by queue name."""
    with RedisServer() as server:
        yield server


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    return redis_server.url


@pytest.fixture
def queue_name(request: pytest.FixtureRequest) -> str:
    return f"t{os.getpid()}-{next(_names)}"


@pytest.fixture
async def queue(redis_url: str, queue_name: str) -> AsyncIterator[Queue]:
    q = Queue.from_url(redis_url, queue_name)
    yield q
    await q.close()


@pytest.fixture
def python() -> str:
    return sys.executable


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    """A client over httpx's own transport: the one pytest-httpx mocks."""
    async with make_client(transport="httpx") as http:
        yield http


@pytest.fixture
def upserts() -> list[dict[str, Any]]:
    """What checks passed to `ctx.upsert`, in order."""
    return []


@pytest.fixture
def make_ctx(
    client: httpx.AsyncClient, upserts: list[dict[str, Any]], request: pytest.FixtureRequest
) -> Callable[..., CheckContext]:
    """Builds a CheckContext; the URL defaults to the test module's `URL`."""

    async def upsert(*, state: Any = None, every: float | None = None) -> bool:
        upserts.append({"state": state, "every": every})
        return True

    def make(state: dict[str, Any] | None = None, **resource: Any) -> CheckContext:
        resource.setdefault("url", getattr(request.module, "URL", "https://example.test/"))
        return CheckContext(
            resource=Resource(id="r1", **resource),
            state=dict(state or {}),
            client=client,
            log=logging.getLogger("test"),
            upsert=upsert,
        )

    return make


@pytest.fixture
def origin() -> Iterator[Origin]:
    """A local origin on 127.0.0.1 serving ETag "v1" (tests/origin.py)."""
    with Origin(etag='"v1"') as server:
        yield server
