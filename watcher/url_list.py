"""Resources from a plain list of URLs (`resources_from: urls.txt`): one URL a line, the
YAML's `defaults` applied, each resource's id derived from its URL, the same on every sync.

Blank lines and lines starting with ``#`` are skipped; a URL listed twice is one resource.
An id reads as the URL without its scheme (what an id may not hold made ``-``), cut to fit,
then ``:`` and 8 hex digits of the URL's SHA-256, so two URLs never share one:
``example.org-docs-intro:3f2a1b9c``.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Callable, Mapping
from pathlib import Path

from watcher.limits import format_size, size_from_env
from watcher.yaml_source import ConfigError, ConfigIssue

__all__ = ["MAX_BYTES_VARIABLE", "read_url_list", "resource_id_for"]

MAX_BYTES_VARIABLE = "WATCHER_MAX_URL_LIST_BYTES"
DEFAULT_MAX_BYTES = 256 * 1024 * 1024
"""A list of a million URLs is ~60 MB; past this a file is refused, not read."""
MAX_ERRORS = 20
"""Errors shown for one file: the rest are counted."""
_READABLE_LENGTH = 110
"""Of the 128 characters an id may have: room for ":" and the digest."""
_NOT_IN_AN_ID = re.compile(r"[^A-Za-z0-9_.-]+")


def resource_id_for(url: str) -> str:
    """A stable, readable, unique id for `url` (see the module's docstring)."""
    readable = _NOT_IN_AN_ID.sub("-", url.split("://", 1)[-1]).strip("-")[:_READABLE_LENGTH]
    digest = hashlib.sha256(url.encode()).hexdigest()[:8]
    return f"{readable}:{digest}"


def read_url_list(
    path: Path,
    url_problem: Callable[[str], str | None],
    env: Mapping[str, str] | None = None,
) -> list[str]:
    """The URLs of a list file, in order, each once; ConfigError with file:line for lines
    `url_problem` refuses (at most MAX_ERRORS shown), a file it cannot read, or one over the
    size limit (`WATCHER_MAX_URL_LIST_BYTES`)."""
    shown = str(path)
    env = os.environ if env is None else env
    try:
        limit = size_from_env(env, MAX_BYTES_VARIABLE, DEFAULT_MAX_BYTES)
    except ValueError as exc:
        raise ConfigError(str(exc), shown) from None
    try:
        size = path.stat().st_size
        if size > limit:
            raise ConfigError(
                f"{format_size(size)} is over the {format_size(limit)} limit for a URL list"
                f" (set {MAX_BYTES_VARIABLE} to raise it)",
                shown,
            )
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read it: {exc}", shown) from None
    urls: dict[str, None] = {}
    problems: list[ConfigIssue] = []
    for number, line in enumerate(text.splitlines(), 1):
        url = line.strip()
        if not url or url.startswith("#"):
            continue
        problem = url_problem(url)
        if problem is None:
            urls.setdefault(url)
            continue
        problems.append(ConfigIssue(shown, number, 1, "", problem))
    if problems:
        more = len(problems) - MAX_ERRORS
        if more > 0:
            problems = problems[:MAX_ERRORS]
            problems.append(ConfigIssue(shown, None, None, "", f"... and {more:,} more"))
        raise ConfigError(problems, shown)
    return list(urls)
