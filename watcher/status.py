"""`watcher status`: what every resource is doing, as a rich table, a live view, or JSON."""

from __future__ import annotations

import asyncio
import json
import math
import time
from dataclasses import asdict, dataclass, field
from typing import Any, TextIO

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from watcher.masking import mask_urls
from watcher.outbox import DeliveryCounts
from watcher.queue import HostState, Queue, Refusal, SchedulerInfo
from watcher.schedule import Schedule, format_duration

STATES = ("down", "failing", "changed", "waiting", "ok")
"""Every state `status` shows, the most telling first (the table's order)."""
STATE_STYLE = {
    "ok": "green",
    "changed": "bold yellow",
    "failing": "magenta",
    "down": "bold red",
    "waiting": "dim",
}
RECENT_CHANGE_MS = 3_600_000
"""A resource shows as changed for an hour after its last change, however often it runs."""
FAILED_OUTCOMES = ("failed", "retrying")


@dataclass
class ResourceRow:
    id: str
    check: str
    url: str
    schedule: str
    state: str
    """One of STATES: see `resource_state`."""
    last_run: float | None
    outcome: str | None
    """The last run's outcome as the runner reported it (baseline, unchanged, changed,
    retrying, failed), or None before the first run ends."""
    status_code: int | None
    not_modified: bool
    summary: str
    last_change: float | None
    next_run: float | None
    failures: int
    """Failed attempts in a row (0 once a run succeeds)."""
    skipped: int
    last_change_details: str | None = None
    """The last change's details (a diff), capped; None when it had none."""
    cadence: dict[str, Any] | None = None
    """{"seconds", "reason"}: the server's word on freshness holds runs this far apart,
    longer than the schedule's (`cadence: server`); None when the schedule alone decides."""


@dataclass
class Snapshot:
    time: float
    queue: str
    counts: dict[str, int]
    workers: list[dict[str, Any]]
    checks_per_minute: int
    not_modified_share: float | None
    total_resources: int
    failing_now: int
    """Resources failing or down now: those whose runs fail (the `failing` index), and
    those shown here whose check reports them down."""
    resources: list[ResourceRow]
    """The most telling `limit` resources (down and failing, then changed), in that order."""
    redis_refuses_writes: Refusal | None = None
    """Why Redis refuses writes now (out of memory, ...): workers back off meanwhile."""
    hosts: list[HostState] = field(default_factory=list)
    """Hosts whose budgets are at work: in flight, parked, paused, runs held so far."""
    deliveries: dict[str, DeliveryCounts] = field(default_factory=dict)
    """Per notifier: deliveries pending and failed now, sent so far (the outbox)."""


def resource_state(info: SchedulerInfo, now_ms: int) -> str:
    """down: its runs gave up (failed for good, or every attempt of a run failed, and no run
    succeeded since), or its check reports it down (`"up": false` in its state);
    failing: its last attempt failed and a retry is pending; waiting: no run ended yet;
    changed: its last run or one within RECENT_CHANGE_MS saw a change; ok: otherwise."""
    report = info.report
    outcome = report.get("outcome") if report else None
    if info.fails or outcome in FAILED_OUTCOMES:
        return "down" if _gave_up(info, outcome) else "failing"
    if report is None:
        return "waiting"
    if info.state.get("up") is False:
        return "down"
    last_change = info.last_change_ms
    if outcome == "changed" or (last_change and now_ms - last_change < RECENT_CHANGE_MS):
        return "changed"
    return "ok"


def _gave_up(info: SchedulerInfo, outcome: str | None) -> bool:
    # `fails` counts failed attempts in a row: as many as a run's attempts means a whole run
    # failed and none succeeded since. No pending run after a failure: the last one gave up.
    return outcome == "failed" or info.active_job is None or info.fails >= info.attempts


def _row(info: SchedulerInfo, now_ms: int) -> ResourceRow:
    report = info.report or {}
    return ResourceRow(
        id=info.id,
        check=info.name,
        url=mask_urls(str(info.data.get("url", ""))),  # no password, nor its ${VAR}
        schedule=info.schedule.describe(),
        state=resource_state(info, now_ms),
        last_run=info.last_run_ms / 1000 if info.last_run_ms else None,  # Redis time
        outcome=report.get("outcome"),
        status_code=report.get("status_code"),
        not_modified=bool(report.get("not_modified")),
        summary=str(report.get("summary", "")),
        last_change=info.last_change_ms / 1000 if info.last_change_ms else None,
        next_run=info.next_fire_ms / 1000 if info.next_fire_ms else None,
        failures=info.fails,
        skipped=info.skipped,
        cadence=_cadence(info.schedule, report.get("cadence")),
        last_change_details=info.last_change_details,
    )


