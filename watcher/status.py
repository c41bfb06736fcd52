"""`watcher status`: what every resource is doing, as a rich table, a live view, or JSON."""

from __future__ import annotations

import asyncio
import json
import math
from dataclasses import asdict, dataclass
from typing import Any, TextIO

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from watcher.masking import mask_urls
from watcher.queue import Queue, Refusal, SchedulerInfo

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
    total_resources: int
    resources: list[ResourceRow]
    """The most telling `limit` resources (failing, then recently changed), in that order."""
    redis_refuses_writes: Refusal | None = None
    """Why Redis refuses writes now (out of memory, ...): workers back off meanwhile."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _row(info: SchedulerInfo) -> ResourceRow:
    report = info.report or {}
    return ResourceRow(
        id=info.id,
        check=info.name,
        url=mask_urls(str(info.data.get("url", ""))),  # no password, nor its ${VAR}
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


async def collect(queue: Queue, limit: int = 100) -> Snapshot:
    """Counts, workers and the `limit` most telling resources: only those are read, so
    100,000 resources take no longer than ten."""
    counts = await queue.counts()
    workers = await queue.workers()
    shown = await queue.list_schedulers(await queue.telling_ids(limit))
    runs = sum(int(w.get("runs_1m", 0)) for w in workers)
    not_modified = sum(int(w.get("not_modified_1m", 0)) for w in workers)
    return Snapshot(
        time=await queue.now_ms() / 1000,
        queue=queue.name,
        counts=counts,
        workers=workers,
        checks_per_minute=runs,
        not_modified_share=(not_modified / runs) if runs else None,
        total_resources=await queue.scheduler_count(),
        resources=most_telling([_row(info) for info in shown], limit),
        redis_refuses_writes=await queue.write_refusal(),
    )


async def write_json(queue: Queue, out: TextIO, chunk: int = 1000) -> None:
    """The snapshot as JSON with every resource, streamed: rows are read and written a
    chunk at a time, so memory stays flat and output starts at once."""
    snapshot = await collect(queue, limit=0)
    head = snapshot.to_dict()
    del head["resources"]
    out.write(json.dumps(head, indent=2, default=str)[:-2] + ',\n  "resources": [')
    ids = await queue.scheduler_ids()
    separator = "\n    "
    for start in range(0, len(ids), chunk):
        for info in await queue.list_schedulers(ids[start : start + chunk]):
            out.write(separator + json.dumps(asdict(_row(info)), default=str))
            separator = ",\n    "
    out.write("\n  ]\n}\n")


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
    """Failing resources first, then the most recently changed, then the next to run."""
    ordered = sorted(
        rows,
        key=lambda r: (-r.failures, -(r.last_change or 0), r.next_run or math.inf, r.id),
    )
    return ordered[:limit]


def render(snapshot: Snapshot, limit: int = 100) -> Group:
    now = snapshot.time
    c = snapshot.counts
    share = f"{snapshot.not_modified_share:.0%}" if snapshot.not_modified_share is not None else "—"
    header = Text.assemble(
        ("queue ", "dim"),
        (snapshot.queue, "bold"),
        ("  resources ", "dim"),
        f"{snapshot.total_resources:,}",
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
    if snapshot.redis_refuses_writes:
        refusal = snapshot.redis_refuses_writes
        header.append(f"  Redis refuses writes: {refusal.code}", style="bold red")
        header.append(f" ({refusal.message})", style="red")
    table = Table(expand=True, show_edge=False, pad_edge=False)
    for column in ("resource", "check", "schedule", "last run", "result", "last change", "next"):
        table.add_column(column, overflow="fold" if column == "result" else "ellipsis")
    table.add_column("fails", justify="right")
    shown = most_telling(snapshot.resources, limit)  # already so when collected
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
    if not snapshot.total_resources:
        table.add_row("(no resources: run `watcher sync`)", *[""] * 7)
    if len(shown) < snapshot.total_resources:
        hidden = snapshot.total_resources - len(shown)
        note = f"{hidden:,} more not shown (failing and recently changed first; --limit N)"
        return Group(header, table, Text(note, style="dim"))
    return Group(header, table)


async def live(queue: Queue, console: Console, interval: float = 1.0, limit: int = 100) -> None:
    """Refresh in place until cancelled (Ctrl-C)."""
    snapshot = await collect(queue, limit)
    with Live(render(snapshot, limit), console=console, auto_refresh=False) as view:
        while True:
            await asyncio.sleep(interval)
            view.update(render(await collect(queue, limit), limit), refresh=True)
