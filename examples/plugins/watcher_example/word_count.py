"""The ``word-count`` check: reports when the number of words on a page changes.

Options:
- ``min_delta`` (default 1): report only when the count moved by at least this much
  since the last reported count.
- ``max_bytes`` (default 1 MiB): refuse bigger pages.
"""

from __future__ import annotations

import re

import httpx

from watcher.check import CheckContext, CheckFailed, CheckResult, TransientCheckError

# Script and style blocks are not words a reader sees; other tags are dropped whole.
MARKUP = re.compile(r"<(script|style)\b.*?</\1\s*>|<[^>]*>", re.DOTALL | re.IGNORECASE)
WORD = re.compile(r"\w+")


async def check(ctx: CheckContext) -> CheckResult:
    status, text = await fetch_text(ctx)
    words = count_words(text)
    ctx.log.debug("%s: %d words", ctx.resource.url, words)
    if ctx.first_run:
        return CheckResult(
            changed=False,
            state={"words": words},
            summary=f"baseline: {words} words",
            status_code=status,
            baseline=True,
        )
    before = int(ctx.state.get("words", 0))
    min_delta = int(ctx.resource.options.get("min_delta", 1))
    if abs(words - before) < min_delta:
        # Keep the old count so that small drifts add up to a reported change.
        return CheckResult(
            changed=False,
            state=dict(ctx.state),
            summary=f"unchanged: {words} words (last reported {before})",
            status_code=status,
        )
    return CheckResult(
        changed=True,
        state={"words": words},
        summary=f"{before} → {words} words",
        status_code=status,
    )


def count_words(html: str) -> int:
    return len(WORD.findall(MARKUP.sub(" ", html)))


async def fetch_text(ctx: CheckContext) -> tuple[int, str]:
    """The page's status code and text, read with a size cap."""
    resource = ctx.resource
    max_bytes = int(resource.options.get("max_bytes", 1024 * 1024))
    try:
        async with ctx.client.stream(
            resource.method,
            resource.url,
            headers=dict(resource.headers),
            timeout=resource.timeout,
            follow_redirects=True,  # bounded by the client's max_redirects
        ) as response:
            raise_for_status(response)
            body = bytearray()
            async for chunk in response.aiter_bytes():
                body += chunk
                if len(body) > max_bytes:
                    raise CheckFailed(f"page larger than {max_bytes} bytes (option max_bytes)")
    except httpx.TooManyRedirects as exc:
        raise CheckFailed(str(exc)) from exc
    except httpx.TransportError as exc:
        # Connection refused, timeouts, resets: worth retrying later.
        raise TransientCheckError(f"cannot fetch {resource.url}: {exc}") from exc
    return response.status_code, body.decode(response.encoding or "utf-8", errors="replace")


def raise_for_status(response: httpx.Response) -> None:
    status = response.status_code
    reason = f"{status} {response.reason_phrase}"
    if status == 429 or status >= 500:
        raise TransientCheckError(reason, status_code=status)
    if status >= 400:
        raise CheckFailed(reason, status_code=status)