def _cadence(schedule: Schedule, said: Any) -> dict[str, Any] | None:
    """The last run's server-driven hold, when it outlasts the schedule's interval."""
    if not isinstance(said, dict) or not isinstance(said.get("seconds"), int | float):
        return None
    if schedule.every_ms is not None and said["seconds"] * 1000 <= schedule.every_ms:
        return None
    return {"seconds": float(said["seconds"]), "reason": str(said.get("reason", ""))}


def schedule_text(row: ResourceRow) -> str:
    """ "every 1m", or with a server-driven hold "every 1m → 5m (max-age=300)"."""
    if row.cadence is None:
        return row.schedule
    why = row.cadence["reason"].removeprefix("Cache-Control ")
    return f"{row.schedule} → {format_duration(row.cadence['seconds'])} ({why})"


async def collect(queue: Queue, limit: int = 100) -> Snapshot:
    """Counts, workers and the `limit` most telling resources: only those are read, so
    100,000 resources take no longer than ten."""
    counts = await queue.counts()
    workers = await queue.workers()
    shown = await queue.list_schedulers(await queue.telling_ids(limit))
    now_ms = await queue.now_ms()
    rows = most_telling([_row(info, now_ms) for info in shown], limit)
    runs = sum(int(w.get("runs_1m", 0)) for w in workers)
    not_modified = sum(int(w.get("not_modified_1m", 0)) for w in workers)
    return Snapshot(
        time=now_ms / 1000,
        queue=queue.name,
        counts=counts,
        workers=workers,
        checks_per_minute=runs,
        not_modified_share=(not_modified / runs) if runs else None,
        total_resources=await queue.scheduler_count(),
        failing_now=counts["failing"] + sum(r.state == "down" and not r.failures for r in rows),
        resources=rows,
        redis_refuses_writes=await queue.write_refusal(),
        hosts=list((await queue.host_states(await queue.host_names())).values()),
        deliveries=await queue.outbox.counts(),
    )


async def write_json(queue: Queue, out: TextIO, chunk: int = 1000) -> None:
    """The snapshot as JSON with every resource (schema: docs/status-json.md), streamed: rows
    are read and written a chunk at a time, so memory stays flat and output starts at once;
    the exact counts by state come last, once every row was seen."""
    snapshot = await collect(queue, limit=0)
    now_ms = round(snapshot.time * 1000)
    out.write(json.dumps(_head(snapshot), indent=2)[:-2] + ',\n  "resources": [')
    tally = dict.fromkeys(STATES, 0)
    separator = "\n    "
    ids = await queue.scheduler_ids()
    for start in range(0, len(ids), chunk):
        rows = [
            _row(info, now_ms) for info in await queue.list_schedulers(ids[start : start + chunk])
        ]
        for row in rows:
            tally[row.state] += 1
        if rows:
            out.write(separator + ",\n    ".join(json.dumps(_resource_json(r)) for r in rows))
            separator = ",\n    "
    failing_now = tally["failing"] + tally["down"]
    out.write(f'\n  ],\n  "failing_now": {failing_now},\n  "states": {json.dumps(tally)}\n}}\n')


def _head(snapshot: Snapshot) -> dict[str, Any]:
    c = snapshot.counts
    refusal = snapshot.redis_refuses_writes
    hosts = {
        h.host: {
            "in_flight": h.in_flight,
            "parked": h.parked,
            "paused_until": iso(h.paused_until_ms / 1000) if h.paused_until_ms else None,
            "held": h.held,
        }
        for h in snapshot.hosts
    }
    return {
        "time": iso(snapshot.time),
        "queue": snapshot.queue,
        "total_resources": snapshot.total_resources,
        "hosts": hosts,
        "scheduled": c["schedulers"],
        "jobs": {"queued": c["wait"], "running": c["active"], "retry_pending": c["delayed"]},
        "totals": {
            "runs_completed": c["completed"],
            "runs_failed": c["failed"],
            "writes_fenced": c["fenced"],
        },
        "workers": [_worker_json(w) for w in snapshot.workers],
        "checks_per_minute": snapshot.checks_per_minute,
        "not_modified_share": snapshot.not_modified_share,
        "redis_refuses_writes": asdict(refusal) if refusal else None,
        "deliveries": {name: asdict(n) for name, n in snapshot.deliveries.items()},
    }


