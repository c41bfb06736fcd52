"""Readable diffs of a changed text, for a change's ``details`` (history, notifications).

`describe` gives a unified diff, with a word diff after it when both texts are short
(``[-old-]{+new+}``), the whole capped (`MAX_DETAILS_CHARS`). Checks keep the text a diff
needs in their state, cut to ``diff_max_bytes`` (`keep`, default `DEFAULT_KEEP_BYTES`).
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Mapping
from typing import Any

__all__ = [
    "DEFAULT_KEEP_BYTES",
    "KEEP_OPTION",
    "MAX_DETAILS_CHARS",
    "WORD_DIFF_CHARS",
    "count_lines",
    "describe",
    "keep",
    "keep_limit",
    "unified",
    "word_diff",
]

DEFAULT_KEEP_BYTES = 64 * 1024
KEEP_OPTION = "diff_max_bytes"
"""The option that sets how much text a check keeps in its state for diffs."""
MAX_DETAILS_CHARS = 64 * 1024
WORD_DIFF_CHARS = 2000
"""Texts this short (both) get a word diff beside the line diff."""
TRUNCATED = "\n… (diff truncated)"
_TOKEN = re.compile(r"\s+|[^\s]+")


def keep_limit(options: Mapping[str, Any]) -> int:
    """How many bytes of text a check keeps for diffs (``options.diff_max_bytes``)."""
    return int(options.get(KEEP_OPTION, DEFAULT_KEEP_BYTES))


def keep(text: str, limit: int) -> str:
    """`text` cut to at most `limit` bytes of UTF-8, never inside a character."""
    encoded = text.encode()
    if len(encoded) <= limit:
        return text
    return encoded[:limit].decode(errors="ignore")


def describe(
    before: str | None, after: str | None, *, kept: int = DEFAULT_KEEP_BYTES
) -> str | None:
    """The details of a change from `before` to `after` (None when a side was not kept)."""
    if before is None or after is None:
        return None
    lines = unified(before, after)
    if not lines:  # the texts kept are equal: what changed is past them
        return f"the change is beyond the first {_size(kept)} kept for diffs"
    if len(before) <= WORD_DIFF_CHARS and len(after) <= WORD_DIFF_CHARS:
        lines += "\n\nword diff:\n" + word_diff(before, after)
    return _capped(lines)


def unified(before: str, after: str) -> str:
    """A unified diff, ``--- before`` / ``+++ after``; empty when the texts are equal."""
    diff = difflib.unified_diff(
        before.splitlines(), after.splitlines(), "before", "after", lineterm=""
    )
    return "\n".join(diff)


def word_diff(before: str, after: str) -> str:
    """`after` with the words `before` had and it has not as ``[-…-]`` and its own new
    words as ``{+…+}`` (whitespace kept as it is)."""
    old, new = _TOKEN.findall(before), _TOKEN.findall(after)
    parts: list[str] = []
    matcher = difflib.SequenceMatcher(None, old, new, autojunk=False)
    for tag, i1, i2, j1, j2 in matcher.get_opcodes():
        if tag == "equal":
            parts.append("".join(new[j1:j2]))
            continue
        if i2 > i1:
            parts.append("[-" + "".join(old[i1:i2]) + "-]")
        if j2 > j1:
            parts.append("{+" + "".join(new[j1:j2]) + "+}")
    return "".join(parts)


def count_lines(diff: str) -> tuple[int, int]:
    """(added, removed) lines of a unified diff from `unified` (word diff not counted)."""
    lines = diff.split("\n\nword diff:\n", 1)[0].splitlines()[2:]  # past ---/+++
    added = sum(line.startswith("+") for line in lines)
    removed = sum(line.startswith("-") for line in lines)
    return added, removed


def _capped(details: str) -> str:
    if len(details) <= MAX_DETAILS_CHARS:
        return details
    return details[: MAX_DETAILS_CHARS - len(TRUNCATED)] + TRUNCATED


def _size(limit: int) -> str:
    return f"{limit // 1024} KiB" if limit % 1024 == 0 else f"{limit} bytes"
