"""`watcher check`: one check, now, in the foreground, without writing to Redis.

It runs the check twice, as a scheduler would: the first run records the baseline, the
second sends the stored validators, so the output shows whether the server honours them.
With `compare_with` (a resource's stored state, `watcher check --id ID --compare`) it runs
once with that state, as the next scheduled run would, and says whether the resource
changed since (old → new); the state is not written back.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from typing import Any

import httpx
from rich.console import Console
from rich.table import Table
from rich.text import Text

from watcher.check import CheckContext, CheckFailed, CheckResult, Resource
from watcher.fetch import run_check
from watcher.http import make_client
from watcher.masking import RedactingLogger
from watcher.registry import load_check

CONDITIONAL = ("if-none-match", "if-modified-since")
COMPARED = "against the stored state"
SHOWN_RESPONSE_HEADERS = ("etag", "last-modified", "content-type", "content-length", "location")


async def _no_upsert(*, state: Any = None, every: Any = None) -> bool:
    return False


async def check_once(
    console: Console,
    template: Mapping[str, Any],
    check_name: str,
    transport: str,
    *,
    compare_with: Mapping[str, Any] | None = None,
) -> int:
    """0, or 1 if the check failed."""
    check = load_check(check_name, resource=str(template["id"]))
    try:
        resource = Resource.from_template(template)
    except CheckFailed as exc:
        console.print(Text.assemble(("failed:", "bold red"), f" {exc.reason}"))
        return 1
    log = RedactingLogger(logging.getLogger("watcher.check"), resource.redact)
    exchanges: list[tuple[httpx.Request, httpx.Response]] = []

    async def on_response(response: httpx.Response) -> None:
        exchanges.append((response.request, response))

    state: dict[str, Any] = {}
    labels: tuple[str, ...] = ("first run", "second run")
    if compare_with is not None:
        state, labels = dict(compare_with), (COMPARED,)
        _show_stored(console, state, resource)
    async with make_client(transport=transport) as client:
        client.event_hooks["response"].append(on_response)
        for label in labels:
            exchanges.clear()
            ctx = CheckContext(resource, dict(state), client, log, _no_upsert)
            try:
                result = await run_check(check, ctx)
            except Exception as exc:
                _show_exchanges(console, label, exchanges, resource)
                _show_failure(console, label, exc, resource)
                return 1
            _show_exchanges(console, label, exchanges, resource)
            _show_result(console, label, result, resource)
            if compare_with is not None:
                _show_old_new(console, state, result, resource)
            state = result.state
    return 0


def _show_failure(console: Console, label: str, exc: Exception, resource: Resource) -> None:
    if isinstance(exc, CheckFailed):
        outcome, why = "failed", exc.reason
    else:  # a plugin's bug: one line, as the runner says it
        outcome, why = "crashed", f"{type(exc).__name__}: {exc}"
    reason = resource.redact(why)
    console.print(Text.assemble((f"{label}: {outcome}:", "bold red"), f" {reason}"))


def _show_stored(console: Console, state: Mapping[str, Any], resource: Resource) -> None:
    if not state:
        shown = "none (the resource has not run yet): this run is a baseline"
    else:
        shown = "; ".join(f"{key}: {_value(value)}" for key, value in state.items())
    console.print(Text(resource.redact(f"stored state: {shown}")), highlight=False)


def _show_old_new(
    console: Console, stored: Mapping[str, Any], result: CheckResult, resource: Resource
) -> None:
    """What changed since the stored state, old → new (what the check shows of a change, as
    the history does); a note that nothing was stored."""
    if result.changed and not result.baseline:
        old = stored if result.old is None else result.old
        new = result.state if result.new is None else result.new
        for key in dict.fromkeys([*old, *new]):
            if old.get(key) != new.get(key):
                line = f"  {key}: {_value(old.get(key))} → {_value(new.get(key))}"
                console.print(Text(resource.redact(line)), highlight=False)
    console.print("the stored state was not changed (nothing is written to Redis)")


def _value(value: Any) -> str:
    return "(none)" if value is None else value if isinstance(value, str) else json.dumps(value)


def _show_exchanges(
    console: Console,
    label: str,
    exchanges: list[tuple[httpx.Request, httpx.Response]],
    resource: Resource,
) -> None:
    """What was sent and answered, each redirect hop too; anything the server echoes (into a
    Location as well) is shown redacted."""
    for request, response in exchanges:
        sent = {k: v for k, v in request.headers.items() if k.lower() in CONDITIONAL}
        table = Table(
            title=Text(resource.redact(f"{label}: {request.method} {request.url}")),
            show_header=False,
            title_justify="left",
            box=None,
        )
        status = f"{response.status_code} {response.reason_phrase}"
        table.add_row("status", Text(resource.redact(status)))
        table.add_row("conditional headers sent", Text(resource.redact(_pairs(sent)) or "none"))
        received = {
            k: v for k, v in response.headers.items() if k.lower() in SHOWN_RESPONSE_HEADERS
        }
        table.add_row("validators and headers", Text(resource.redact(_pairs(received)) or "none"))
        console.print(table)


def _show_result(console: Console, label: str, result: CheckResult, resource: Resource) -> None:
    kind = "baseline" if result.baseline else "changed" if result.changed else "unchanged"
    style = {"baseline": "cyan", "changed": "yellow", "unchanged": "green"}[kind]
    summary = resource.redact(result.summary)
    console.print(Text.assemble((f"{label}: {kind}", style), f" - {summary}"), highlight=False)
    if result.details:
        console.print(Text(resource.redact(result.details)), highlight=False)


def _pairs(headers: Mapping[str, str]) -> str:
    return "\n".join(f"{k}: {v}" for k, v in headers.items())
