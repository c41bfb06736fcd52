"""What `watcher run` prints: start lines, each change once, failures that end a run,
recoveries and a summary line; a line per check only with -v. Through the console script,
against a private Redis and a local origin."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest

from .helpers import Watcher, wait_for
from .origin import Origin

PLAIN_RECORD = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d INFO r0 changed: ETag \S+ → \S+ \(200\)")
SUMMARY = re.compile(r"[\d,]+ checks in \d+s \([\d,]+/s\)")


def write_config(folder: Path, redis_url: str, queue: str, origin: Origin, count: int = 3) -> None:
    resources = "".join(
        f"  - id: r{i}\n    url: {origin.url}r{i}\n    every: 1s\n" for i in range(count)
    )
    (folder / "watcher.yaml").write_text(
        f"redis: {redis_url}\nqueue: {queue}\nresources:\n{resources}"
    )


def _checks_counted(run: Watcher) -> int:
    return sum(
        int(match.group(0).split()[0].replace(",", ""))
        for line in run.lines
        if (match := SUMMARY.search(line))
    )


@pytest.mark.parametrize("processes", ["1", "2"])
async def test_default_output_is_changes_failures_and_one_summary_for_all(
    tmp_path: Path, redis_url: str, queue_name: str, origin: Origin, processes: str
) -> None:
    write_config(tmp_path, redis_url, queue_name, origin)
    run = Watcher("run", "--processes", processes, "--summary", "1", cwd=tmp_path)
    started = time.monotonic()
    try:
        await wait_for(lambda: _checks_counted(run) >= 6, 30, what="summaries counting checks")
        origin.set(etag='"v2"')
        await wait_for(lambda: len(run.saying("changed: ")) >= 3, 15, what="3 changes said")
        origin.set(status=503)
        await wait_for(lambda: run.saying("gave up after"), 30, what="a run that gave up")
        origin.set(status=None)
        await wait_for(lambda: run.saying("recovered after"), 30, what="a recovery")
        summaries_before = len(run.saying(" checks in "))
        await wait_for(lambda: len(run.saying(" checks in ")) >= summaries_before + 3, 10)
    finally:
        code = run.stop()
    elapsed = time.monotonic() - started
    assert code == 0, run.output
    for id in ("r0", "r1", "r2"):
        assert len(run.saying(f"{id} changed: ")) == 1, run.output  # once, not per notifier
    # piped: plain one-line records, no padding, no markup
    assert all(line == line.rstrip() for line in run.lines), run.output
    [change] = run.saying("r0 changed: ")
    assert PLAIN_RECORD.fullmatch(change), change
    assert not run.saying(" unchanged: "), run.output  # no line per check by default
    assert not run.saying("baseline"), run.output
    assert not run.saying("retrying: "), run.output  # attempts that are retried stay quiet
    # one summary a second for all the processes, not one per process
    assert len([line for line in run.lines if SUMMARY.search(line)]) <= elapsed + 1


async def test_verbose_prints_a_line_per_check_and_quiet_no_summary(
    tmp_path: Path, redis_url: str, queue_name: str, origin: Origin
) -> None:
    write_config(tmp_path, redis_url, queue_name, origin, count=2)
    verbose = Watcher("run", "--processes", "1", "-v", "--summary", "1", cwd=tmp_path)
    try:
        await wait_for(lambda: len(verbose.saying(" unchanged: ")) >= 2, 30, what="check lines")
    finally:
        assert verbose.stop() == 0, verbose.output
    assert verbose.saying("r0 baseline") and verbose.saying("r1 baseline"), verbose.output
    quiet = Watcher("run", "--processes", "1", "-q", "--summary", "1", cwd=tmp_path)
    try:
        await wait_for(lambda: quiet.saying("watching 2 resource(s)"), 30)
        origin.set(etag='"v9"')
        await wait_for(lambda: len(quiet.saying("changed: ")) >= 2, 15, what="changes said")
    finally:
        assert quiet.stop() == 0, quiet.output
    assert not quiet.saying(" checks in "), quiet.output
    assert not quiet.saying(" unchanged: "), quiet.output
