"""The ``status`` check (uptime): reports when the status code or reachability changes.

A failed connection is not an error here: it is the observation "unreachable".
The state says ``"up": false`` when the resource is unreachable or answers an error
(4xx/5xx), so that `watcher status` shows it as down.
The body is never read; the response is closed as soon as its status line is in.
Options: ``follow_redirects`` (default true) and ``max_redirects``.
"""

from __future__ import annotations

from typing import Any

from watcher.check import (
    CheckContext,
    CheckResult,
    FetchOptions,
    TransientCheckError,
    declare_options,
)


class StatusOptions(FetchOptions):
    follow_redirects: bool = True


@declare_options(StatusOptions)
async def check(ctx: CheckContext) -> CheckResult:
    new = await observe(ctx)
    old = ctx.state
    status = new["status_code"]
    if ctx.first_run:
        return CheckResult(
            changed=False,
            state=new,
            summary=f"baseline: {describe(new)}",
            status_code=status,
            baseline=True,
        )
    changed = (old.get("status_code"), old.get("reachable")) != (status, new["reachable"])
    summary = f"{describe(old)} → {describe(new)}" if changed else f"unchanged: {describe(new)}"
    # No validators to show as old → new: the summary ("200 OK → unreachable") says it all.
    return CheckResult(
        changed=changed, state=new, summary=summary, status_code=status, old={}, new={}
    )


async def observe(ctx: CheckContext) -> dict[str, Any]:
    """What the resource answers now: its status line, or why it could not be reached."""
    follow = bool(ctx.resource.options.get("follow_redirects", True))
    try:
        async with ctx.stream(follow=follow) as response:
            return {
                "status_code": response.status_code,
                "reachable": True,
                "reason": response.reason_phrase,
                "up": response.status_code < 400,
            }
    except TransientCheckError as exc:
        # Only transport failures arrive here: ctx.stream() does not judge status codes.
        return {"status_code": None, "reachable": False, "reason": exc.reason, "up": False}


def describe(state: dict[str, Any]) -> str:
    if not state.get("reachable"):
        return f"unreachable ({state.get('reason') or 'unknown reason'})"
    return f"{state.get('status_code')} {state.get('reason') or ''}".strip()
