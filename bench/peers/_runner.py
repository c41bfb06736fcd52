"""What every runner of bench/queue.py shares: the task protocol and small helpers.

Stdlib only: it is imported from each library's own virtual environment. A runner is run
as `python <lib>_runner.py '<task JSON>'` and prints one JSON line: {"ok": true, ...} or
{"ok": false, "error": ...} (exit 1).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import platform
import sys
import traceback
from collections.abc import Awaitable, Callable
from importlib import metadata
from typing import Any

Mode = Callable[[dict], dict | Awaitable[dict]]


def versions(*packages: str) -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in packages:
        with contextlib.suppress(metadata.PackageNotFoundError):
            out[name] = metadata.version(name)
    return out


async def concurrently(n: int, lanes: int, fn: Callable[[int], Awaitable[Any]]) -> None:
    """Call fn(0..n-1) from `lanes` concurrent tasks."""
    numbers = iter(range(n))

    async def lane() -> None:
        for i in numbers:
            await fn(i)

    await asyncio.gather(*(lane() for _ in range(lanes)))


def serve_task(packages: tuple[str, ...], modes: dict[str, Mode]) -> None:
    """Run the task given on the command line and print its one JSON line."""
    task = json.loads(sys.argv[1])
    try:
        if task["mode"] == "versions":
            result: dict = {"versions": versions(*packages)}
        elif task["mode"] in modes:
            result = modes[task["mode"]](task)
            if inspect.isawaitable(result):
                result = asyncio.run(result)
        else:
            raise ValueError(f"unknown mode {task['mode']!r}")
    except Exception as exc:
        traceback.print_exc()
        print(json.dumps({"ok": False, "error": f"{type(exc).__name__}: {exc}"}), flush=True)
        sys.exit(1)
    print(json.dumps({"ok": True, **result}), flush=True)
