"""Logging as the command shows it: rich lines on stderr, the same in every process."""

from __future__ import annotations

import logging

from rich.console import Console
from rich.logging import RichHandler

__all__ = ["setup_logging"]

NOISY = ("httpx", "httpcore", "aiohttp", "asyncio")


def setup_logging(debug: bool, *, verbose: bool = False, console: Console | None = None) -> None:
    """Rich lines on stderr; a line per check (logger `watcher.checks`) only when verbose."""
    handler = RichHandler(
        console=console or Console(stderr=True),
        show_path=debug,
        rich_tracebacks=debug,
        markup=False,
    )
    logging.basicConfig(
        level=logging.DEBUG if debug else logging.INFO,
        format="%(message)s",
        handlers=[handler],
        force=True,
    )
    for noisy in NOISY:
        logging.getLogger(noisy).setLevel(logging.WARNING)
    logging.getLogger("watcher.checks").setLevel(
        logging.DEBUG if debug else logging.INFO if verbose else logging.WARNING
    )
