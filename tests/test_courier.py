"""The courier (watcher/courier.py) against a real webhook target on 127.0.0.1: deliveries
wait out a target that is down, each change arrives once, failures are said once per
delivery, and a delivery past its deadline is kept as failed."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator

import pytest

from watcher.change import Change
from watcher.courier import Courier
from watcher.jobs import Fence
from watcher.notifiers import WebhookNotifier, build_notifiers, delivery_targets
from watcher.queue import Queue
from watcher.redis_server import free_port

from .helpers import wait_for
from .origin import Origin


async def record(
    queue: Queue, n: int, within_ms: int = 3_600_000, notifiers: tuple[str, ...] = ("hook",)
) -> str:
    info = await queue.get_scheduler("r")
    if info is None:
        await queue.upsert_scheduler("r", name="etag", every=3600)
        info = await queue.get_scheduler("r")
    assert info is not None
    change = Change(
        resource="r", check="etag", url="http://127.0.0.1/", time=time.time(),
        old={"etag": f'"{n - 1}"'}, new={"etag": f'"{n}"'},
    )  # fmt: skip
    entry = await queue.record_change(
        "r", Fence(1, info.epoch), change, notify=[(name, within_ms) for name in notifiers]
    )
    assert entry is not None
    return entry


@contextlib.asynccontextmanager
async def couriering(queue: Queue, sink: Origin) -> AsyncIterator[Courier]:
    courier = Courier(queue, {"hook": WebhookNotifier("hook", f"{sink.url}hook", timeout=2)})
    task = asyncio.create_task(courier.run())
    try:
        yield courier
    finally:
        courier.repeater.stop()
        courier.poke()
        await asyncio.wait_for(task, 10)


def accepted(sink: Origin) -> list[str]:
    return [json.loads(r.body)["id"] for r in sink.requests if r.status == 200]


async def test_a_target_down_gets_each_change_once_when_back(
    queue: Queue, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "watcher.notify")
    with Origin() as sink:
        sink.set(status=503, reason="Service Unavailable")
        entries = [await record(queue, n) for n in range(1, 4)]
        async with couriering(queue, sink):
            await wait_for(lambda: len(sink.requests) >= 6, 10, what="retries")  # two tries each
            sink.set(status=None, reason=None)
            await wait_for(lambda: len(accepted(sink)) == 3, 15, what="the three changes")
            await asyncio.sleep(0.5)
    assert sorted(accepted(sink)) == sorted(entries)
    said = [r.getMessage() for r in caplog.records if r.name == "watcher.notify"]
    assert sum("retrying with backoff" in line for line in said) == 3, said  # once each
    assert sum("delivered after" in line for line in said) == 3, said
    states = await queue.outbox.states([f"{e}/hook" for e in entries])
    assert {s.state for s in states.values()} == {"sent"}


async def test_a_delivery_past_its_deadline_is_kept_as_failed(queue: Queue) -> None:
    with Origin() as sink:
        sink.set(status=503, reason="Service Unavailable")
        entry = await record(queue, 1, within_ms=1500)
        async with couriering(queue, sink):
            await wait_for(lambda: queue.outbox.failed(), 15, what="the delivery to fail for good")
    [failed] = await queue.outbox.failed()
    assert failed["id"] == f"{entry}/hook" and "503" in failed["error"]
    assert (await queue.outbox.counts())["hook"].failed == 1


async def test_an_apprise_url_that_fails_is_retried_alone(queue: Queue) -> None:
    """One delivery per URL of an apprise notifier: the URL that worked gets the change once,
    however often the one that is down is retried."""
    with Origin() as up:
        urls = [f"json://127.0.0.1:{up.port}/a", f"json://127.0.0.1:{free_port()}/b"]
        notifiers = build_notifiers({"chat": {"type": "apprise", "urls": urls}})
        targets = delivery_targets("chat", notifiers)
        assert targets == ["chat#1", "chat#2"]
        entry = await record(queue, 1, notifiers=tuple(targets))
        courier = Courier(queue, notifiers)
        task = asyncio.create_task(courier.run())

        async def retried() -> bool:
            state = (await queue.outbox.states([f"{entry}/chat#2"]))[f"{entry}/chat#2"]
            return state.attempts >= 3

        try:
            await wait_for(retried, 15, what="three tries of the URL that is down")
        finally:
            await courier.stop(grace=5)
            await task
    assert len(up.requests) == 1
    counts = await queue.outbox.counts()
    assert (counts["chat#1"].sent, counts["chat#2"].pending) == (1, 1)


class Hanging:
    """A notifier whose send never returns (its worker is stuck, or about to be killed)."""

    def __init__(self, name: str, max_duration: float | None) -> None:
        self.name, self.max_duration = name, max_duration
        self.sending = asyncio.Event()

    async def send(self, change: Change) -> None:
        self.sending.set()
        await asyncio.Event().wait()


async def test_each_delivery_is_leased_for_its_own_notifiers_time(queue: Queue) -> None:
    """A worker that dies mid-send holds a delivery until its lease ends: a webhook's, not
    the longest of any notifier the worker knows (the console's 60 s held a killed worker's
    webhook deliveries 70 s)."""
    hook, console = Hanging("hook", 1.0), Hanging("console", None)
    entry = await record(queue, 1)
    courier = Courier(queue, {"hook": hook, "console": console})
    task = asyncio.create_task(courier.step())
    try:
        await asyncio.wait_for(hook.sending.wait(), 10)
        now_ms = await queue.now_ms()
        due_ms = await queue.redis.zscore(queue.key("outbox:hook"), f"{entry}/hook")
        assert due_ms is not None
        assert 10_000 <= due_ms - now_ms <= 11_000  # its 1 s and the 10 s margin
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
