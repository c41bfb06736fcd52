"""The ``word-count`` check: reports when the number of words on a page changes.

Options:
- ``min_delta`` (default 1): report only when the count moved by at least this much
  since the last reported count.
- ``max_bytes`` (default 10 MiB) and ``max_redirects`` (default 5): read by the safe
  fetch (``ctx.fetch()``), as for the built-in checks.

They are declared (`WordCountOptions`, through ``declare_options``), so that watcher checks
a resource's ``options`` when its YAML loads: ``min_delat: 20`` is an error there ("did you
mean `min_delta`?"), not a setting silently ignored.
"""

from __future__ import annotations

import re

from pydantic import Field

from watcher.check import CheckContext, CheckResult, FetchOptions, declare_options

# Script and style blocks are not words a reader sees; other tags are dropped whole.
MARKUP = re.compile(r"<(script|style)\b.*?</\1\s*>|<[^>]*>", re.DOTALL | re.IGNORECASE)
WORD = re.compile(r"\w+")


class WordCountOptions(FetchOptions):
    """The options this check reads; FetchOptions adds the safe fetch's own."""

    min_delta: int = Field(default=1, ge=1)


@declare_options(WordCountOptions)
async def check(ctx: CheckContext) -> CheckResult:
    # Redirects bounded, credentials kept from other origins, body capped; failures raise
    # CheckFailed / TransientCheckError, as for the built-in checks.
    page = await ctx.fetch()
    words = count_words(page.text)
    ctx.log.debug("%s: %d words", page.url, words)
    if ctx.first_run:
        return CheckResult(
            changed=False,
            state={"words": words},
            summary=f"baseline: {words} words",
            status_code=page.status_code,
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
            status_code=page.status_code,
        )
    return CheckResult(
        changed=True,
        state={"words": words},
        summary=f"{before} → {words} words",
        status_code=page.status_code,
        old={"words": before},  # what history and notifications show as old → new
        new={"words": words},
    )


def count_words(html: str) -> int:
    return len(WORD.findall(MARKUP.sub(" ", html)))
