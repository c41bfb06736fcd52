"""How long a server says its answer stays fresh (RFC 9111), read from a response's headers.

A check returns it as `CheckResult.fresh_for`; the runner then holds the resource's next
run until then: never sooner than its schedule's next slot, never later than its
`max_every` (default 24 h), and not at all with `cadence: fixed`.

Read, in this order of precedence: ``Cache-Control: no-store`` / ``no-cache`` (fresh for
nothing: the schedule decides), ``s-maxage``, ``max-age`` (less the ``Age`` the answer has
already spent in caches), else ``Expires`` less the response's ``Date``. A ``Retry-After``
on a successful answer holds the next run at least that long as well. Anything malformed
counts as not said: the schedule decides.
"""

from __future__ import annotations

import email.utils
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC

from watcher.check import parse_retry_after
from watcher.schedule import format_duration

__all__ = ["DEFAULT_MAX_EVERY", "Freshness", "freshness"]

DEFAULT_MAX_EVERY = 86400.0
"""Seconds a server-driven hold may last at most, unless a resource's `max_every` says."""
MAX_HEADER_LENGTH = 4096
"""A longer Cache-Control is not read: no real one comes near."""
MAX_DIGITS = 12
"""Delta-seconds with more digits are not read (RFC 9111 caps them at 2^31 anyway)."""

_DIRECTIVE = re.compile(r'\s*([A-Za-z-]+)\s*(?:=\s*("[^"]*"|[^,\s]*))?\s*(?:,|$)')


@dataclass(frozen=True)
class Freshness:
    """The server's word: the answer stays fresh `seconds` more, because of `reason`."""

    seconds: float
    reason: str
    """What said so, as shown in `watcher status`: "Cache-Control max-age=300"."""

    def capped(self, most: float) -> Freshness:
        """At most `most` seconds, saying so when that cut it."""
        if self.seconds <= most:
            return self
        return Freshness(most, f"{self.reason}, capped by max_every {format_duration(most)}")


def freshness(headers: Mapping[str, str], now: float | None = None) -> Freshness | None:
    """The freshness a response's headers give (names looked up lower-cased, as httpx's
    `Headers` does), or None when they say nothing usable. `now` (Unix time) stands in for
    a missing ``Date``."""
    cached = _cache_freshness(headers, now)
    retry_after = _retry_after(headers.get("retry-after"))
    if retry_after is None:
        return cached
    if cached is None or retry_after.seconds > cached.seconds:
        return retry_after
    return cached


def _cache_freshness(headers: Mapping[str, str], now: float | None) -> Freshness | None:
    directives = _directives(headers.get("cache-control") or "")
    if "no-store" in directives or "no-cache" in directives:
        return None
    for name in ("s-maxage", "max-age"):
        if name in directives:
            seconds = _delta_seconds(directives[name])
            if seconds is None:
                return None  # a malformed max-age is stale (RFC 9111 4.2.1)
            age = _delta_seconds(headers.get("age") or "0") or 0
            reason = f"Cache-Control {name}={seconds}" + (f" (age {age})" if age else "")
            return _positive(seconds - age, reason)
    expires = headers.get("expires")
    if expires is None:
        return None
    expires_at = _http_date(expires)
    date = _http_date(headers.get("date") or "")
    base = date if date is not None else now
    if expires_at is None or base is None:
        return None  # an invalid Expires (often "0" or "-1") means already expired
    return _positive(expires_at - base, f"Expires in {format_duration(max(expires_at - base, 0))}")


def _retry_after(value: str | None) -> Freshness | None:
    if value is None or len(value) > MAX_HEADER_LENGTH:
        return None
    seconds = parse_retry_after(value)
    if seconds is None:
        return None
    return _positive(seconds, f"Retry-After {format_duration(seconds)}")


def _directives(value: str) -> dict[str, str]:
    """Cache-Control's directives, names lower-cased, values unquoted ("" when none)."""
    if len(value) > MAX_HEADER_LENGTH:
        return {}
    found: dict[str, str] = {}
    at = 0
    while at < len(value):
        match = _DIRECTIVE.match(value, at)
        if match is None or match.end() == at:
            break  # what follows is malformed: keep what was read so far
        name, argument = match.group(1).lower(), match.group(2) or ""
        found.setdefault(name, argument.strip('"'))
        at = match.end()
    return found


def _delta_seconds(text: str) -> int | None:
    text = text.strip()
    if not text.isdigit() or not text.isascii() or len(text) > MAX_DIGITS:
        return None
    return int(text)


def _http_date(value: str) -> float | None:
    if not value or len(value) > 64:
        return None
    try:
        when = email.utils.parsedate_to_datetime(value)
        return (when if when.tzinfo else when.replace(tzinfo=UTC)).timestamp()
    except (TypeError, ValueError, OverflowError):
        return None


def _positive(seconds: float, reason: str) -> Freshness | None:
    return Freshness(float(seconds), reason) if seconds > 0 else None