def _resource_json(row: ResourceRow) -> dict[str, Any]:
    return {
        "id": row.id,
        "check": row.check,
        "url": row.url,
        "schedule": row.schedule,
        "cadence": row.cadence,
        "state": row.state,
        "outcome": row.outcome,
        "status_code": row.status_code,
        "not_modified": row.not_modified,
        "summary": row.summary,
        "last_run": iso(row.last_run),
        "last_change": iso(row.last_change),
        "last_change_details": row.last_change_details,
        "next_run": iso(row.next_run),
        "failures": row.failures,
        "skipped": row.skipped,
    }


WORKER_TEXT = frozenset({"id", "host"})
"""Worker fields kept as text even when they look like numbers (a host named 1234)."""


def _worker_json(worker: dict[str, Any]) -> dict[str, Any]:
    """A worker's heartbeat hash (all strings in Redis) with numbers as numbers, true/false
    as booleans, and `seen` (ms) as an ISO-8601 time."""
    typed = {k: v if k in WORKER_TEXT else _typed(v) for k, v in worker.items()}
    if isinstance(typed.get("seen"), int | float):
        typed["seen"] = iso(typed["seen"] / 1000)
    return typed


def _typed(value: Any) -> Any:
    if not isinstance(value, str):
        return value
    if value in ("True", "False"):  # str() of a Python bool, as the heartbeat writes it
        return value == "True"
    for kind in (int, float):
        try:
            number = kind(value)
        except ValueError:
            continue
        return number if math.isfinite(number) else value
    return value


def iso(seconds: float | None) -> str | None:
    """An epoch time as ISO-8601 UTC to the millisecond, e.g. 2026-12-03T12:00:00.123Z."""
    if seconds is None:
        return None
    whole, ms = divmod(round(seconds * 1000), 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole)) + f".{ms:03d}Z"


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
    """Down and failing resources first (the most failures first), then the most recently
    changed, then the next to run."""
    rank = {state: at for at, state in enumerate(STATES)}
    ordered = sorted(
        rows,
        key=lambda r: (
            rank[r.state] if r.state in ("down", "failing") else len(STATES),
            -r.failures,
            -(r.last_change or 0),
            r.next_run or math.inf,
            r.id,
        ),
    )
    return ordered[:limit]


def render(snapshot: Snapshot, limit: int = 100) -> Group:
    shown = most_telling(snapshot.resources, limit)  # already so when collected
    table = Table(expand=True, show_edge=False, pad_edge=False)
    for column in ("resource", "check", "schedule", "state", "last run", "last change", "next"):
        table.add_column(column, overflow="fold" if column == "state" else "ellipsis")
    table.add_column("fails", justify="right")
    for row in shown:
        table.add_row(
            row.id,
            row.check,
            schedule_text(row),
            _state_text(row),
            ago(row.last_run, snapshot.time),
            ago(row.last_change, snapshot.time),
            until(row.next_run, snapshot.time),
            Text(str(row.failures), style="bold red" if row.failures else "dim"),
        )
    if not snapshot.total_resources:
        table.add_row("(no resources: run `watcher sync`)", *[""] * 7)
    parts: list[Text | Table] = [_header(snapshot), table]
    if len(shown) < snapshot.total_resources:
        hidden = snapshot.total_resources - len(shown)
        note = f"{hidden:,} more not shown (down and failing, then changed first; --limit N)"
        parts.append(Text(note, style="dim"))
    if held := _hosts_text(snapshot):
        parts.append(held)
    if deliveries := _deliveries_text(snapshot):
        parts.append(deliveries)
    return Group(*parts)


