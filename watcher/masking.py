"""Masking of secret header values before anything is logged, stored or sent."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

ALWAYS_SECRET = frozenset({"authorization", "proxy-authorization", "cookie", "set-cookie"})
# Names that say they carry a credential: X-Api-Key, X-Auth-Token, X-Hub-Signature, ...
SECRET_NAME = re.compile(r"auth|token|secret|key|signature|password|session", re.IGNORECASE)
MASK = "***"


def is_secret(name: str, extra: Iterable[str] = ()) -> bool:
    """Authorization, cookies, any name that says it carries a credential, and `extra`."""
    lowered = name.lower()
    return (
        lowered in ALWAYS_SECRET
        or bool(SECRET_NAME.search(lowered))
        or lowered in {e.lower() for e in extra}
    )


def mask_headers(headers: Mapping[str, str], extra: Iterable[str] = ()) -> dict[str, str]:
    """A copy of ``headers`` with every secret value replaced by ``***``."""
    extra = list(extra)
    return {name: MASK if is_secret(name, extra) else value for name, value in headers.items()}


def secret_values(headers: Mapping[str, str], extra: Iterable[str] = ()) -> list[str]:
    """The secret header values worth hiding: each whole value, and the credential after an
    auth scheme ("Bearer <token>"), so a server echoing only the token is caught too."""
    found = []
    for name, value in headers.items():
        if is_secret(name, extra) and len(value) >= 4:
            found.append(value)
            scheme, _, credential = value.partition(" ")
            if credential and len(credential) >= 4 and scheme.isalpha():
                found.append(credential)
    return sorted(found, key=len, reverse=True)  # longest first: the whole value wins


def redact(text: str, headers: Mapping[str, str], extra: Iterable[str] = ()) -> str:
    """`text` with every secret header value in it replaced by ``***``."""
    for value in secret_values(headers, extra):
        text = text.replace(value, MASK)
    return text
