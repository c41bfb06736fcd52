"""The public check API: what a check receives and what it returns.

A check is an async callable ``check(ctx: CheckContext) -> CheckResult``. It is
registered under a name (entry point group ``watcher.checks``) or referred to by
a dotted path ``package.module:name`` in the YAML. Built-in checks in ``checks/``
use only this module and `watcher.fetch` (the safe HTTP exchange, also reachable as
``ctx.fetch()``, ``ctx.stream()`` and ``ctx.read_body()``), exactly as a third-party plugin
would. Importing it does no I/O.

A check declares the ``options`` it reads as a pydantic model, its ``Options`` attribute
(`declare_options` sets it on a function; a class-based check may define it in its body).
The YAML's ``options`` are validated against it when the file loads: an unknown or
mistyped key is a configuration error with a "did you mean". A check that declares
nothing accepts any options, as before.
"""

from __future__ import annotations

import base64
import email.utils
import logging
import math
import os
import time
from collections.abc import Awaitable, Callable, Mapping
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from datetime import UTC
from functools import cached_property, lru_cache
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, TypeVar

import httpx
from pydantic import BaseModel, ConfigDict, Field

from watcher import masking, secrets

if TYPE_CHECKING:
    from watcher.fetch import Fetched
    from watcher.freshness import Freshness

__all__ = [
    "ENTRY_POINT_GROUP",
    "Check",
    "CheckContext",
    "CheckFailed",
    "CheckOptions",
    "CheckResult",
    "FetchOptions",
    "Resource",
    "SchedulerUpsert",
    "TransientCheckError",
    "declare_options",
    "declared_options",
    "parse_retry_after",
]

ENTRY_POINT_GROUP = "watcher.checks"


@dataclass(frozen=True)
class Resource:
    """One declared resource, as the check sees it."""

    id: str
    url: str
    method: str = "GET"
    headers: Mapping[str, str] = field(default_factory=dict)
    timeout: float = 10.0
    options: Mapping[str, Any] = field(default_factory=dict)
    secret_headers: frozenset[str] = frozenset()

    @classmethod
    def from_template(
        cls, data: Mapping[str, Any], env: Mapping[str, str] | None = None, id: str | None = None
    ) -> Resource:
        """From a scheduler's template data (what `watcher sync` stores: fields at their
        default left out, the id being the scheduler's: `id`). The ``${VAR}`` references
        kept there for secrets (``from_env``) are expanded from `env`, this process's
        environment by default; CheckFailed names a variable that is not set."""
        id = data.get("id") or id
        if not id:
            raise CheckFailed("a resource without an id")
        try:
            url, headers = secrets.expand_stored(
                data["url"],
                data.get("headers") or {},
                data.get(secrets.FROM_ENV) or (),
                os.environ if env is None else env,
            )
        except secrets.SecretUnavailable as exc:
            raise CheckFailed(f"resource {id}: {exc}") from None
        return cls(
            id=id,
            url=url,
            method=data.get("method", "GET"),
            headers=headers,
            timeout=float(data.get("timeout", 10.0)),
            options=dict(data.get("options") or {}),
            secret_headers=frozenset(data.get("secret_headers") or ()),
        )

    def is_secret(self, header: str) -> bool:
        """Authorization, cookies, API keys and the resource's `secret_headers`."""
        return masking.is_secret(header, self.secret_headers)

    def redact(self, text: str) -> str:
        """`text` with this resource's secret header values and URL credentials masked,
        and any URL's password (for anything shown)."""
        return masking.redact(text, self.headers, self.secret_headers, self._url_secrets)

    @property
    def shown_url(self) -> str:
        """The URL as logs, history, notifications and status show it: password masked."""
        return masking.mask_urls(self.url)

    @cached_property
    def url_authorization(self) -> str | None:
        """The ``Authorization`` value (Basic) for the user info in the URL, or None. The safe
        fetch sends it as a header, so a redirect to another origin drops it."""
        user_info = _user_info(self.url)
        if user_info is None:
            return None
        return "Basic " + base64.b64encode(":".join(user_info).encode()).decode("ascii")

    @cached_property
    def _url_secrets(self) -> tuple[str, ...]:
        user_info = _user_info(self.url)
        if user_info is None or self.url_authorization is None:
            return ()
        user, password = user_info
        basic = self.url_authorization
        # A user info without a password is usually a token.
        return (basic, basic.removeprefix("Basic "), password or user)


class SchedulerUpsert(Protocol):
    """Fenced upsert of the running check's own scheduler (BullMQ's pattern).

    Returns False when the write was fenced off: a newer run already wrote, or
    the resource was reconfigured since this run fired.
    """

    def __call__(
        self, *, state: Mapping[str, Any] | None = None, every: float | None = None
    ) -> Awaitable[bool]: ...


