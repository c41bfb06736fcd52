"""`watcher check`: one check, now, in the foreground, without Redis.

It runs the check twice, as a scheduler would: the first run records the baseline, the
second sends the stored validators, so the output shows whether the server honours them.
"""

from __future__ import annotations

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
SHOWN_RESPONSE_HEADERS = ("etag", "last-modified", "content-type", "content-length", "location")


async def _no_upsert(*, state: Any = None, every: Any = None) -> bool:
    return False


async def check_once(
    console: Console, template: Mapping[str, Any], check_name: str, transport: str
) -> int:
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
    failed = False
    async with make_client(transport=transport) as client:
        client.event_hooks["response"].append(on_response)
        for label in ("first run", "second run"):
            exchanges.clear()
            ctx = CheckContext(resource, dict(state), client, log, _no_upsert)
            try:
                result = await run_check(check, ctx)
            except Exception as exc:
                if isinstance(exc, CheckFailed):
                    outcome, why = "failed", exc.reason
                else:  # a plugin's bug: one line, as the runner says it
                    outcome, why = "crashed", f"{type(exc).__name__}: {exc}"
                _show_exchanges(console, label, exchanges, resource)
                reason = resource.redact(why)
                console.print(Text.assemble((f"{label}: {outcome}:", "bold red"), f" {reason}"))
                failed = True
                break
            _show_exchanges(console, label, exchanges, resource)
            _show_result(console, label, result, resource)
            state = result.state
    return 1 if failed else 0


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