def _deliveries_text(snapshot: Snapshot) -> Text | None:
    """ "deliveries: team 3 pending, 1 failed · ops 12 sent", when anything is pending or
    failed (a notifier that only ever sent is not news)."""
    if not any(n.pending or n.failed for n in snapshot.deliveries.values()):
        return None
    text = Text("deliveries: ", style="dim")
    for at, (name, n) in enumerate(snapshot.deliveries.items()):
        if at:
            text.append(" · ", style="dim")
        text.append(f"{name} ")
        text.append(f"{n.pending:,} pending", style="yellow" if n.pending else "dim")
        text.append(", ", style="dim")
        text.append(f"{n.failed:,} failed", style="bold red" if n.failed else "dim")
        text.append(f", {n.sent:,} sent", style="dim")
    if any(n.failed for n in snapshot.deliveries.values()):
        text.append("  (watcher history shows which)", style="dim")
    return text


def _hosts_text(snapshot: Snapshot) -> Text | None:
    """The hosts whose budgets hold runs back, busiest first: "host budgets: 127.0.0.1 4 in
    flight, 196 parked, held 1,234 (concurrency 1,200, rate 34)"."""
    busy = [h for h in snapshot.hosts if h.parked or h.paused_until_ms or h.held]
    if not busy:
        return None
    busy.sort(key=lambda h: (h.parked, sum(h.held.values())), reverse=True)
    lines = []
    for h in busy[:10]:
        line = f"  {h.host}: {h.in_flight} in flight, {h.parked:,} parked"
        if h.paused_until_ms:
            line += f", paused {_span(h.paused_until_ms / 1000 - snapshot.time)} more"
        if h.held:
            reasons = ", ".join(f"{reason} {n:,}" for reason, n in sorted(h.held.items()))
            line += f", held so far: {reasons}"
        lines.append(line)
    if len(busy) > 10:
        lines.append(f"  … and {len(busy) - 10} more hosts")
    return Text("host budgets (hosts: in the YAML raises them):\n" + "\n".join(lines), style="dim")


def _state_text(row: ResourceRow) -> Text:
    """The state, then what went wrong or changed (with the last status code)."""
    text = Text(row.state, style=STATE_STYLE[row.state])
    if row.state == "waiting":
        return text.append(" first run pending", style="dim")
    # e.g. "unchanged: 503 Service Unavailable" of a down resource: the state says the rest
    detail = row.summary.removeprefix(f"{row.outcome}: ") if row.state != "ok" else ""
    code = "" if row.status_code is None else str(row.status_code)
    if code and code not in detail:
        detail = f"{code} {detail}".strip()
    return text.append(f" {detail}" if detail else "", style="dim")


def _header(snapshot: Snapshot) -> Text:
    c = snapshot.counts
    share = f"{snapshot.not_modified_share:.0%}" if snapshot.not_modified_share is not None else "—"
    header = Text.assemble(
        ("queue ", "dim"),
        (snapshot.queue, "bold"),
        ("  resources ", "dim"),
        f"{snapshot.total_resources:,}",
        ("  failing ", "dim"),
        (f"{snapshot.failing_now:,}", "bold red" if snapshot.failing_now else ""),
        ("  workers ", "dim"),
        str(len(snapshot.workers)),
        ("  checks/min ", "dim"),
        str(snapshot.checks_per_minute),
        ("  304 share ", "dim"),
        share,
        ("  jobs queued ", "dim"),
        str(c["wait"]),
        ("  running ", "dim"),
        str(c["active"]),
        ("  retries pending ", "dim"),
        str(c["delayed"]),
    )
    if c.get("fenced"):  # old runs' write-backs dropped: normal under overlap or a reconfig
        header.append_text(Text.assemble(("  fenced writes ", "dim"), str(c["fenced"])))
    if snapshot.redis_refuses_writes:
        refusal = snapshot.redis_refuses_writes
        header.append(f"  Redis refuses writes: {refusal.code}", style="bold red")
        header.append(f" ({refusal.message})", style="red")
    return header


async def live(queue: Queue, console: Console, interval: float = 1.0, limit: int = 100) -> None:
    """Refresh in place until cancelled (Ctrl-C)."""
    snapshot = await collect(queue, limit)
    with Live(render(snapshot, limit), console=console, auto_refresh=False) as view:
        while True:
            await asyncio.sleep(interval)
            view.update(render(await collect(queue, limit), limit), refresh=True)
