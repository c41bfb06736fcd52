"""The shared HTTP client: one pooled ``httpx.AsyncClient`` per worker."""

from __future__ import annotations

import httpx

TRANSPORTS = ("aiohttp", "httpx")


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

        chosen = AiohttpTransport(limits=limits)
    elif transport == "httpx":
        chosen = httpx.AsyncHTTPTransport(limits=limits)
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
