"""The ``etag`` check: conditional requests; a change is a validator that moved.

``If-None-Match`` carries the stored ETag and ``If-Modified-Since`` the stored
``Last-Modified`` (the server's own value), so an unchanged resource costs a 304.
A server that sends neither validator is compared by a SHA-256 of its body.
What the server says about freshness (Cache-Control, Expires, Retry-After) holds the next
run back (`watcher.freshness`).
"""

from __future__ import annotations

import email.utils
import hashlib
import re
import time
from typing import Any

import httpx

from watcher.check import CheckContext, CheckFailed, CheckResult
from watcher.fetch import header, require_success
from watcher.freshness import Freshness, freshness

NO_VALIDATORS = "no validators; using content hash"
# What a change shows as old → new: the validators, not the status code kept beside them.
VALIDATORS = ("etag", "last_modified", "content_hash")
MAX_ETAG_LENGTH = 1024
# RFC 9110 entity-tag: optional W/, then a quoted string of etagc (ASCII only here).
ETAG_RE = re.compile(r'(W/)?"[\x21\x23-\x7e]*"')


async def check(ctx: CheckContext) -> CheckResult:
    async with ctx.stream(headers=conditional_headers(ctx.state)) as response:
        if response.status_code == 304:
            return _not_modified(ctx, response)
        require_success(response)
        etag, last_modified = _validators(ctx, response)
        # The body matters only when there is no validator to compare.
        body = None if etag or last_modified else await ctx.read_body(response)
        fresh_for = freshness(response.headers, time.time())
    new: dict[str, Any] = {"status_code": response.status_code}
    if etag:
        new["etag"] = etag
    if last_modified:
        new["last_modified"] = last_modified
    if body is not None:
        new["content_hash"] = hashlib.sha256(body).hexdigest()
    return _result(ctx.state, new, fresh_for)


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
