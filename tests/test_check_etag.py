"""The ``etag`` check against pytest-httpx, plus the shared HTTP plumbing on real sockets."""

from __future__ import annotations

import asyncio
import email.utils
import hashlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import Any

import httpx
import pytest
from pytest_httpx import HTTPXMock, IteratorStream

from checks import etag
from watcher.check import (
    CheckContext,
    CheckFailed,
    Resource,
    TransientCheckError,
    parse_retry_after,
)
from watcher.http import make_client

URL = "https://example.test/page"
LM = "Wed, 21 Oct 2015 07:28:00 GMT"
LM2 = "Thu, 22 Oct 2015 09:00:00 GMT"

MakeCtx = Callable[..., CheckContext]


class FailingStream(httpx.AsyncByteStream):
    """Yields some chunks, then fails the way a dropped connection does."""

    def __init__(self, chunks: Iterable[bytes], error: Exception) -> None:
        self.chunks = list(chunks)
        self.error = error

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for chunk in self.chunks:
            yield chunk
        raise self.error


def sent(httpx_mock: HTTPXMock) -> httpx.Headers:
    request = httpx_mock.get_request()
    assert request is not None
    return request.headers


# --- first run, 304, 200 ---------------------------------------------------


async def test_first_run_records_a_baseline(httpx_mock: HTTPXMock, make_ctx: MakeCtx) -> None:
    httpx_mock.add_response(url=URL, headers={"ETag": '"a"', "Last-Modified": LM}, text="hello")
    result = await etag.check(make_ctx())
    assert result.baseline and not result.changed
    assert "baseline" in result.summary
    assert result.state == {"etag": '"a"', "last_modified": LM, "status_code": 200}
    assert "if-none-match" not in sent(httpx_mock)
    assert "if-modified-since" not in sent(httpx_mock)


async def test_304_is_unchanged_and_keeps_state(httpx_mock: HTTPXMock, make_ctx: MakeCtx) -> None:
    never_read = FailingStream([], AssertionError("the body of a 304 must not be read"))
    httpx_mock.add_response(status_code=304, stream=never_read)
    state = {"etag": '"a"', "last_modified": LM, "status_code": 200}
    result = await etag.check(make_ctx(state))
    assert not result.changed and result.not_modified and not result.baseline
    assert result.state == state
    assert result.status_code == 304
    headers = sent(httpx_mock)
    assert headers["if-none-match"] == '"a"'
    assert headers["if-modified-since"] == LM


async def test_200_with_the_same_etag_is_not_a_change(
    httpx_mock: HTTPXMock, make_ctx: MakeCtx
) -> None:
    never_read = FailingStream([], AssertionError("a body with an ETag need not be read"))
    httpx_mock.add_response(headers={"ETag": '"a"'}, stream=never_read)
    result = await etag.check(make_ctx({"etag": '"a"', "status_code": 200}))
    assert not result.changed and not result.not_modified
    assert result.summary.startswith("unchanged")


async def test_200_with_a_new_etag_is_a_change(httpx_mock: HTTPXMock, make_ctx: MakeCtx) -> None:
    httpx_mock.add_response(headers={"ETag": '"b"'}, text="new body")
    result = await etag.check(make_ctx({"etag": '"a"', "status_code": 200}))
    assert result.changed
    assert result.summary == 'ETag "a" → "b"'
    assert result.status_code == 200
    assert result.state == {"etag": '"b"', "status_code": 200}
    # The change shows the validators, not the status code kept beside them.
    assert (result.old, result.new) == ({"etag": '"a"'}, {"etag": '"b"'})
    assert sent(httpx_mock)["if-none-match"] == '"a"'


@pytest.mark.parametrize(
    ("old", "new", "changed"),
    [
        ('W/"x"', '"x"', False),
        ('"x"', 'W/"x"', False),
        ('W/"x"', 'W/"x"', False),
        ('W/"x"', 'W/"y"', True),
        ('W/"x"', '"y"', True),
    ],
)
async def test_weak_etags_compare_weakly(
    httpx_mock: HTTPXMock, make_ctx: MakeCtx, old: str, new: str, changed: bool
) -> None:
    httpx_mock.add_response(headers={"ETag": new})
    result = await etag.check(make_ctx({"etag": old}))
    assert result.changed is changed
    assert sent(httpx_mock)["if-none-match"] == old


