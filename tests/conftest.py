"""Fixtures: private Redis servers (never the machine's own), queues with fresh names."""

from __future__ import annotations

import itertools
import os
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from watcher.queue import Queue
from watcher.redis_server import RedisServer

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
