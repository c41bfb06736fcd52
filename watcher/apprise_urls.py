"""Apprise URLs: checked, masked for showing, and what apprise says about them captured.

Apprise URLs carry their credentials anywhere: in the user info, the path, the query, and for
many services in the "host" (slack://TokenA/..., tgram://bot-token/...). Nothing of one is
shown but its scheme and a host that is plainly an address; apprise's own log lines, which
may quote a URL, are captured per send and never printed.
"""

from __future__ import annotations

import difflib
import logging
import re
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from functools import cache
from urllib.parse import unquote

from watcher.masking import MASK, redact

__all__ = [
    "APPRISE_EXAMPLES",
    "apprise_log_capture",
    "apprise_url_problem",
    "mask_apprise_text",
    "shown_apprise_url",
]

# Apprise URLs carry their credentials anywhere: in the user info, the path, the query, and
# for many services in the "host" (slack://TokenA/..., tgram://bot-token/...).
_ADDRESS_RE = re.compile(
    r"(?:localhost|\d{1,3}(?:\.\d{1,3}){3}|\[[0-9A-Fa-f:.]+\]|(?:[A-Za-z0-9-]+\.)+[A-Za-z]{2,})"
    r"(?::\d{1,5})?"
)
APPRISE_EXAMPLES = "slack://, discord://, tgram://, mailto://, json://, ntfy://"


def shown_apprise_url(url: str) -> str:
    """An Apprise URL as it may be shown: its scheme, its host when that is a domain name or
    an address (else ``***``), a masked user info, ``/***`` for any path; no query."""
    scheme, separator, rest = url.strip().partition("://")
    if not separator:
        return MASK
    netloc = re.split(r"[/?#]", rest, maxsplit=1)[0]
    user_info, at, host = netloc.rpartition("@")
    shown = f"{scheme}://"
    if at:
        user, colon, _ = user_info.partition(":")
        shown += f"{user}:{MASK}@" if colon and user else f"{MASK}@"
    shown += host if _ADDRESS_RE.fullmatch(host) else MASK
    path = rest[len(netloc) :].split("?", 1)[0].split("#", 1)[0]
    return shown + (f"/{MASK}" if path.strip("/") else "")


def apprise_url_secrets(url: str) -> list[str]:
    """The parts of an Apprise URL that may be credentials, to mask in what apprise says."""
    rest = url.strip().partition("://")[2]
    netloc, _, tail = rest.partition("/")
    user_info, _, host = netloc.rpartition("@")
    parts = [url.strip(), *user_info.split(":")]
    if not _ADDRESS_RE.fullmatch(host):
        parts += [host, *host.split(":")]
    path, _, query = tail.partition("?")
    parts += path.split("/")
    for pair in query.split("&"):
        parts.append(pair.partition("=")[2])
    parts += [unquote(part) for part in parts]
    return sorted({part for part in parts if len(part) >= 4}, key=len, reverse=True)


def mask_apprise_text(text: str, url: str) -> str:
    """`text` (something apprise said about `url`) with the URL's secret parts masked."""
    return redact(text, {}, values=apprise_url_secrets(url))


_apprise_capture: ContextVar[list[tuple[int, str]] | None] = ContextVar(
    "watcher_apprise_capture", default=None
)


class _AppriseLogRouter(logging.Filter):
    """On apprise's logger: what it says while `apprise_log_capture` is active (in this
    context, which apprise's worker threads copy) goes to that capture, and no further,
    since it may quote a URL; the rest passes on from WARNING up."""

    def filter(self, record: logging.LogRecord) -> bool:
        captured = _apprise_capture.get()
        if captured is None:
            return record.levelno >= logging.WARNING
        try:
            captured.append((record.levelno, record.getMessage()))
        except (TypeError, ValueError):  # arguments that do not fit the format
            captured.append((record.levelno, str(record.msg)))
        return False


_APPRISE_ROUTER = _AppriseLogRouter()


@contextmanager
def apprise_log_capture() -> Iterator[list[tuple[int, str]]]:
    """Collects what apprise logs meanwhile, DEBUG included (the socket errors that say why
    a delivery failed), as (level, message) pairs."""
    apprise_log = logging.getLogger("apprise")
    if _APPRISE_ROUTER not in apprise_log.filters:
        apprise_log.addFilter(_APPRISE_ROUTER)
        apprise_log.setLevel(logging.DEBUG)  # the router drops what nobody captures
        # apprise's HTTP client logs each request line, path and all, at DEBUG.
        logging.getLogger("urllib3").setLevel(logging.WARNING)
    captured: list[tuple[int, str]] = []
    token = _apprise_capture.set(captured)
    try:
        yield captured
    finally:
        _apprise_capture.reset(token)


@cache
def _apprise_schemes() -> frozenset[str]:
    from apprise.manager_plugins import NotificationManager

    schemes = NotificationManager().schemas()  # type: ignore[no-untyped-call]
    return frozenset(scheme.lower() for scheme in schemes)


def apprise_url_problem(url: str) -> str | None:
    """Why apprise would not take `url` (secrets masked), or None."""
    scheme, separator, _ = url.partition("://")
    if not separator or not scheme:
        return f"expected scheme://..., e.g. {APPRISE_EXAMPLES.split(',')[0]}TokenA/TokenB/TokenC"
    if scheme.lower() not in _apprise_schemes():
        return _unknown_scheme(scheme)
    import apprise

    with apprise_log_capture() as said:
        plugin = apprise.Apprise.instantiate(url)
    if plugin is not None:
        return None
    # apprise's own "Could not load ... URL: <the url>" adds nothing but the URL.
    reasons = [m for level, m in said if level >= logging.WARNING and "URL" not in m]
    if not reasons:
        return "apprise cannot parse it"
    return mask_apprise_text(f"apprise says: {'; '.join(dict.fromkeys(reasons))}", url)


def _unknown_scheme(scheme: str) -> str:
    if scheme.lower() in ("http", "https"):
        hint = " (for a plain JSON POST use json:// or a notifier of `type: webhook`)"
    else:
        close = difflib.get_close_matches(scheme.lower(), sorted(_apprise_schemes()), n=1)
        hint = f" (did you mean `{close[0]}://`?)" if close else ""
    return f"unknown scheme `{scheme}://`{hint}; expected e.g. {APPRISE_EXAMPLES}"
