"""Per-host budgets: what `hosts:` in the YAML says, and how the queue stores it.

A budget bounds the requests to one host across every worker on every machine:
`concurrency` (in flight at once) and `rate` with `burst` (a token bucket). The queue keeps
the budgets in its `hosts` hash, keyed by host name, `*.domain` wildcard or `default`, and
enforces them in the take script (watcher/lua/take.lua). Each host has its own bucket and
slots, also when its limits come from a wildcard or `default`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["DEFAULT_CONCURRENCY", "Budget", "host_key_problem", "parse_rate"]

DEFAULT_CONCURRENCY = 8
"""Requests in flight to one host, out of the box (`hosts: {default: ...}` changes it)."""
MAX_PAUSE = 3600.0
"""The longest a host's own Retry-After pauses it, in seconds."""

_RATE_RE = re.compile(r"\s*(\d+)\s*/\s*(\d+(?:\.\d+)?)?\s*(ms|s|m|h|d)\s*")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_HOST_KEY_RE = re.compile(r"default|(\*\.)?[a-z0-9_-]+(\.[a-z0-9_-]+)*|\[[0-9a-f:.]+\]")


def parse_rate(text: str) -> float:
    """Seconds between requests for a rate such as ``5/s``, ``30/m`` or ``1/10s``."""
    found = _RATE_RE.fullmatch(text) if isinstance(text, str) else None
    if not found or int(found[1]) == 0:
        raise ValueError(f"invalid rate {text!r}; expected e.g. 5/s, 30/m or 1/10s")
    period = float(found[2] or 1) * _UNIT_SECONDS[found[3]]
    if period <= 0:
        raise ValueError(f"invalid rate {text!r}: the period must be longer than 0")
    return period / int(found[1])


def host_key_problem(key: str) -> str | None:
    """Why `key` cannot name a host in `hosts:` (None: it can)."""
    if _HOST_KEY_RE.fullmatch(key):
        return None
    return (
        f"invalid host {key!r}; expected a host name (api.example.com), an IP address "
        "(10.0.0.5, [::1]), a wildcard (*.example.com) or default, in lower case, no port"
    )


@dataclass(frozen=True)
class Budget:
    """One host's limits; 0 means no limit of that kind."""

    interval_ms: int = 0
    """Milliseconds between requests at the sustained rate."""
    burst: int = 1
    concurrency: int = 0

    def encode(self) -> str:
        """As the queue's `hosts` hash stores it: "interval_ms burst concurrency"."""
        return f"{self.interval_ms} {self.burst} {self.concurrency}"

    @classmethod
    def decode(cls, text: str) -> Budget:
        interval, burst, concurrency = (int(part) for part in text.split())
        return cls(interval, burst, concurrency)

    def describe(self) -> str:
        parts = []
        if self.concurrency:
            parts.append(f"concurrency {self.concurrency}")
        if self.interval_ms:
            per_second = 1000 / self.interval_ms
            parts.append(f"rate {per_second:g}/s, burst {self.burst}")
        return ", ".join(parts) or "no limit"
