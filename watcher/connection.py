"""Which queue and Redis a read command uses, from the YAML's top-level keys alone.

`watcher status` and `watcher history` need the `queue`, `redis` and `history_limit` keys,
not the resources: loading and validating a file of 100,000 resources takes seconds, so
these keys are read from their own top-level lines. A file laid out otherwise (flow style,
anchors) is loaded whole.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

from watcher.limits import Limits
from watcher.yaml_source import Report, substitute

if TYPE_CHECKING:
    from watcher.config import Config

__all__ = ["QueueSettings", "queue_name_for", "read_queue_settings"]

_SETTING_LINE = re.compile(r"^(?:queue|redis|history_limit):.*$", re.MULTILINE)
_TOP_LEVEL_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*:(?:[ \t]|$)")


def queue_name_for(source: str) -> str:
    """The queue a config file uses unless it says `queue:`: its own, named after the file
    (`mine.yaml` -> `mine`), so configs sharing one Redis never run each other's resources."""
    stem = os.path.splitext(os.path.basename(source))[0]
    name = re.sub(r"[^A-Za-z0-9_.-]", "-", stem)[:64].strip(".-")
    return name or "watcher"


@dataclass(frozen=True)
class QueueSettings:
    queue: str = "watcher"
    redis: str | None = None
    history_limit: int = 10_000


def read_queue_settings(path: str | Path) -> QueueSettings | Config:
    """The connection keys of the YAML at `path` (the whole file when its layout asks)."""
    settings = _from_lines(str(path), text) if (text := _bounded_text(path)) else None
    if settings is None:
        from watcher.config import load_config  # pydantic: a third of the start-up time

        return load_config(path)
    return settings


def _bounded_text(path: str | Path) -> str | None:
    """The file's text within the config size limit; None (the whole load then says what
    is wrong, with file and line) when it is larger, not UTF-8, or the limit is invalid."""
    try:
        limit = Limits.from_env(os.environ).max_bytes
    except ValueError:
        return None
    with open(path, "rb") as file:
        raw = file.read(limit + 1)
    if len(raw) > limit:
        return None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return None


def _from_lines(filename: str, text: str) -> QueueSettings | None:
    lines = [line for line in text.splitlines() if line.strip() and not line.startswith("#")]
    if lines and lines[0].strip() == "---":
        lines = lines[1:]
    if not lines or not all(_TOP_LEVEL_KEY.match(line) or line[0] in " \t-" for line in lines):
        return None  # not a plain block mapping at the top
    try:
        found = yaml.safe_load("\n".join(_SETTING_LINE.findall(text))) or {}
    except yaml.YAMLError:
        return None
    if not isinstance(found, dict):
        return None
    redis = found.get("redis")
    if redis is not None:
        report = Report(filename)
        redis = substitute(redis, ("redis",), os.environ, report)
        if report.problems:
            return None  # the full load says what is wrong, with file and line
    queue = found.get("queue", queue_name_for(filename))
    limit = found.get("history_limit", 10_000)
    if (
        not isinstance(queue, str)
        or not isinstance(limit, int)
        or not (redis is None or isinstance(redis, str))
    ):
        return None
    return QueueSettings(queue=queue, redis=redis, history_limit=limit)
