"""The ``etag`` check: conditional requests; a change is a validator that moved.

``If-None-Match`` carries the stored ETag and ``If-Modified-Since`` the stored
``Last-Modified`` (the server's own value), so an unchanged resource costs a 304.
A server that sends neither validator is compared by a SHA-256 of its body.
What the server says about freshness (Cache-Control, Expires, Retry-After) holds the next
run back (`watcher.freshness`).

With ``filters:`` (`watcher.filters`), a 200's filtered content decides: a new ETag over the
same filtered content is no change, and its validators are stored silently, so the next
request carries them and gets a 304. With filters or ``options.diff``, the text is kept in
the state (``diff_max_bytes``) and a change comes with a diff (`watcher.diffs`).
"""

from __future__ import annotations

import email.utils
import hashlib
import re
import time
from dataclasses import dataclass
from typing import Any

import httpx
from pydantic import Field

from watcher import diffs, filters
from watcher.check import CheckContext, CheckFailed, CheckResult, FetchOptions, declare_options
from watcher.fetch import header, require_success
from watcher.freshness import Freshness, freshness

NO_VALIDATORS = "no validators; using content hash"
# What a change shows as old → new: the validators, not the status code kept beside them.
VALIDATORS = ("etag", "last_modified", "content_hash")
MAX_ETAG_LENGTH = 1024
# RFC 9110 entity-tag: optional W/, then a quoted string of etagc (ASCII only here).
ETAG_RE = re.compile(r'(W/)?"[\x21\x23-\x7e]*"')


class EtagOptions(FetchOptions):
    uses_filters = True
    follow_redirects: bool = True
    diff: bool = False
    """Keep the body's text in the state, so that a change comes with a diff."""
    diff_max_bytes: int = Field(default=diffs.DEFAULT_KEEP_BYTES, gt=0, le=16 * 1024 * 1024)
    """How much of the text the state keeps for diffs."""


@dataclass(frozen=True)
class _Reading:
    """What a run keeps of the body besides the validators: nothing, or its text."""

    chain: list[filters.Filter]
    keep_bytes: int
    wanted: bool

    @classmethod
    def of(cls, options: Any) -> _Reading:
        chain = filters.chain_from_options(options)
        wanted = bool(chain) or bool(options.get("diff"))
        return cls(chain, diffs.keep_limit(options), wanted)


@declare_options(EtagOptions)
async def check(ctx: CheckContext) -> CheckResult:
    reading = _Reading.of(ctx.resource.options)
    follow = bool(ctx.resource.options.get("follow_redirects", True))
    async with ctx.stream(headers=conditional_headers(ctx.state), follow=follow) as response:
        if response.status_code == 304:
            return _not_modified(ctx, response)
        require_success(response)
        etag, last_modified = _validators(ctx, response)
        # The body matters only when there is no validator to compare, or text to keep.
        needed = reading.wanted or not (etag or last_modified)
        body = await ctx.read_body(response) if needed else None
        fresh_for = freshness(response.headers, time.time())
    new: dict[str, Any] = {"status_code": response.status_code}
    if etag:
        new["etag"] = etag
    if last_modified:
        new["last_modified"] = last_modified
    if not reading.wanted:
        if body is not None:
            new["content_hash"] = hashlib.sha256(body).hexdigest()
        return _result(ctx.state, new, fresh_for)
    text = filters.decode(body or b"", response.charset_encoding)
    return _read_result(ctx.state, new, reading, text, fresh_for)


def conditional_headers(state: dict[str, Any]) -> dict[str, str]:
    headers = {}
    if state.get("etag"):
        headers["If-None-Match"] = state["etag"]
    if state.get("last_modified"):
        headers["If-Modified-Since"] = state["last_modified"]
    return headers


def validators(state: dict[str, Any]) -> dict[str, Any]:
    return {key: state[key] for key in VALIDATORS if state.get(key) is not None}


def weak_equal(a: str, b: str) -> bool:
    """RFC 9110 weak comparison: the opaque tags match, whatever their W/ prefixes."""
    return a.removeprefix("W/") == b.removeprefix("W/")


def _not_modified(ctx: CheckContext, response: httpx.Response) -> CheckResult:
    sent = response.request.headers
    if "if-none-match" not in sent and "if-modified-since" not in sent:
        raise CheckFailed(
            "304 Not Modified to a request without conditional headers", status_code=304
        )
    return CheckResult(
        changed=False,
        state=dict(ctx.state),
        summary="not modified (304)",
        status_code=304,
        not_modified=True,
        fresh_for=freshness(response.headers, time.time()),
    )


