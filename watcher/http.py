"""The shared HTTP client: one pooled ``httpx.AsyncClient`` per worker.

Both transports are wrapped so that they behave alike where they differ on their own:
a response that breaks HTTP (a header block too large, too many headers, a bad chunk
size, a status outside 100-599) raises `InvalidResponse`; a failure to connect or to get
an answer raises a `PlainFailure` of the usual httpx class, saying what happened in plain
words ("cannot connect to example.org:443: connection refused", "cannot resolve host
example.org", "TLS certificate error with ...: certificate has expired"); and credentials
in a URL's user info are sent only as the ``Authorization`` header httpx makes of them.
"""

from __future__ import annotations

import re
import socket
import ssl
from collections.abc import AsyncIterator, Callable, Iterator

import h11
import httpx

__all__ = [
    "MAX_RESPONSE_HEADERS",
    "TRANSPORTS",
    "InvalidResponse",
    "PlainFailure",
    "make_client",
]

TRANSPORTS = ("aiohttp", "httpx")
MAX_RESPONSE_HEADERS = 128
"""aiohttp's own limit, applied to httpx's transport too."""
_REASON_LIMIT = 160


class InvalidResponse(httpx.RemoteProtocolError):
    """The server's answer breaks HTTP; asking again will not help."""


class PlainFailure(httpx.TransportError):
    """A failure to connect or to get an answer; its text says what happened in plain
    words, the same from both transports. Raised as a subclass of the httpx class that
    fits (`httpx.ConnectError`, `httpx.ReadTimeout`, ...)."""


class _CannotConnect(PlainFailure, httpx.ConnectError):
    pass


class _ConnectTimedOut(PlainFailure, httpx.ConnectTimeout):
    pass


class _AnswerTimedOut(PlainFailure, httpx.ReadTimeout):
    pass


class _NoAnswer(PlainFailure, httpx.RemoteProtocolError):
    pass


class _Reset(PlainFailure, httpx.ReadError):
    pass


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

        chosen = _Guarded(AiohttpTransport(limits=limits), _aiohttp_violation, _aiohttp_failure)
    elif transport == "httpx":
        chosen = _Guarded(httpx.AsyncHTTPTransport(limits=limits), _h11_violation, _httpx_failure)
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
Failure = Callable[[BaseException], str | None]
"""Which failure (a key of `_FAILURES`) a transport's own exception is: None if it does
not say, `_LEAVE` if it is none of them."""


class _Guarded(httpx.AsyncBaseTransport):
    def __init__(
        self, inner: httpx.AsyncBaseTransport, violation: Violation, failure: Failure
    ) -> None:
        self._inner = inner
        self._violation = violation
        self._failure = failure

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if request.url.userinfo:
            # The client already made them the Authorization header; aiohttp would refuse
            # to send both, and nothing below needs them in the URL.
            request.url = request.url.copy_with(username=None, password=None)
        try:
            response = await self._inner.handle_async_request(request)
        except Exception as exc:
            reason = self._violation(exc)
            if reason is not None:
                raise InvalidResponse(reason, request=request) from exc
            plain = _plain_failure(exc, request, self._failure)
            if plain is None:
                raise
            raise plain from exc
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


_FAILURES: dict[str, tuple[type[PlainFailure], str]] = {
    "dns": (_CannotConnect, "cannot resolve host {host}"),
    "refused": (_CannotConnect, "cannot connect to {where}: connection refused"),
    "connect": (_CannotConnect, "cannot connect to {where}: {detail}"),
    "connect-timeout": (_ConnectTimedOut, "cannot connect to {where}: timed out"),
    "tls": (_CannotConnect, "TLS error with {where}: {detail}"),
    "certificate": (_CannotConnect, "TLS certificate error with {where}: {detail}"),
    "read-timeout": (_AnswerTimedOut, "timed out waiting for {where}"),
    "closed": (_NoAnswer, "{where} closed the connection without an answer"),
    "reset": (_Reset, "connection reset by {where}"),
}


def _plain_failure(
    exc: BaseException, request: httpx.Request, failure: Failure
) -> PlainFailure | None:
    """`exc` said in plain words, or None when it is no failure to connect or to get an
    answer. The innermost cause that says what happened wins: the transports wrap the
    same OS and TLS errors in classes of their own."""
    causes = list(_causes(exc))
    for cause in reversed(causes):
        kind = _os_failure(cause) or failure(cause)
        if kind == _LEAVE:
            return None
        if kind is not None:
            made, template = _FAILURES[kind]
            text = template.format(
                host=request.url.host, where=_where(request.url), detail=_detail(cause, causes)
            )
            return made(text, request=request)
    return None


_LEAVE = ""
"""A transport's failure kind for an exception that is none of `_FAILURES`."""


def _os_failure(exc: BaseException) -> str | None:
    if isinstance(exc, socket.gaierror):
        return "dns"
    if isinstance(exc, ssl.SSLCertVerificationError):
        return "certificate"
    if isinstance(exc, ssl.SSLError):
        return "tls"
    if isinstance(exc, ConnectionRefusedError):
        return "refused"
    if isinstance(exc, ConnectionResetError):
        return "reset"
    return None


def _httpx_failure(exc: BaseException) -> str | None:
    """httpx's transport, by its classes (and httpcore's words for the answer that never
    came)."""
    if isinstance(exc, httpx.ReadTimeout):
        return "read-timeout"
    if isinstance(exc, httpx.ConnectTimeout):
        return "connect-timeout"
    if isinstance(exc, httpx.ConnectError):
        return "connect"
    if isinstance(exc, httpx.RemoteProtocolError) and str(exc).startswith("Server disconnected"):
        return "closed"
    return None


def _aiohttp_failure(exc: BaseException) -> str | None:
    """aiohttp's transport, by aiohttp's classes: httpx-aiohttp maps them to httpx classes
    that do not fit (any connection error becomes a ConnectTimeout)."""
    from aiohttp import (
        ClientConnectorError,
        ClientError,
        ConnectionTimeoutError,
        ServerDisconnectedError,
        SocketTimeoutError,
    )

    if isinstance(exc, ServerDisconnectedError):
        return "closed"
    if isinstance(exc, ConnectionTimeoutError):
        return "connect-timeout"
    if isinstance(exc, SocketTimeoutError):
        return "read-timeout"
    if isinstance(exc, ClientConnectorError):
        return "connect"
    if isinstance(exc, ClientError):
        return _LEAVE
    return _httpx_failure(exc)


def _where(url: httpx.URL) -> str:
    host = f"[{url.host}]" if ":" in url.host else url.host
    port = url.port or (443 if url.scheme == "https" else 80)
    return f"{host}:{port}"


def _detail(cause: BaseException, causes: list[BaseException]) -> str:
    """What went wrong, without the transports' wrapping: a certificate's verify message,
    a TLS error's text, or the innermost OS error's."""
    if isinstance(cause, ssl.SSLCertVerificationError) and cause.verify_message:
        return str(cause.verify_message)
    if isinstance(cause, ssl.SSLError):
        match = re.fullmatch(r"\[[^]]*\] (.*?)(?: \(_ssl\.c:\d+\))?", str(cause))
        return match.group(1) if match else str(cause)
    os_error = next((e for e in reversed(causes) if isinstance(e, OSError) and e.strerror), None)
    text = os_error.strerror if os_error is not None else _one_line(str(cause))
    return (text[:1].lower() + text[1:]) if text else type(cause).__name__
