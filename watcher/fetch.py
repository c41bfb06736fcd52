"""The safe fetch: how the built-in checks talk HTTP, public for plugins to do the same.

- Redirects are followed here, not by httpx: at most ``options["max_redirects"]`` (5) hops,
  loops refused, and secret headers (``Authorization``, cookies, any name that says it holds
  a credential such as ``X-Api-Key``, and the resource's ``secret_headers``) are never sent
  on to another origin.
- Bodies are read with a cap, ``options["max_bytes"]`` (10 MiB); a truncated body fails.
- Credentials in the URL's user info are sent as a Basic ``Authorization`` header (unless
  the resource sets one), a secret header like the others; the URL goes without them.
- Failures raise the check API's errors: `TransientCheckError` for what is worth retrying
  (transport errors, timeouts, 5xx, 429 with its ``Retry-After``), `CheckFailed` otherwise,
  such as "invalid response: ..." for an answer that breaks HTTP (a header block too large,
  too many headers, a bad chunk size, a status outside 100-599).
- `run_check` runs a whole check within the resource's ``timeout`` (httpx's own timeouts
  are per read: a server sending a byte a second never trips them).

Use it through the context (``ctx.fetch()``, ``ctx.stream()``, ``ctx.read_body()``) or
call these functions with the context. Imports only the check API, httpx and the shared
client's `InvalidResponse` and `PlainFailure`.
"""

from __future__ import annotations

import asyncio
import codecs
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from functools import lru_cache

import httpx

from watcher.check import (
    Check,
    CheckContext,
    CheckFailed,
    CheckResult,
    TransientCheckError,
    parse_retry_after,
)
from watcher.http import InvalidResponse, PlainFailure

__all__ = [
    "DEFAULT_MAX_BYTES",
    "DEFAULT_MAX_REDIRECTS",
    "REDIRECT_STATUSES",
    "Fetched",
    "fetch",
    "header",
    "read_body",
    "require_success",
    "run_check",
    "stream",
    "transport_error",
]

DEFAULT_MAX_BYTES = 10 * 1024 * 1024
DEFAULT_MAX_REDIRECTS = 5
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})


@dataclass(frozen=True)
class Fetched:
    """The final response of `fetch`, its body read whole (within the cap)."""

    status_code: int
    reason_phrase: str
    url: httpx.URL
    """Where the body came from, after redirects."""
    headers: httpx.Headers
    body: bytes
    """Decoded from any Content-Encoding (gzip, ...), at most the cap."""
    encoding: str
    """The charset the Content-Type names (if Python knows it), else utf-8."""

    @property
    def text(self) -> str:
        return self.body.decode(self.encoding, errors="replace")


async def fetch(ctx: CheckContext, *, headers: Mapping[str, str] | None = None) -> Fetched:
    """The resource's final response after safe redirects, with its capped body.

    ``headers`` are sent on top of the resource's own. Anything but a 2xx raises (a 304
    too: to make conditional requests, use `stream` and look at the status yourself).
    """
    async with stream(ctx, headers=headers) as response:
        require_success(response)
        body = await read_body(ctx, response)
    return Fetched(
        status_code=response.status_code,
        reason_phrase=response.reason_phrase,
        url=response.url,
        headers=response.headers,
        body=body,
        encoding=_known_charset(response.charset_encoding),
    )


