"""The ``content`` check: a SHA-256 of the body, or of a selection of it.

The selection: the resource's ``filters:`` (`watcher.filters`: css, xpath, html2text,
json_path, jq, regex, ignore, strip, sort), after the older options ``regex`` (the
matches, one per line; group 1 when the regex has groups) or ``json_path`` (a dotted path
such as ``data.items.0.price``, or ``$.items[0].price``). Text is kept in the state (up to
``diff_max_bytes``, 64 KiB) so that a change comes with a diff (`watcher.diffs`); a JSON
selection (json_path, jq) is shown as its old → new value.
"""

from __future__ import annotations

import hashlib
from typing import Any

from pydantic import Field, field_validator, model_validator

from watcher import diffs, filters
from watcher.check import (
    CheckContext,
    CheckFailed,
    CheckResult,
    FetchOptions,
    declare_options,
)
from watcher.fetch import require_success

TEXT_CAP = diffs.DEFAULT_KEEP_BYTES


class ContentOptions(FetchOptions):
    uses_filters = True
    regex: str | None = None
    """Hash the matches of this regex (group 1 when it has groups); no match is no text."""
    json_path: str | None = None
    """Hash the JSON value at this path (dotted, or JSONPath from ``$``)."""
    follow_redirects: bool = True
    diff_max_bytes: int = Field(default=diffs.DEFAULT_KEEP_BYTES, gt=0, le=16 * 1024 * 1024)
    """How much of the text the state keeps for diffs."""

    @field_validator("regex")
    @classmethod
    def _valid_regex(cls, value: str | None) -> str | None:
        if value is not None:
            filters.parse_filter({"regex": value})
        return value

    @field_validator("json_path")
    @classmethod
    def _valid_json_path(cls, value: str | None) -> str | None:
        if value is not None:
            filters.parse_filter({"json_path": value})
        return value

    @model_validator(mode="after")
    def _one_selection(self) -> ContentOptions:
        if self.regex and self.json_path:
            raise ValueError("options `regex` and `json_path` cannot be used together")
        return self


@declare_options(ContentOptions)
async def check(ctx: CheckContext) -> CheckResult:
    options = ctx.resource.options
    follow = bool(options.get("follow_redirects", True))
    async with ctx.stream(follow=follow) as response:
        require_success(response)
        body = await ctx.read_body(response)
    keep_bytes = diffs.keep_limit(options)
    new: dict[str, Any] = {"status_code": response.status_code}
    chain = selection(options)
    if chain:
        filtered = filters.apply(chain, filters.decode(body, response.charset_encoding))
        new["content_hash"] = _sha256(filtered.text.encode())
        new |= filters.remembered(filtered, keep_bytes)
    else:
        new["content_hash"] = _sha256(body)
        if _is_text(response.headers.get("content-type", "")):
            text = filters.decode(body, response.charset_encoding)
            new["text"] = diffs.keep(text, keep_bytes)
    return _result(ctx.state, new, keep_bytes)


def selection(options: Any) -> list[filters.Filter]:
    """The filter chain: the ``regex`` or ``json_path`` option, then ``filters:``."""
    regex, json_path = options.get("regex"), options.get("json_path")
    if regex and json_path:
        raise CheckFailed("options 'regex' and 'json_path' cannot be used together")
    chain = []
    try:
        if regex:  # as before filters existed: no match is an empty text, not a failure
            chain.append(filters.parse_filter({"regex": regex, "optional": True}))
        if json_path:
            chain.append(filters.parse_filter({"json_path": json_path}))
    except ValueError as exc:
        raise CheckFailed(f"option {'regex' if regex else 'json_path'}: {exc}") from None
    return chain + filters.chain_from_options(options)


def resolve(data: Any, path: str) -> Any:
    """Follow a dotted path through dicts (keys) and lists (indexes); CheckFailed says
    where it leads nowhere."""
    return filters.resolve_dotted(data, path)


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _is_text(content_type: str) -> bool:
    kind = content_type.split(";")[0].strip().lower()
    return kind.startswith("text/") or "json" in kind or "xml" in kind


def _result(old: dict[str, Any], new: dict[str, Any], keep_bytes: int) -> CheckResult:
    status = new["status_code"]
    short = new["content_hash"][:12]
    if not old:
        summary = f"baseline: sha256 {short}"
        return CheckResult(False, new, summary, status_code=status, baseline=True)
    if old.get("content_hash") == new["content_hash"]:
        return CheckResult(False, new, f"unchanged: sha256 {short}", status_code=status)
    details = diffs.describe(old.get("text"), new.get("text"), kept=keep_bytes)
    summary = f"content changed: sha256 {str(old.get('content_hash'))[:12]} → {short}"
    if details and details.startswith("---"):
        added, removed = diffs.count_lines(details)
        summary += f" (+{added} -{removed} lines)"
    shown_old, shown_new = _shown(old, new)
    return CheckResult(
        True, new, summary, details=details, status_code=status, old=shown_old, new=shown_new
    )


def _shown(old: dict[str, Any], new: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """A JSON selection's values; else the hashes (the text is in the details)."""
    if "value" in old and "value" in new:
        return {"value": old["value"]}, {"value": new["value"]}
    shown_old = {"content_hash": old["content_hash"]} if old.get("content_hash") else {}
    return shown_old, {"content_hash": new["content_hash"]}
