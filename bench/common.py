"""What the benchmarks in bench/ share: where things are, the machine they ran on, the command
line, free ports, the console and the results' tables.

A benchmark is run as a script (`.venv/bin/python bench/<name>.py`), so Python puts bench/ first
on sys.path, where bench/queue.py and bench/checks.py would shadow the standard library's
`queue` (imported by asyncio and concurrent.futures) and watcher's built-in `checks` package.
Every script therefore starts, before any other import, by taking its own folder off sys.path
and putting the repository's first (two lines: they cannot live here, since finding this module
needs them), and then imports this module as `bench.common`.

Importing it needs the standard library only (rich is imported by the functions that draw).
The peers' runners (bench/peers/*_runner.py) run in virtual environments of their own and share
bench/peers/_runner.py instead.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import os
import platform
import shlex
import socket
import sys
from collections.abc import Iterable, Sequence
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rich.console import Console
    from rich.table import Table

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent


class BenchError(RuntimeError):
    """A measurement that could not be made; its row says so and the others go on."""


# -- the machine ------------------------------------------------------------------------


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def machine_info(redis_version: str) -> dict[str, str]:
    """nproc, cpu, os, python and redis (the version of the private redis-server)."""
    return {
        "nproc": str(len(os.sched_getaffinity(0))),
        "cpu": cpu_model(),
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "redis": redis_version,
    }


def load_average() -> float:
    """The machine's 1-minute load average."""
    return os.getloadavg()[0]


def package_versions(*names: str) -> dict[str, str]:
    """The installed versions of those of `names` that are installed."""
    versions = {}
    for name in names:
        with contextlib.suppress(metadata.PackageNotFoundError):
            versions[name] = metadata.version(name)
    return versions


def event_loop_name() -> str:
    """The event loop uvicorn picks: "uvloop" where it is installed, else "asyncio"."""
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return "asyncio"
    return "uvloop"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on (now)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# -- the command line -------------------------------------------------------------------


def arg_parser(
    doc: str | None, *, quick: str | None = None, results: Path | None = None
) -> argparse.ArgumentParser:
    """A parser described by the first paragraph of the benchmark's docstring, with the flags
    the benchmarks share: --quick (smaller sizes, as `quick` says) and --output (the Markdown
    results file, `results` by default), each where the benchmark has it."""
    parser = argparse.ArgumentParser(description=(doc or "").split("\n\n")[0])
    if quick is not None:
        parser.add_argument("--quick", action="store_true", help=quick)
    if results is not None:
        parser.add_argument(
            "--output",
            type=Path,
            default=results,
            help=f"the Markdown file ({results.relative_to(REPO)})",
        )
    return parser


def _shown(path: str) -> str:
    absolute = Path(os.path.abspath(path))  # not resolve(): a venv's python is a symlink
    return str(absolute.relative_to(REPO)) if absolute.is_relative_to(REPO) else path


def command_line() -> str:
    """How this run was started: interpreter, script and arguments, paths inside the
    repository shown relative to it."""
    return shlex.join([_shown(sys.executable), _shown(sys.argv[0]), *sys.argv[1:]])


def last_lines(text: str, n: int = 1) -> str:
    """The last `n` non-blank lines of `text`, joined with " | " (for an error message)."""
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return " | ".join(lines[-n:])


# -- output -----------------------------------------------------------------------------


def make_console() -> Console:
    """The console the benchmarks print to (wide enough for their tables in a file or pipe)."""
    from rich.console import Console

    return Console(highlight=False, width=None if sys.stdout.isatty() else 200)


def rich_table(
    title: str, header: Sequence[str], body: Iterable[Sequence[str]], left: Sequence[int] = (0,)
) -> Table:
    """A table of text cells; the columns numbered in `left` are left-aligned, the rest right."""
    from rich.markup import escape
    from rich.table import Table

    table = Table(title=title, title_justify="left")
    for i, name in enumerate(header):
        table.add_column(name, justify="left" if i in left else "right")
    for cells in body:
        table.add_row(*(escape(cell) for cell in cells))
    return table


def markdown_table(
    header: Sequence[str], body: Iterable[Sequence[str]], left: Sequence[int] = (0,)
) -> list[str]:
    """The same table in Markdown, one line a row."""

    def row(cells: Iterable[str]) -> str:
        return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"

    aligns = ["---" if i in left else "---:" for i in range(len(header))]
    return [row(header), row(aligns), *(row(cells) for cells in body)]


def markdown_preamble(
    title: str,
    machine: dict[str, str],
    *,
    versions: str,
    load: tuple[float, float],
    elapsed: float,
    server_note: str = "",
    load_note: str = "",
) -> list[str]:
    """The head of a results file: title, date, machine, versions, load and command."""
    return [
        f"# {title}",
        "",
        f"- date: {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC",
        f"- machine: nproc {machine['nproc']}, {machine['cpu']}, {machine['os']}",
        f"- python {machine['python']}, redis-server {machine['redis']} (private, no "
        f"persistence, 127.0.0.1){server_note}",
        f"- versions: {versions}",
        f"- load average (1 min): {load[0]:.2f} at start, {load[1]:.2f} at end{load_note}",
        f"- command: `{command_line()}` ({elapsed / 60:.1f} min)",
    ]