@asynccontextmanager
async def stream(
    ctx: CheckContext, *, headers: Mapping[str, str] | None = None, follow: bool = True
) -> AsyncIterator[httpx.Response]:
    """The resource's final response after safe redirects, body unread; closed on exit.

    The status is not judged here (see `require_success`); ``follow=False`` yields the
    first response, redirect or not.
    """
    resource = ctx.resource
    max_redirects = int(resource.options.get("max_redirects", DEFAULT_MAX_REDIRECTS))
    method = resource.method.upper()
    sent = {**resource.headers, **(headers or {})}
    authorization = resource.url_authorization
    if authorization and not any(name.lower() == "authorization" for name in sent):
        sent["Authorization"] = authorization
    url = _request_url(resource.url)
    hops = [url]
    while True:
        response = await _send(ctx.client, method, url, sent, resource.timeout)
        try:
            _require_http_status(response)
            target = _redirect_target(response) if follow else None
            if target is None:
                yield response
                return
        finally:
            await response.aclose()
        if target in hops:
            raise CheckFailed(f"redirect loop: {_path(hops, target)}")
        if len(hops) > max_redirects:
            raise CheckFailed(f"too many redirects (limit {max_redirects}): {_path(hops, target)}")
        if response.status_code == 303 or (response.status_code in (301, 302) and method == "POST"):
            method = "GET"
        if (target.scheme, target.host, target.port) != (url.scheme, url.host, url.port):
            sent = {name: value for name, value in sent.items() if not resource.is_secret(name)}
        hops.append(target)
        url = target


async def run_check(check: Check, ctx: CheckContext) -> CheckResult:
    """Run `check` within its resource's ``timeout`` as a whole (connect, headers, redirects,
    body): past it, a `TransientCheckError` "timed out after 5s". HTTP errors the check lets
    through become the check errors the safe fetch raises."""
    limit = ctx.resource.timeout
    try:
        async with asyncio.timeout(limit) as deadline:
            return await check(ctx)
    except TimeoutError:
        if not deadline.expired():
            raise
        raise TransientCheckError(f"timed out after {limit:g}s") from None
    except httpx.HTTPStatusError as exc:  # raise_for_status()
        require_success(exc.response)
        raise
    except httpx.HTTPError as exc:
        raise transport_error(exc, _failed_url(exc, ctx)) from exc


async def read_body(ctx: CheckContext, response: httpx.Response) -> bytes:
    """The decoded body, at most ``options["max_bytes"]`` bytes; a truncated body fails."""
    max_bytes = int(ctx.resource.options.get("max_bytes", DEFAULT_MAX_BYTES))
    status = response.status_code
    if response.request.method == "HEAD" or status in (204, 304):
        return b""
    declared = _content_length(response)
    if declared is not None and declared > max_bytes:
        raise CheckFailed(
            f"body too large: Content-Length {declared} exceeds the {max_bytes}-byte cap "
            "(option max_bytes)",
            status_code=status,
        )
    chunks: list[bytes] = []
    size = 0
    try:
        async for chunk in response.aiter_bytes():
            size += len(chunk)
            if size > max_bytes:
                raise CheckFailed(
                    f"body too large: more than the {max_bytes}-byte cap (option max_bytes)",
                    status_code=status,
                )
            chunks.append(chunk)
    except InvalidResponse as exc:
        raise CheckFailed(f"invalid response: {_text(exc)}", status_code=status) from exc
    except (httpx.RemoteProtocolError, httpx.ReadError) as exc:
        raise CheckFailed(f"truncated body: {_text(exc)}", status_code=status) from exc
    except httpx.DecodingError as exc:
        raise CheckFailed(f"cannot decode body: {_text(exc)}", status_code=status) from exc
    except httpx.HTTPError as exc:
        raise transport_error(exc, response.url) from exc
    # Transports do not all check Content-Length; compare the bytes that came off the wire.
    if declared is not None and response.num_bytes_downloaded != declared:
        raise CheckFailed(
            f"truncated body: received {response.num_bytes_downloaded} bytes, "
            f"Content-Length says {declared}",
            status_code=status,
        )
    return b"".join(chunks)


def require_success(response: httpx.Response) -> None:
    """Raise the check error for anything but a 2xx: transient for 429 and 5xx."""
    _require_http_status(response)
    status = response.status_code
    label = f"{status} {response.reason_phrase}".strip()
    if status == 429 or status >= 500:
        retry_after = parse_retry_after(header(response, "retry-after"))
        raise TransientCheckError(label, status_code=status, retry_after=retry_after)
    if status >= 400:
        raise CheckFailed(label, status_code=status)
    if not response.is_success:
        raise CheckFailed(f"unexpected status {label}", status_code=status)