# --- Last-Modified only ----------------------------------------------------


async def test_if_modified_since_carries_the_servers_value(
    httpx_mock: HTTPXMock, make_ctx: MakeCtx
) -> None:
    httpx_mock.add_response(status_code=304)
    result = await etag.check(make_ctx({"last_modified": LM, "status_code": 200}))
    assert result.not_modified and not result.changed
    headers = sent(httpx_mock)
    assert headers["if-modified-since"] == LM
    assert "if-none-match" not in headers


async def test_last_modified_baseline_stores_the_servers_value(
    httpx_mock: HTTPXMock, make_ctx: MakeCtx
) -> None:
    httpx_mock.add_response(headers={"Last-Modified": LM})
    result = await etag.check(make_ctx())
    assert result.state == {"last_modified": LM, "status_code": 200}
    assert LM in result.summary


@pytest.mark.parametrize(("served", "changed"), [(LM, False), (LM2, True)])
async def test_200_compares_last_modified_when_there_is_no_etag(
    httpx_mock: HTTPXMock, make_ctx: MakeCtx, served: str, changed: bool
) -> None:
    httpx_mock.add_response(headers={"Last-Modified": served})
    result = await etag.check(make_ctx({"last_modified": LM}))
    assert result.changed is changed
    if changed:
        assert result.summary == f"Last-Modified {LM} → {LM2}"


async def test_same_etag_wins_over_a_moved_last_modified(
    httpx_mock: HTTPXMock, make_ctx: MakeCtx
) -> None:
    httpx_mock.add_response(headers={"ETag": '"a"', "Last-Modified": LM2})
    result = await etag.check(make_ctx({"etag": '"a"', "last_modified": LM}))
    assert not result.changed
    assert result.state["last_modified"] == LM2


async def test_unparseable_last_modified_is_ignored(
    httpx_mock: HTTPXMock, make_ctx: MakeCtx
) -> None:
    httpx_mock.add_response(headers={"Last-Modified": "yesterday"}, content=b"x")
    result = await etag.check(make_ctx())
    assert "last_modified" not in result.state
    assert result.state["content_hash"] == hashlib.sha256(b"x").hexdigest()


# --- no validators: content hash --------------------------------------------


async def test_no_validators_falls_back_to_a_content_hash(
    httpx_mock: HTTPXMock, make_ctx: MakeCtx
) -> None:
    httpx_mock.add_response(content=b"v1")
    httpx_mock.add_response(content=b"v1")
    httpx_mock.add_response(content=b"v2")
    first = await etag.check(make_ctx())
    assert first.baseline
    assert "no validators; using content hash" in first.summary
    assert first.state == {"content_hash": hashlib.sha256(b"v1").hexdigest(), "status_code": 200}

    same = await etag.check(make_ctx(first.state))
    assert not same.changed
    assert "no validators; using content hash" in same.summary

    moved = await etag.check(make_ctx(first.state))
    assert moved.changed
    assert "no validators; using content hash" in moved.summary
    assert moved.state["content_hash"] == hashlib.sha256(b"v2").hexdigest()
    assert moved.old == {"content_hash": first.state["content_hash"]}
    assert moved.new == {"content_hash": moved.state["content_hash"]}
    for request in httpx_mock.get_requests():
        assert "if-none-match" not in request.headers
        assert "if-modified-since" not in request.headers


async def test_a_switch_of_validator_kind_is_reported(
    httpx_mock: HTTPXMock, make_ctx: MakeCtx
) -> None:
    httpx_mock.add_response(headers={"ETag": '"a"'})
    result = await etag.check(make_ctx({"content_hash": "0" * 64}))
    assert result.changed
    assert "validators changed" in result.summary
    assert (result.old, result.new) == ({"content_hash": "0" * 64}, {"etag": '"a"'})


# --- body cap --------------------------------------------------------------


