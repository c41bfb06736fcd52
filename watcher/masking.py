"""Masking of secret header values before anything is logged, stored or sent."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

ALWAYS_SECRET = frozenset(
    {"authorization", "proxy-authorization", "cookie", "set-cookie", "x-api-key", "api-key"}
)
MASK = "***"


def is_secret(name: str, extra: Iterable[str] = ()) -> bool:
    lowered = name.lower()
    return lowered in ALWAYS_SECRET or lowered in {e.lower() for e in extra}


def mask_headers(headers: Mapping[str, str], extra: Iterable[str] = ()) -> dict[str, str]:
    """A copy of ``headers`` with every secret value replaced by ``***``."""
    secret = {e.lower() for e in extra}
    return {
        name: (MASK if name.lower() in ALWAYS_SECRET or name.lower() in secret else value)
        for name, value in headers.items()
    }
