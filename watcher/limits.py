"""How much a configuration file may make the loader do: its size, the length of one
string, and how much YAML aliases may add by expansion.

The limits come from environment variables, so that they hold before the file is read:

- ``WATCHER_MAX_CONFIG_BYTES``: the file's size (default 10MB); aliases may not add more
  text than this either.
- ``WATCHER_MAX_CONFIG_STRING``: one string value or key (default 64KB).
- ``WATCHER_MAX_CONFIG_NODES``: the values that alias expansion may add (default 1000000);
  every use of an alias counts everything under its anchor.

Sizes are bytes, or a number with KB, MB or GB (powers of 1024).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

__all__ = [
    "BYTES_VARIABLE",
    "NODES_VARIABLE",
    "STRING_VARIABLE",
    "Limits",
    "format_size",
    "size_from_env",
]

BYTES_VARIABLE = "WATCHER_MAX_CONFIG_BYTES"
STRING_VARIABLE = "WATCHER_MAX_CONFIG_STRING"
NODES_VARIABLE = "WATCHER_MAX_CONFIG_NODES"

_UNITS = {"": 1, "b": 1, "k": 1024, "kb": 1024, "m": 1024**2, "mb": 1024**2, "g": 1024**3}
_UNITS["gb"] = _UNITS["g"]
_SIZE_RE = re.compile(r"(\d+)\s*([a-z]*)")


@dataclass(frozen=True)
class Limits:
    max_bytes: int = 10 * 1024**2
    max_string: int = 64 * 1024
    max_nodes: int = 1_000_000

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Limits:
        """The defaults, overridden by the environment; ValueError names a bad variable."""
        defaults = cls()
        return cls(
            max_bytes=size_from_env(env, BYTES_VARIABLE, defaults.max_bytes),
            max_string=size_from_env(env, STRING_VARIABLE, defaults.max_string),
            max_nodes=_count(env, NODES_VARIABLE, defaults.max_nodes),
        )


def size_from_env(env: Mapping[str, str], name: str, default: int) -> int:
    """A size from the environment variable `name` (10MB, 64KB, bytes), else `default`."""
    text = env.get(name, "").strip().lower().replace("_", "")
    if not text:
        return default
    match = _SIZE_RE.fullmatch(text)
    if not match or match.group(2) not in _UNITS or int(match.group(1)) == 0:
        raise ValueError(
            f"{name}={env[name]!r} is not a size; expected e.g. 10MB, 64KB or a number of bytes"
        )
    return int(match.group(1)) * _UNITS[match.group(2)]


def _count(env: Mapping[str, str], name: str, default: int) -> int:
    text = env.get(name, "").strip().replace("_", "")
    if not text:
        return default
    if not text.isdigit() or int(text) == 0:
        raise ValueError(f"{name}={env[name]!r} is not a count; expected e.g. 1000000")
    return int(text)


def format_size(size: int) -> str:
    """10485760 -> '10MB', 65536 -> '64KB', 1000 -> '1000 bytes'."""
    for unit, scale in (("GB", 1024**3), ("MB", 1024**2), ("KB", 1024)):
        if size >= scale and size % scale == 0:
            return f"{size // scale}{unit}"
    return f"{size:,} bytes"