def transport_error(exc: httpx.HTTPError, url: httpx.URL | str) -> CheckFailed:
    """The check error for a failed exchange: transient unless retrying cannot help."""
    if isinstance(exc, InvalidResponse):
        return CheckFailed(f"invalid response: {_text(exc)}")
    if isinstance(exc, httpx.UnsupportedProtocol | httpx.LocalProtocolError):
        return CheckFailed(f"invalid request to {url}: {_text(exc)}")
    if isinstance(exc, PlainFailure):  # the shared client's: already in plain words
        return TransientCheckError(str(exc))
    if isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout):
        return TransientCheckError(f"cannot connect to {url}: {_text(exc)}")
    if isinstance(exc, httpx.TimeoutException):  # the transports' texts differ, say none
        return TransientCheckError(f"timed out waiting for {url}")
    return TransientCheckError(f"transport error: {url}: {_text(exc)}")


def header(response: httpx.Response, name: str) -> str | None:
    """A response header's value (repeated ones joined by ", "), or None; a non-ASCII value
    fails the check rather than being guessed at."""
    wanted = name.lower().encode()
    values = [value for key, value in response.headers.raw if key.lower() == wanted]
    for value in values:
        if not value.isascii():
            raise CheckFailed(
                f"invalid response: non-ASCII {name} header {value!r}",
                status_code=response.status_code,
            )
    return ", ".join(value.decode("ascii") for value in values) if values else None


async def _send(
    client: httpx.AsyncClient,
    method: str,
    url: httpx.URL,
    headers: Mapping[str, str],
    timeout: float,
) -> httpx.Response:
    try:
        request = client.build_request(method, url, headers=headers, timeout=timeout)
    except (httpx.InvalidURL, UnicodeEncodeError) as exc:
        raise CheckFailed(f"invalid request to {url}: {_text(exc)}") from exc
    try:
        return await client.send(request, stream=True)
    except httpx.HTTPError as exc:
        raise transport_error(exc, url) from exc


def _failed_url(exc: httpx.HTTPError, ctx: CheckContext) -> httpx.URL | str:
    try:
        return exc.request.url
    except RuntimeError:  # raised without a request
        return ctx.resource.shown_url


def _require_http_status(response: httpx.Response) -> None:
    """A status outside 100-599 is no HTTP status: not a 5xx to retry, an invalid answer."""
    status = response.status_code
    if not 100 <= status <= 599:
        raise CheckFailed(
            f"invalid response: status {status} is not an HTTP status (100-599)",
            status_code=status,
        )


@lru_cache(maxsize=65536)
def _request_url(url: str) -> httpx.URL:
    """A resource's URL, parsed once (every run of a resource asks for the same one)."""
    return _without_user_info(_parse(url))


def _parse(url: str) -> httpx.URL:
    try:
        return httpx.URL(url)
    except httpx.InvalidURL as exc:
        raise CheckFailed(f"invalid URL {url}: {_text(exc)}") from None


def _without_user_info(url: httpx.URL) -> httpx.URL:
    """`url` without credentials: the resource's own go as a header; a redirect's are
    not sent (a server does not get to choose what is sent on)."""
    return url.copy_with(username=None, password=None) if url.userinfo else url


def _redirect_target(response: httpx.Response) -> httpx.URL | None:
    if response.status_code not in REDIRECT_STATUSES:
        return None
    location = header(response, "location")
    if not location:
        raise CheckFailed(
            f"{response.status_code} redirect without a Location header",
            status_code=response.status_code,
        )
    try:
        return _without_user_info(response.url.join(location))
    except httpx.InvalidURL as exc:
        raise CheckFailed(f"invalid redirect Location {location!r}: {exc}") from exc


def _content_length(response: httpx.Response) -> int | None:
    value = response.headers.get("content-length", "").strip()
    return int(value) if value.isascii() and value.isdigit() else None


def _known_charset(charset: str | None) -> str:
    if charset:
        try:
            return codecs.lookup(charset).name
        except LookupError:
            pass
    return "utf-8"


def _path(hops: list[httpx.URL], target: httpx.URL) -> str:
    return " → ".join(str(url) for url in [*hops, target])


def _text(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__