async def test_declared_oversized_body_fails(httpx_mock: HTTPXMock, make_ctx: MakeCtx) -> None:
    httpx_mock.add_response(content=b"x" * 11)
    with pytest.raises(CheckFailed, match="body too large: Content-Length 11") as caught:
        await etag.check(make_ctx(options={"max_bytes": 10}))
    assert not isinstance(caught.value, TransientCheckError)


async def test_streamed_oversized_body_fails(httpx_mock: HTTPXMock, make_ctx: MakeCtx) -> None:
    httpx_mock.add_response(stream=IteratorStream([b"x" * 6, b"x" * 6]))
    with pytest.raises(CheckFailed, match="more than the 10-byte cap"):
        await etag.check(make_ctx(options={"max_bytes": 10}))


# --- redirects -------------------------------------------------------------


async def test_bounded_redirects_that_succeed(httpx_mock: HTTPXMock, make_ctx: MakeCtx) -> None:
    httpx_mock.add_response(url=URL, status_code=301, headers={"Location": "/moved"})
    httpx_mock.add_response(
        url="https://example.test/moved",
        status_code=302,
        headers={"Location": "https://example.test/final"},
    )
    httpx_mock.add_response(url="https://example.test/final", headers={"ETag": '"b"'})
    result = await etag.check(make_ctx({"etag": '"a"'}, options={"max_redirects": 2}))
    assert result.changed and result.state["etag"] == '"b"'
    assert [r.headers["if-none-match"] for r in httpx_mock.get_requests()] == ['"a"'] * 3


async def test_redirect_loop_fails(httpx_mock: HTTPXMock, make_ctx: MakeCtx) -> None:
    other = "https://example.test/other"
    httpx_mock.add_response(url=URL, status_code=302, headers={"Location": other})
    httpx_mock.add_response(url=other, status_code=302, headers={"Location": URL})
    with pytest.raises(CheckFailed, match="redirect loop"):
        await etag.check(make_ctx())


async def test_too_many_redirects_fail(httpx_mock: HTTPXMock, make_ctx: MakeCtx) -> None:
    for hop in range(6):
        httpx_mock.add_response(
            url=f"https://example.test/{hop}",
            status_code=307,
            headers={"Location": f"/{hop + 1}"},
        )
    with pytest.raises(CheckFailed, match=r"too many redirects \(limit 5\)"):
        await etag.check(make_ctx(url="https://example.test/0"))


async def test_redirect_without_location_fails(httpx_mock: HTTPXMock, make_ctx: MakeCtx) -> None:
    httpx_mock.add_response(status_code=302)
    with pytest.raises(CheckFailed, match="without a Location"):
        await etag.check(make_ctx())


async def test_cross_origin_redirect_drops_credentials(
    httpx_mock: HTTPXMock, make_ctx: MakeCtx
) -> None:
    httpx_mock.add_response(
        url=URL, status_code=302, headers={"Location": "https://elsewhere.test/"}
    )
    httpx_mock.add_response(url="https://elsewhere.test/", headers={"ETag": '"a"'})
    headers = {"Authorization": "Bearer s3cret", "X-Token": "t", "User-Agent": "watcher-test"}
    ctx = make_ctx(headers=headers, secret_headers=frozenset({"x-token"}))
    await etag.check(ctx)
    first, second = httpx_mock.get_requests()
    assert first.headers["authorization"] == "Bearer s3cret"
    assert first.headers["x-token"] == "t"
    assert "authorization" not in second.headers
    assert "x-token" not in second.headers
    assert second.headers["user-agent"] == "watcher-test"


async def test_uses_the_resources_method_headers_and_timeout(
    httpx_mock: HTTPXMock, make_ctx: MakeCtx
) -> None:
    httpx_mock.add_response(method="POST", headers={"ETag": '"a"'})
    await etag.check(make_ctx(method="post", headers={"X-Mine": "1"}, timeout=2.5))
    request = httpx_mock.get_request()
    assert request is not None
    assert request.method == "POST"
    assert request.headers["x-mine"] == "1"
    assert request.extensions["timeout"]["read"] == 2.5


# --- error classification ---------------------------------------------------