@dataclass
class CheckContext:
    resource: Resource
    state: dict[str, Any]
    """What the previous successful run stored (validators and the like); empty at first."""
    client: httpx.AsyncClient
    log: logging.Logger | logging.LoggerAdapter[logging.Logger]
    upsert: SchedulerUpsert

    @property
    def first_run(self) -> bool:
        return not self.state

    # The safe fetch, on the context. `watcher.fetch` builds on this module, so it is
    # imported when first used, not here: this module stays the ground, importable alone.

    async def fetch(self, *, headers: Mapping[str, str] | None = None) -> Fetched:
        """The resource's 2xx response after safe redirects, body read with the cap
        (`watcher.fetch.fetch`); anything else raises CheckFailed / TransientCheckError."""
        from watcher import fetch as safe

        return await safe.fetch(self, headers=headers)

    def stream(
        self, *, headers: Mapping[str, str] | None = None, follow: bool = True
    ) -> AbstractAsyncContextManager[httpx.Response]:
        """``async with ctx.stream() as response``: the final response after safe
        redirects, body unread, status not judged (`watcher.fetch.stream`)."""
        from watcher import fetch as safe

        return safe.stream(self, headers=headers, follow=follow)

    async def read_body(self, response: httpx.Response) -> bytes:
        """A streamed response's body, capped (`watcher.fetch.read_body`)."""
        from watcher import fetch as safe

        return await safe.read_body(self, response)


@dataclass
class CheckResult:
    changed: bool
    state: dict[str, Any]
    """Stored for the next run (JSON). A check that watches availability says ``"up": False``
    in it when the resource is down (unreachable, an error status): `watcher status` then
    shows the resource as down although the run itself succeeded."""
    summary: str
    details: str | None = None
    status_code: int | None = None
    not_modified: bool = False
    """True when the server answered 304: nothing was transferred."""
    baseline: bool = False
    """True on the first run: the state was recorded, nothing is reported as a change."""
    every: float | None = None
    """A new interval in seconds for the next runs, or None to keep the schedule."""
    fresh_for: Freshness | None = None
    """How long the server says this answer stays fresh (`watcher.freshness.freshness` reads
    it from a response's headers): the next run waits that long, within the resource's
    schedule and `max_every`, unless the resource says ``cadence: fixed``."""
    old: dict[str, Any] | None = None
    """What a change is shown as *before* in the history, status and notifications, e.g.
    ``{"etag": '"v1"'}``: small, JSON-serialisable; string values are masked like the
    summary. None shows the state before the run (``ctx.state``). Read only on a change."""
    new: dict[str, Any] | None = None
    """What a change is shown as *after*, as `old`. None shows the new ``state``."""


class CheckFailed(Exception):
    """A permanent failure: recorded, shown in status, not retried."""

    def __init__(self, reason: str, *, status_code: int | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status_code = status_code


class TransientCheckError(CheckFailed):
    """A failure worth retrying with backoff (connect error, timeout, 5xx, 429)."""

    def __init__(
        self, reason: str, *, status_code: int | None = None, retry_after: float | None = None
    ) -> None:
        super().__init__(reason, status_code=status_code)
        self.retry_after = retry_after


Check = Callable[[CheckContext], Awaitable[CheckResult]]


class CheckOptions(BaseModel):
    """The base of a check's declared options: keys it does not declare are refused."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    uses_filters: ClassVar[bool] = False
    """True when the check applies the resource's ``filters:`` (`watcher.filters`), which it
    finds in its options under ``filters``; for other checks, ``filters:`` is an error."""


class FetchOptions(CheckOptions):
    """The options the safe fetch (`watcher.fetch`) reads, for checks that fetch with it."""

    max_bytes: int = Field(default=10 * 1024 * 1024, gt=0)
    """The cap on a body, in bytes (decoded)."""
    max_redirects: int = Field(default=5, ge=0, le=100)


_CheckT = TypeVar("_CheckT")


def declare_options(model: type[BaseModel]) -> Callable[[_CheckT], _CheckT]:
    """A decorator: the check reads the options `model` describes (``check.Options``).

    ``@declare_options(MyOptions)`` above ``async def check(ctx)``; `model` usually derives
    from `CheckOptions` (or `FetchOptions` when the check fetches with ``ctx.fetch()``)."""

    def declare(check: _CheckT) -> _CheckT:
        setattr(check, "Options", model)  # noqa: B010 -- a function has no declared attributes
        return check

    return declare


def declared_options(check: object) -> type[BaseModel] | None:
    """The options model a check declares (its ``Options`` attribute), or None."""
    model = getattr(check, "Options", None)
    if isinstance(model, type) and issubclass(model, BaseModel):
        return model
    return None


def parse_retry_after(value: str | None) -> float | None:
    """Seconds to wait from a Retry-After value (delay seconds or an HTTP-date)."""
    if value is None:
        return None
    value = value.strip()
    try:  # RFC 9110 says whole seconds; a decimal is read too, as servers do send them
        seconds = float(value)
    except ValueError:
        pass
    else:
        return max(0.0, seconds) if math.isfinite(seconds) else None
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, when.timestamp() - time.time())


@lru_cache(maxsize=65536)
def _user_info(url: str) -> tuple[str, str] | None:
    """The (user, password) of `url`, percent-decoded, or None when it has no user info.
    Cached: every run of a resource asks, and parsing a URL costs more than its request."""
    if "@" not in url:
        return None
    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL:
        return None
    return (parsed.username, parsed.password) if parsed.userinfo else None
