"""Logging as the command shows it, the same in every process: rich lines on a terminal;
plain, one-line, unpadded records when stderr is a pipe or a file (no wrapping at 80
columns, no columns padded with spaces, no markup)."""

from __future__ import annotations

import logging

from rich.console import Console
from rich.logging import RichHandler
from rich.text import Text

__all__ = ["setup_logging"]

NOISY = ("httpx", "httpcore", "aiohttp", "asyncio")


def setup_logging(debug: bool, *, verbose: bool = False, console: Console | None = None) -> None:
    """Log to stderr; a line per check (logger `watcher.checks`) only when verbose."""
    console = console or Console(stderr=True)
    handler: logging.Handler
    if console.is_terminal:
        handler = RichHandler(console=console, show_path=debug, rich_tracebacks=debug, markup=False)
        handler.setFormatter(logging.Formatter("%(message)s"))
    else:
        handler = logging.StreamHandler(console.file)
        handler.setFormatter(PlainFormatter())
    logging.basicConfig(
        level=logging.DEBUG if debug else logging.INFO, handlers=[handler], force=True
    )
    for noisy in NOISY:
        logging.getLogger(noisy).setLevel(logging.WARNING)
    logging.getLogger("watcher.checks").setLevel(
        logging.DEBUG if debug else logging.INFO if verbose else logging.WARNING
    )


class PlainFormatter(logging.Formatter):
    """``2026-12-03 08:29:01 WARNING r1 failed: 503 Service Unavailable``: a record a line,
    rich markup (the console notifier's) rendered as plain text."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(message)s", "%Y-%m-%d %H:%M:%S")

    def formatMessage(self, record: logging.LogRecord) -> str:
        if getattr(record, "markup", False):
            record.message = Text.from_markup(record.message).plain
        return super().formatMessage(record)