async def test_429_with_retry_after_seconds(httpx_mock: HTTPXMock, make_ctx: MakeCtx) -> None:
    httpx_mock.add_response(status_code=429, headers={"Retry-After": "120"})
    with pytest.raises(TransientCheckError) as caught:
        await etag.check(make_ctx())
    assert caught.value.status_code == 429
    assert caught.value.retry_after == 120.0


async def test_429_with_retry_after_http_date(httpx_mock: HTTPXMock, make_ctx: MakeCtx) -> None:
    when = email.utils.formatdate(time.time() + 60, usegmt=True)
    httpx_mock.add_response(status_code=429, headers={"Retry-After": when})
    with pytest.raises(TransientCheckError) as caught:
        await etag.check(make_ctx())
    assert caught.value.retry_after is not None
    assert 55 <= caught.value.retry_after <= 61


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, None),
        ("0", 0.0),
        (" 7 ", 7.0),
        ("0.3", 0.3),
        ("-5", 0.0),
        ("inf", None),
        ("nan", None),
        ("soon", None),
        ("Wed, 21 Oct 2015 07:28:00 GMT", 0.0),
    ],
)
def test_parse_retry_after(value: str | None, expected: float | None) -> None:
    assert parse_retry_after(value) == expected


@pytest.mark.parametrize("status", [500, 502, 503])
async def test_5xx_is_transient(httpx_mock: HTTPXMock, make_ctx: MakeCtx, status: int) -> None:
    httpx_mock.add_response(status_code=status)
    with pytest.raises(TransientCheckError) as caught:
        await etag.check(make_ctx())
    assert caught.value.status_code == status


@pytest.mark.parametrize("status", [400, 403, 404, 410])
async def test_4xx_is_permanent(httpx_mock: HTTPXMock, make_ctx: MakeCtx, status: int) -> None:
    httpx_mock.add_response(status_code=status)
    with pytest.raises(CheckFailed) as caught:
        await etag.check(make_ctx())
    assert not isinstance(caught.value, TransientCheckError)
    assert caught.value.status_code == status


@pytest.mark.parametrize("state", [{}, {"content_hash": "0" * 64}])
async def test_unsolicited_304_fails(
    httpx_mock: HTTPXMock, make_ctx: MakeCtx, state: dict[str, Any]
) -> None:
    httpx_mock.add_response(status_code=304)
    with pytest.raises(CheckFailed, match="without conditional headers") as caught:
        await etag.check(make_ctx(state))
    assert not isinstance(caught.value, TransientCheckError)


@pytest.mark.parametrize("value", ["abc", '"unterminated', 'w/"x"', '"a" "b"', '"a"b', ""])
async def test_malformed_etag_fails(httpx_mock: HTTPXMock, make_ctx: MakeCtx, value: str) -> None:
    httpx_mock.add_response(headers={"ETag": value})
    with pytest.raises(CheckFailed, match="malformed ETag"):
        await etag.check(make_ctx())


async def test_enormous_etag_fails(httpx_mock: HTTPXMock, make_ctx: MakeCtx) -> None:
    httpx_mock.add_response(headers={"ETag": '"' + "a" * 2000 + '"'})
    with pytest.raises(CheckFailed, match="invalid ETag: 2002 characters"):
        await etag.check(make_ctx())


@pytest.mark.parametrize("name", [b"ETag", b"Last-Modified"])
async def test_non_ascii_validator_fails(
    httpx_mock: HTTPXMock, make_ctx: MakeCtx, name: bytes
) -> None:
    httpx_mock.add_response(headers=[(name, '"caf\u00e9"'.encode())])
    with pytest.raises(CheckFailed, match="non-ASCII"):
        await etag.check(make_ctx())


async def test_truncated_body_fails(httpx_mock: HTTPXMock, make_ctx: MakeCtx) -> None:
    cut = httpx.RemoteProtocolError("peer closed connection without sending complete body")
    httpx_mock.add_response(stream=FailingStream([b"partial"], cut))
    with pytest.raises(CheckFailed, match="truncated body") as caught:
        await etag.check(make_ctx())
    assert not isinstance(caught.value, TransientCheckError)


