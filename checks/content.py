"""The ``content`` check: a SHA-256 of the body, or of a selection of it.

Options: ``regex`` (the matches, one per line; group 1 when the regex has
groups) or ``json_path`` (a dotted path such as ``data.items.0.price``). Text is
kept in the state (up to 64 KiB) so that a change comes with a unified diff.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import re
from typing import Any

import httpx

from watcher.check import CheckContext, CheckFailed, CheckResult
from watcher.fetch import require_success

TEXT_CAP = 64 * 1024


async def check(ctx: CheckContext) -> CheckResult:
    async with ctx.stream() as response:
        require_success(response)
        body = await ctx.read_body(response)
    data, text = select(ctx.resource.options, body, response)
    new: dict[str, Any] = {
        "content_hash": hashlib.sha256(data).hexdigest(),
        "status_code": response.status_code,
    }
    if text is not None:
        new["text"] = text[:TEXT_CAP]
    return _result(ctx.state, new)


def select(options: Any, body: bytes, response: httpx.Response) -> tuple[bytes, str | None]:
    """The bytes to hash and, for text, the text to keep for diffs."""
    regex, json_path = options.get("regex"), options.get("json_path")
    if regex and json_path:
        raise CheckFailed("options 'regex' and 'json_path' cannot be used together")
    if regex:
        text = _select_regex(regex, _decode(body, response))
    elif json_path:
        text = _select_json(json_path, body)
    else:
        return body, (_decode(body, response) if _is_text(response) else None)
    return text.encode(), text


def resolve(data: Any, path: str) -> Any:
    """Follow a dotted path through dicts (keys) and lists (indexes)."""
    parts = path.split(".")
    for depth, part in enumerate(parts):
        if (
            isinstance(data, list)
            and part.lstrip("-").isdigit()
            and -len(data) <= int(part) < len(data)
        ):
            data = data[int(part)]
        elif isinstance(data, dict) and part in data:
            data = data[part]
        else:
            raise CheckFailed(f"json_path {path!r}: nothing at {'.'.join(parts[: depth + 1])!r}")
    return data


def _select_regex(pattern: str, text: str) -> str:
    try:
        compiled = re.compile(pattern)
    except re.error as exc:
        raise CheckFailed(f"invalid regex option {pattern!r}: {exc}") from exc
    group = 1 if compiled.groups else 0
    return "\n".join(match.group(group) or "" for match in compiled.finditer(text))


def _select_json(path: str, body: bytes) -> str:
    try:
        document = json.loads(body)
    except ValueError as exc:
        raise CheckFailed(f"json_path {path!r}: the body is not JSON ({exc})") from exc
    value = resolve(document, path)
    if isinstance(value, str):
        return value
    return json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False)


def _is_text(response: httpx.Response) -> bool:
    kind = response.headers.get("content-type", "").split(";")[0].strip().lower()
    return kind.startswith("text/") or "json" in kind or "xml" in kind


def _decode(body: bytes, response: httpx.Response) -> str:
    try:
        return body.decode(response.charset_encoding or "utf-8", errors="replace")
    except LookupError:  # a charset Python does not know
        return body.decode("utf-8", errors="replace")


def _result(old: dict[str, Any], new: dict[str, Any]) -> CheckResult:
    status = new["status_code"]
    short = new["content_hash"][:12]
    if not old:
        summary = f"baseline: sha256 {short}"
        return CheckResult(False, new, summary, status_code=status, baseline=True)
    if old.get("content_hash") == new["content_hash"]:
        return CheckResult(False, new, f"unchanged: sha256 {short}", status_code=status)
    details = _diff(old.get("text"), new.get("text"))
    summary = f"content changed: sha256 {str(old.get('content_hash'))[:12]} → {short}"
    if details and details.startswith("---"):
        added, removed = _count(details)
        summary += f" (+{added} -{removed} lines)"
    # The hash, not the text kept for diffs: the text is in the details.
    shown = {"content_hash": old["content_hash"]} if old.get("content_hash") else {}
    return CheckResult(
        True,
        new,
        summary,
        details=details,
        status_code=status,
        old=shown,
        new={"content_hash": new["content_hash"]},
    )


def _diff(before: str | None, after: str | None) -> str | None:
    if before is None or after is None:
        return None
    lines = difflib.unified_diff(
        before.splitlines(), after.splitlines(), "before", "after", lineterm=""
    )
    diff = "\n".join(lines)
    if not diff:  # the hashes differ beyond the text kept in the state
        return f"the change is beyond the first {TEXT_CAP // 1024} KiB kept for diffs"
    return diff if len(diff) <= TEXT_CAP else diff[:TEXT_CAP] + "\n… (diff truncated)"


def _count(diff: str) -> tuple[int, int]:
    lines = diff.splitlines()[2:]  # past the ---/+++ header
    return (
        sum(line.startswith("+") for line in lines),
        sum(line.startswith("-") for line in lines),
    )
