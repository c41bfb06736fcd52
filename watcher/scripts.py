"""The queue's Lua scripts (watcher/lua/), each loaded with the shared prelude.

Every script's header names the fixed keys it touches in one line, ``-- KEYS: wait active``;
they are passed in ``KEYS`` in that order (a cluster routes and checks them), and the
per-job and per-scheduler keys are built in the script from the prefix, ``ARGV[1]``. The
constants the prelude shares with Python are written here, from Python's values.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from importlib.resources import files
from typing import Any

from redis.commands.core import AsyncScript

from watcher.hosts import MAX_PAUSE
from watcher.jobs import DEFAULT_ATTEMPTS, DEFAULT_NAME, JobState

__all__ = ["CHANGED_MAX", "EVENTS_MAX", "MARKER_MAX", "Script", "load_scripts"]

EVENTS_MAX = 10_000
"""The events stream is trimmed to about this many entries."""
MARKER_MAX = 64
"""Wake-up tokens kept for idle workers."""
CHANGED_MAX = 10_000
"""Schedulers ranked by their last change (status shows the newest of them)."""

_KEYS_LINE = re.compile(r"^-- KEYS: (.+)$", re.MULTILINE)


def prelude() -> str:
    constants = [
        f"local DEFAULT_ATTEMPTS = {DEFAULT_ATTEMPTS}",
        f"local DEFAULT_NAME = '{DEFAULT_NAME}'",
        f"local EVENTS_MAX = {EVENTS_MAX}",
        f"local MARKER_MAX = {MARKER_MAX}",
        f"local CHANGED_MAX = {CHANGED_MAX}",
        f"local MAX_PAUSE_MS = {round(MAX_PAUSE * 1000)}",
        *(f"local {state.name} = '{state.value}'" for state in JobState),
    ]
    return "\n".join(constants) + "\n" + _source("prelude")


@dataclass(frozen=True)
class Script:
    """One registered script and the fixed keys (full names) it is called with."""

    name: str
    keys: tuple[str, ...]
    registered: AsyncScript

    async def __call__(self, prefix: str, args: Sequence[Any]) -> Any:
        return await self.registered(keys=self.keys, args=[prefix, *args])


def load_scripts(redis: Any, prefix: str, names: Sequence[str]) -> dict[str, Script]:
    """Register each script (prelude first) on `redis`, with its keys under `prefix`."""
    shared = prelude()
    scripts = {}
    for name in names:
        source = _source(name)
        declared = _KEYS_LINE.search(source)
        if declared is None:
            raise RuntimeError(f"watcher/lua/{name}.lua: its header has no '-- KEYS:' line")
        keys = tuple(prefix + part for part in declared.group(1).split())
        scripts[name] = Script(name, keys, redis.register_script(shared + source))
    return scripts


def _source(name: str) -> str:
    return files("watcher").joinpath("lua", f"{name}.lua").read_text()