async def test_content_length_mismatch_fails(httpx_mock: HTTPXMock, make_ctx: MakeCtx) -> None:
    httpx_mock.add_response(headers={"Content-Length": "100"}, content=b"short")
    with pytest.raises(CheckFailed, match="received 5 bytes, Content-Length says 100"):
        await etag.check(make_ctx())


@pytest.mark.parametrize(
    ("error", "message"),
    [
        (httpx.ConnectError("connection refused"), "cannot connect"),
        (httpx.ConnectTimeout("connect timed out"), "cannot connect"),
        (httpx.ReadTimeout("read timed out"), "timed out"),
        (httpx.PoolTimeout("pool timed out"), "timed out"),
        (httpx.ReadError("connection reset"), "transport error"),
        (httpx.RemoteProtocolError("server disconnected"), "transport error"),
    ],
)
async def test_transport_errors_are_transient(
    httpx_mock: HTTPXMock, make_ctx: MakeCtx, error: Exception, message: str
) -> None:
    httpx_mock.add_exception(error)
    with pytest.raises(TransientCheckError, match=message):
        await etag.check(make_ctx())


async def test_unsupported_scheme_is_permanent(make_ctx: MakeCtx) -> None:
    with pytest.raises(CheckFailed, match="invalid request") as caught:
        await etag.check(make_ctx(url="ftp://example.test/file"))
    assert not isinstance(caught.value, TransientCheckError)


# --- real sockets: both transports -------------------------------------------

Responder = Callable[[str], bytes]


@pytest.fixture
async def raw_server() -> AsyncIterator[Callable[[Responder], Awaitable[str]]]:
    """Start a raw HTTP/1.1 server on 127.0.0.1 answering each request with ``respond(path)``."""
    servers: list[asyncio.Server] = []

    async def start(respond: Responder) -> str:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            head = await reader.readuntil(b"\r\n\r\n")
            path = head.split(b" ", 2)[1].decode()
            writer.write(respond(path))
            await writer.drain()
            writer.close()

        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        servers.append(server)
        return f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"

    yield start
    for server in servers:
        server.close()
        await server.wait_closed()


def test_unknown_transport_is_rejected() -> None:
    with pytest.raises(ValueError, match="unknown HTTP transport"):
        make_client(transport="curl")


@pytest.mark.parametrize("transport", ["aiohttp", "httpx"])
async def test_real_server_baseline_and_redirect(
    raw_server: Callable[[Responder], Awaitable[str]], transport: str
) -> None:
    def respond(path: str) -> bytes:
        if path == "/start":
            return b"HTTP/1.1 302 Found\r\nLocation: /page\r\nContent-Length: 0\r\n\r\n"
        return b'HTTP/1.1 200 OK\r\nETag: W/"v1"\r\nContent-Length: 2\r\n\r\nok'

    base = await raw_server(respond)
    async with make_client(transport=transport) as client:
        ctx = CheckContext(
            Resource(id="r", url=f"{base}/start"), {}, client, logging.getLogger("test"), _noop
        )
        result = await etag.check(ctx)
    assert result.baseline and result.state["etag"] == 'W/"v1"'


@pytest.mark.parametrize("transport", ["aiohttp", "httpx"])
async def test_real_server_truncated_body(
    raw_server: Callable[[Responder], Awaitable[str]], transport: str
) -> None:
    base = await raw_server(lambda path: b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nshort")
    async with make_client(transport=transport) as client:
        ctx = CheckContext(Resource(id="r", url=base), {}, client, logging.getLogger("test"), _noop)
        with pytest.raises(CheckFailed, match="truncated body") as caught:
            await etag.check(ctx)
    assert not isinstance(caught.value, TransientCheckError)


@pytest.mark.parametrize("transport", ["aiohttp", "httpx"])
async def test_real_connection_refused_is_transient(transport: str) -> None:
    async with make_client(transport=transport) as client:
        ctx = CheckContext(
            Resource(id="r", url="http://127.0.0.1:1/"), {}, client, logging.getLogger("t"), _noop
        )
        with pytest.raises(TransientCheckError, match="cannot connect"):
            await etag.check(ctx)


async def _noop(*, state: Any = None, every: float | None = None) -> bool:
    return True