def _validators(ctx: CheckContext, response: httpx.Response) -> tuple[str | None, str | None]:
    status = response.status_code
    etag = header(response, "etag")
    if etag is not None:
        etag = etag.strip()
        if len(etag) > MAX_ETAG_LENGTH:
            raise CheckFailed(
                f"invalid ETag: {len(etag)} characters (limit {MAX_ETAG_LENGTH})",
                status_code=status,
            )
        if not ETAG_RE.fullmatch(etag):
            raise CheckFailed(
                f"malformed ETag {etag!r}: expected a quoted string, optionally W/-prefixed",
                status_code=status,
            )
    last_modified = header(response, "last-modified")
    if last_modified is not None and not _is_http_date(last_modified):
        ctx.log.warning("ignoring unparseable Last-Modified %r", last_modified)
        last_modified = None
    return etag or None, last_modified


def _is_http_date(value: str) -> bool:
    try:
        email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return False
    return True


def _result(old: dict[str, Any], new: dict[str, Any], fresh_for: Freshness | None) -> CheckResult:
    status = new["status_code"]
    if not old:
        return CheckResult(
            changed=False,
            state=new,
            summary=f"baseline: {_describe(new)}",
            status_code=status,
            baseline=True,
            fresh_for=fresh_for,
        )
    changed, summary = _compare(old, new)
    return CheckResult(
        changed=changed,
        state=new,
        summary=summary,
        status_code=status,
        old=validators(old),
        new=validators(new),
        fresh_for=fresh_for,
    )


def _read_result(
    old: dict[str, Any],
    new: dict[str, Any],
    reading: _Reading,
    text: str,
    fresh_for: Freshness | None,
) -> CheckResult:
    """The result when the body's text is kept: filtered, the filtered text decides."""
    filtered = filters.apply(reading.chain, text)
    if reading.chain:
        new["filtered_hash"] = hashlib.sha256(filtered.text.encode()).hexdigest()
    elif not (new.get("etag") or new.get("last_modified")):
        new["content_hash"] = hashlib.sha256(text.encode()).hexdigest()
    new |= filters.remembered(filtered, reading.keep_bytes)
    if not old:
        return _result(old, new, fresh_for)
    if reading.chain:
        changed, summary = _compare_filtered(old, new)
    else:
        changed, summary = _compare(old, new)
    if not changed:
        return CheckResult(False, new, summary, status_code=new["status_code"], fresh_for=fresh_for)
    details = diffs.describe(old.get("text"), new.get("text"), kept=reading.keep_bytes)
    if details and details.startswith("---"):
        added, removed = diffs.count_lines(details)
        summary += f" (+{added} -{removed} lines)"
    shown_old, shown_new = validators(old), validators(new)
    if "value" in old and "value" in new:
        shown_old, shown_new = {"value": old["value"]}, {"value": new["value"]}
    return CheckResult(
        changed=True,
        state=new,
        summary=summary,
        details=details,
        status_code=new["status_code"],
        old=shown_old,
        new=shown_new,
        fresh_for=fresh_for,
    )


def _compare_filtered(old: dict[str, Any], new: dict[str, Any]) -> tuple[bool, str]:
    """Filtered content decides; moved validators over the same content are only stored."""
    moved = f" ({_describe(old)} → {_describe(new)})" if _describe(old) != _describe(new) else ""
    if old.get("filtered_hash") == new["filtered_hash"]:
        stored = f"; {_describe(new)} stored" if moved else ""
        return False, f"unchanged: filtered content the same{stored}"
    return True, f"filtered content changed{moved}"


def _compare(old: dict[str, Any], new: dict[str, Any]) -> tuple[bool, str]:
    """Compare by the strongest validator both sides have: (changed, summary)."""
    if old.get("etag") and new.get("etag"):
        if weak_equal(old["etag"], new["etag"]):
            return False, f"unchanged: ETag {new['etag']}"
        return True, f"ETag {old['etag']} → {new['etag']}"
    if old.get("last_modified") and new.get("last_modified"):
        if old["last_modified"] == new["last_modified"]:
            return False, f"unchanged: Last-Modified {new['last_modified']}"
        return True, f"Last-Modified {old['last_modified']} → {new['last_modified']}"
    if old.get("content_hash") and new.get("content_hash"):
        if old["content_hash"] == new["content_hash"]:
            return False, f"unchanged ({NO_VALIDATORS})"
        return True, f"content changed ({NO_VALIDATORS})"
    return True, f"validators changed: {_describe(old)} → {_describe(new)}"


def _describe(state: dict[str, Any]) -> str:
    if state.get("etag"):
        return f"ETag {state['etag']}"
    if state.get("last_modified"):
        return f"Last-Modified {state['last_modified']}"
    return NO_VALIDATORS
