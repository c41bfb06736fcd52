"""The shared HTTP client: one pooled ``httpx.AsyncClient`` per worker.

Both transports are wrapped so that they behave alike where they differ on their own:
a response that breaks HTTP (a header block too large, too many headers, a bad chunk
size, a status outside 100-599) raises `InvalidResponse`, and credentials in a URL's user
info are sent only as the ``Authorization`` header httpx makes of them.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Callable, Iterator

import h11
import httpx

__all__ = ["MAX_RESPONSE_HEADERS", "TRANSPORTS", "InvalidResponse", "make_client"]

TRANSPORTS = ("aiohttp", "httpx")
MAX_RESPONSE_HEADERS = 128
"""aiohttp's own limit, applied to httpx's transport too."""
_REASON_LIMIT = 160


class InvalidResponse(httpx.RemoteProtocolError):
    """The server's answer breaks HTTP; asking again will not help."""


def make_client(
    *,
    transport: str = "aiohttp",
    max_connections: int = 100,
    timeout: float = 10.0,
    max_redirects: int = 5,
) -> httpx.AsyncClient:
    """A pooled client over the fast aiohttp transport, or httpx's own ("httpx").

    Redirects are not followed by the client: checks follow them themselves, with
    a bound, so that they see every hop.
    """
    limits = httpx.Limits(
        max_connections=max_connections, max_keepalive_connections=max_connections
    )
    chosen: httpx.AsyncBaseTransport
    if transport == "aiohttp":
        # Imported here so that the httpx transport does not pay for importing aiohttp.
        from httpx_aiohttp import AiohttpTransport

        chosen = _Guarded(AiohttpTransport(limits=limits), _aiohttp_violation)
    elif transport == "httpx":
        chosen = _Guarded(httpx.AsyncHTTPTransport(limits=limits), _h11_violation)
    else:
        raise ValueError(f"unknown HTTP transport {transport!r}; expected one of {TRANSPORTS}")
    client = httpx.AsyncClient(
        transport=chosen,
        timeout=timeout,
        follow_redirects=False,
        max_redirects=max_redirects,
    )
    # One client serves every resource: a cookie one server sets must not ride along to
    # another resource's checks (and parsing Set-Cookie costs ~15 us a response). httpx has
    # no switch for its cookie jar, so the client gets one that keeps nothing.
    client._cookies = _NoCookies()
    return client


class _NoCookies(httpx.Cookies):
    def extract_cookies(self, response: httpx.Response) -> None:
        pass


Violation = Callable[[BaseException], str | None]
"""What HTTP rule a transport's exception says the server broke, or None if none."""


class _Guarded(httpx.AsyncBaseTransport):
    def __init__(self, inner: httpx.AsyncBaseTransport, violation: Violation) -> None:
        self._inner = inner
        self._violation = violation

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if request.url.userinfo:
            # The client already made them the Authorization header; aiohttp would refuse
            # to send both, and nothing below needs them in the URL.
            request.url = request.url.copy_with(username=None, password=None)
        try:
            response = await self._inner.handle_async_request(request)
        except Exception as exc:
            reason = self._violation(exc)
            if reason is None:
                raise
            raise InvalidResponse(reason, request=request) from exc
        reason = _header_violation(response)
        if reason is not None:
            await response.aclose()
            raise InvalidResponse(reason, request=request)
        response.stream = _GuardedBody(response.stream, self._violation, request)
        return response

    async def aclose(self) -> None:
        await self._inner.aclose()


class _GuardedBody(httpx.AsyncByteStream):
    def __init__(
        self,
        inner: httpx.SyncByteStream | httpx.AsyncByteStream,
        violation: Violation,
        request: httpx.Request,
    ) -> None:
        assert isinstance(inner, httpx.AsyncByteStream), "an async transport's body"
        self._inner = inner
        self._violation = violation
        self._request = request

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._inner:
                yield chunk
        except Exception as exc:
            reason = self._violation(exc)
            if reason is None:
                raise
            raise InvalidResponse(reason, request=self._request) from exc

    async def aclose(self) -> None:
        await self._inner.aclose()


def _header_violation(response: httpx.Response) -> str | None:
    if not 100 <= response.status_code <= 599:
        return f"status {response.status_code} is not an HTTP status (100-599)"
    if len(response.headers.raw) > MAX_RESPONSE_HEADERS:
        return f"too many headers ({len(response.headers.raw)}; limit {MAX_RESPONSE_HEADERS})"
    return None


def _causes(exc: BaseException) -> Iterator[BaseException]:
    """`exc` and what it was raised from (httpcore re-raises some ``from None``)."""
    seen: BaseException | None = exc
    while seen is not None:
        yield seen
        seen = seen.__cause__ or seen.__context__


def _h11_violation(exc: BaseException) -> str | None:
    """httpx's transport: h11 refused what it parsed (a closed connection is not that)."""
    found = next((e for e in _causes(exc) if isinstance(e, h11.RemoteProtocolError)), None)
    if found is None or str(found).startswith("peer closed connection"):
        return None
    if str(found) == "Receive buffer too long":
        return "header block too large"
    return _one_line(re.sub(r"bytearray\((b.*?)\)", r"\1", str(found)))


def _aiohttp_violation(exc: BaseException) -> str | None:
    """aiohttp's transport: its parser refused the status line, a header, or the body's
    framing; it lets those through as ClientResponseError, or in a ClientPayloadError
    beside the truncations (which stay read errors)."""
    from aiohttp import ClientPayloadError, ClientResponseError
    from aiohttp.http_exceptions import (
        ContentLengthError,
        HttpProcessingError,
        TransferEncodingError,
    )

    causes = list(_causes(exc))
    if not any(isinstance(e, ClientResponseError | ClientPayloadError) for e in causes):
        return None
    parse = next((e for e in reversed(causes) if isinstance(e, HttpProcessingError)), None)
    if parse is None or isinstance(parse, ContentLengthError):
        return None
    if isinstance(parse, TransferEncodingError) and parse.message.startswith("Not enough data"):
        return None
    return _one_line(parse.message)


def _one_line(message: str) -> str:
    """A parser's message (lines, a quoted excerpt, a caret under it) as one short line."""
    parts = [line.strip() for line in message.splitlines()]
    text = " ".join(part for part in parts if part and part.strip("^ "))
    return text if len(text) <= _REASON_LIMIT else text[: _REASON_LIMIT - 1] + "…"
