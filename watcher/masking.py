"""Masking of secret header values before anything is logged, stored or sent."""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any

ALWAYS_SECRET = frozenset({"authorization", "proxy-authorization", "cookie", "set-cookie"})
# Names that say they carry a credential: X-Api-Key, X-Auth-Token, X-Hub-Signature, ...
SECRET_NAME = re.compile(r"auth|token|secret|key|signature|password|session", re.IGNORECASE)
MASK = "***"
# A URL's user info anywhere in a text: "scheme://" then everything up to the last "@" before
# the authority ends.
URL_USER_INFO = re.compile(r"\b([a-zA-Z][a-zA-Z0-9+.-]*://)([^/?#\s]*)@")


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


def redact(
    text: str, headers: Mapping[str, str], extra: Iterable[str] = (), values: Iterable[str] = ()
) -> str:
    """`text` with every secret header value in it, and each of `values` (4 characters or
    more), replaced by ``***``, and the user info of any URL in it masked (`mask_urls`)."""
    found = {*secret_values(headers, extra), *(value for value in values if len(value) >= 4)}
    for value in sorted(found, key=len, reverse=True):
        text = text.replace(value, MASK)
    return mask_urls(text)


def mask_urls(text: str) -> str:
    """`text` with the password of every URL's user info masked (``https://bot:***@host/``);
    a user info without a password is often a token, so it is masked whole."""
    return URL_USER_INFO.sub(_masked_user_info, text)


def _masked_user_info(match: re.Match[str]) -> str:
    user, colon, _ = match.group(2).partition(":")
    return f"{match.group(1)}{user}:{MASK}@" if colon else f"{match.group(1)}{MASK}@"


class RedactingLogger(logging.LoggerAdapter[logging.Logger]):
    """A logger (for checks) whose messages pass through `redact` once formatted, so that
    what a server echoes into a logged value is masked too."""

    def __init__(
        self,
        logger: logging.Logger,
        redact: Callable[[str], str],
        extra: Mapping[str, object] | None = None,
    ) -> None:
        super().__init__(logger, extra)
        self.redact = redact

    def log(self, level: int, msg: object, *args: object, **kwargs: Any) -> None:
        if not self.isEnabledFor(level):
            return
        try:
            text = str(msg) % args if args else str(msg)
        except (TypeError, ValueError):  # arguments that do not fit the format
            text = f"{msg} {args}"
        shown, options = self.process(self.redact(text), kwargs)
        self.logger.log(level, shown, **options)
