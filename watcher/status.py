"""`watcher status`: what every resource is doing, as a rich table, a live view, or JSON."""

from __future__ import annotations

import asyncio
from dataclasses import asdict, dataclass
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from watcher.queue import Queue, SchedulerInfo

OUTCOME_STYLE = {
    "unchanged": "green",
    "changed": "bold yellow",
    "baseline": "cyan",
    "retrying": "magenta",
    "failed": "bold red",
}


@dataclass
class ResourceRow:
    id: str
    check: str
    url: str
    schedule: str
    last_run: float | None
    outcome: str | None
    status_code: int | None
    not_modified: bool
    summary: str
    last_change: float | None
    next_run: float | None
    failures: int
    skipped: int


@dataclass
class Snapshot:
    time: float
    queue: str
    counts: dict[str, int]
    workers: list[dict[str, Any]]
    checks_per_minute: int
    not_modified_share: float | None
    resources: list[ResourceRow]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _row(info: SchedulerInfo) -> ResourceRow:
    report = info.report or {}
    return ResourceRow(
        id=info.id,
        check=info.name,
        url=str(info.data.get("url", "")),
        schedule=info.schedule.describe(),
        last_run=info.last_run_ms / 1000 if info.last_run_ms else None,  # Redis time
        outcome=report.get("outcome"),
        status_code=report.get("status_code"),
        not_modified=bool(report.get("not_modified")),
        summary=str(report.get("summary", "")),
        last_change=info.last_change_ms / 1000 if info.last_change_ms else None,
        next_run=info.next_fire_ms / 1000 if info.next_fire_ms else None,
        failures=info.fails,
        skipped=info.skipped,
    )


async def collect(queue: Queue) -> Snapshot:
    counts = await queue.counts()
    workers = await queue.workers()
    infos = await queue.list_schedulers()
    runs = sum(int(w.get("runs_1m", 0)) for w in workers)
    not_modified = sum(int(w.get("not_modified_1m", 0)) for w in workers)
    return Snapshot(
        time=await queue.now_ms() / 1000,
        queue=queue.name,
        counts=counts,
        workers=workers,
        checks_per_minute=runs,
        not_modified_share=(not_modified / runs) if runs else None,
        resources=[_row(info) for info in infos],
    )


def ago(moment: float | None, now: float) -> str:
    if moment is None:
        return "never"
    return _span(now - moment) + " ago"


def until(moment: float | None, now: float) -> str:
    if moment is None:
        return "—"
    delta = moment - now
    return "due" if delta <= 0 else "in " + _span(delta)


def _span(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 1:
        return f"{int(seconds * 1000)}ms"
    if seconds < 90:
        return f"{int(seconds)}s"
    if seconds < 5400:
        return f"{int(seconds // 60)}m"
    if seconds < 172800:
        return f"{int(seconds // 3600)}h"
    return f"{int(seconds // 86400)}d"


def most_telling(rows: list[ResourceRow], limit: int) -> list[ResourceRow]:
    """Failing resources first, then the most recently changed, then by id."""
    ordered = sorted(rows, key=lambda r: (-r.failures, -(r.last_change or 0), r.id))
    return ordered[:limit]


def render(snapshot: Snapshot, limit: int = 100) -> Group:
    now = snapshot.time
    c = snapshot.counts
    share = f"{snapshot.not_modified_share:.0%}" if snapshot.not_modified_share is not None else "—"
    header = Text.assemble(
        ("queue ", "dim"),
        (snapshot.queue, "bold"),
        ("  resources ", "dim"),
        str(len(snapshot.resources)),
        ("  workers ", "dim"),
        str(len(snapshot.workers)),
        ("  checks/min ", "dim"),
        str(snapshot.checks_per_minute),
        ("  304 share ", "dim"),
        share,
        ("  waiting ", "dim"),
        str(c["wait"]),
        ("  active ", "dim"),
        str(c["active"]),
        ("  retrying ", "dim"),
        str(c["delayed"]),
        ("  failed ", "dim"),
        str(c["failed"]),
    )
    if c.get("fenced"):  # old runs' write-backs dropped: normal under overlap or a reconfig
        header.append_text(Text.assemble(("  fenced writes ", "dim"), str(c["fenced"])))
    table = Table(expand=True, show_edge=False, pad_edge=False)
    for column in ("resource", "check", "schedule", "last run", "result", "last change", "next"):
        table.add_column(column, overflow="fold" if column == "result" else "ellipsis")
    table.add_column("fails", justify="right")
    shown = most_telling(snapshot.resources, limit)
    for row in shown:
        outcome = row.outcome or "pending"
        code = "" if row.status_code is None else f" {row.status_code}"
        result = Text(outcome + code, style=OUTCOME_STYLE.get(outcome, "dim"))
        if row.summary and outcome in ("failed", "retrying", "changed"):
            result.append(f" {row.summary}", style="dim")
        table.add_row(
            row.id,
            row.check,
            row.schedule,
            ago(row.last_run, now),
            result,
            ago(row.last_change, now),
            until(row.next_run, now),
            Text(str(row.failures), style="bold red" if row.failures else "dim"),
        )
    if not snapshot.resources:
        table.add_row("(no resources: run `watcher sync`)", *[""] * 7)
    if len(shown) < len(snapshot.resources):
        hidden = len(snapshot.resources) - len(shown)
        note = f"{hidden:,} more not shown (failing and recently changed first; --limit N)"
        return Group(header, table, Text(note, style="dim"))
    return Group(header, table)


async def live(queue: Queue, console: Console, interval: float = 1.0, limit: int = 100) -> None:
    """Refresh in place until cancelled (Ctrl-C)."""
    with Live(render(await collect(queue), limit), console=console, auto_refresh=False) as view:
        while True:
            await asyncio.sleep(interval)
            view.update(render(await collect(queue), limit), refresh=True)
