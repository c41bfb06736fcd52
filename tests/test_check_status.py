"""The ``status`` (uptime) check against pytest-httpx."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import httpx
import pytest
from pytest_httpx import HTTPXMock

from checks import status
from watcher.check import CheckContext, CheckFailed

URL = "https://example.test/health"
UP = {"status_code": 200, "reachable": True, "reason": "OK", "up": True}
DOWN = {"status_code": None, "reachable": False, "reason": "cannot connect: refused", "up": False}

MakeCtx = Callable[..., CheckContext]


class NeverRead(httpx.AsyncByteStream):
    async def __aiter__(self) -> AsyncIterator[bytes]:
        raise AssertionError("the status check must not read the body")
        yield b""  # pragma: no cover


async def test_first_run_is_a_baseline(httpx_mock: HTTPXMock, make_ctx: MakeCtx) -> None:
    httpx_mock.add_response(stream=NeverRead())
    result = await status.check(make_ctx())
    assert result.baseline and not result.changed
    assert result.state == UP
    assert result.summary == "baseline: 200 OK"
    assert result.status_code == 200


async def test_unreachable_first_run_is_a_baseline(
    httpx_mock: HTTPXMock, make_ctx: MakeCtx
) -> None:
    httpx_mock.add_exception(httpx.ConnectError("connection refused"))
    result = await status.check(make_ctx())
    assert result.baseline and not result.changed
    assert result.state["reachable"] is False and result.state["status_code"] is None
    assert "cannot connect" in result.state["reason"]
    assert result.summary.startswith("baseline: unreachable (cannot connect")


async def test_same_status_is_unchanged(httpx_mock: HTTPXMock, make_ctx: MakeCtx) -> None:
    httpx_mock.add_response(stream=NeverRead())
    result = await status.check(make_ctx(UP))
    assert not result.changed and not result.baseline
    assert result.summary == "unchanged: 200 OK"


async def test_status_code_change(httpx_mock: HTTPXMock, make_ctx: MakeCtx) -> None:
    httpx_mock.add_response(status_code=503)
    result = await status.check(make_ctx(UP))
    assert result.changed
    assert result.summary == "200 OK → 503 Service Unavailable"
    assert result.state == {
        "status_code": 503,
        "reachable": True,
        "reason": "Service Unavailable",
        "up": False,  # what `watcher status` shows as down
    }
    assert result.status_code == 503
    assert (result.old, result.new) == ({}, {})  # the summary says it; no validators to show


@pytest.mark.parametrize(
    ("error", "reason"),
    [
        (httpx.ConnectError("connection refused"), "cannot connect"),
        (httpx.ReadTimeout("read timed out"), "timed out"),
        (httpx.RemoteProtocolError("server disconnected"), "transport error"),
    ],
)
async def test_going_down_is_a_change_not_an_error(
    httpx_mock: HTTPXMock, make_ctx: MakeCtx, error: Exception, reason: str
) -> None:
    httpx_mock.add_exception(error)
    result = await status.check(make_ctx(UP))
    assert result.changed
    assert result.state["reachable"] is False
    assert result.summary.startswith(f"200 OK → unreachable ({reason}")
    assert result.status_code is None


async def test_coming_back_is_a_change(httpx_mock: HTTPXMock, make_ctx: MakeCtx) -> None:
    httpx_mock.add_response()
    result = await status.check(make_ctx(DOWN))
    assert result.changed
    assert result.summary == "unreachable (cannot connect: refused) → 200 OK"


async def test_staying_down_with_another_reason_is_unchanged(
    httpx_mock: HTTPXMock, make_ctx: MakeCtx
) -> None:
    httpx_mock.add_exception(httpx.ConnectTimeout("connect timed out"))
    result = await status.check(make_ctx(DOWN))
    assert not result.changed
    assert result.state["reason"] != DOWN["reason"]  # the latest reason is kept


async def test_follows_redirects_by_default(httpx_mock: HTTPXMock, make_ctx: MakeCtx) -> None:
    httpx_mock.add_response(url=URL, status_code=301, headers={"Location": "/new"})
    httpx_mock.add_response(url="https://example.test/new", status_code=200)
    result = await status.check(make_ctx(UP))
    assert not result.changed


async def test_can_observe_the_redirect_itself(httpx_mock: HTTPXMock, make_ctx: MakeCtx) -> None:
    httpx_mock.add_response(url=URL, status_code=301, headers={"Location": "/new"})
    result = await status.check(make_ctx(UP, options={"follow_redirects": False}))
    assert result.changed
    assert result.state["status_code"] == 301


async def test_redirect_loop_is_an_error(httpx_mock: HTTPXMock, make_ctx: MakeCtx) -> None:
    httpx_mock.add_response(url=URL, status_code=302, headers={"Location": URL})
    with pytest.raises(CheckFailed, match="redirect loop"):
        await status.check(make_ctx(UP))


async def test_uses_the_resources_method(httpx_mock: HTTPXMock, make_ctx: MakeCtx) -> None:
    httpx_mock.add_response(method="HEAD", headers={"Content-Length": "1000"})
    result = await status.check(make_ctx(UP, method="HEAD"))
    assert not result.changed
