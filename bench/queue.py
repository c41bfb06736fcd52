# ruff: noqa: E402  (sys.path is fixed before the imports, see below)
"""Queue benchmark: watcher against the libraries a user would pick instead.

    .venv/bin/python bench/queue.py [--quick] [--only NAME,...] [--runs 3]

Peers: arq, saq, rq (SimpleWorker) and BullMQ's Python port (`bullmq`). Each peer gets a
virtual environment of its own under bench/.venvs/<peer> (created and filled with pip on first
use: their redis-py pins conflict) and each measurement runs as a subprocess,
bench/peers/<peer>_runner.py, that prints one JSON line. watcher's runner runs in the project
venv. Everything talks to one private redis-server on 127.0.0.1 (FLUSHALL before each run).

Measured, each the median of --runs runs, interleaved (run 1 of every library, then run 2...):
  enqueue/s   20,000 no-op jobs, with the library's bulk enqueue where it has one, else
              enqueue calls from 50 concurrent tasks;
  e2e/s       then one worker (concurrency 50 where the library has it) started and timed
              until its handler has run all 20,000 jobs;
  upserts/s, bytes/scheduler   (watcher, bullmq) 10,000 distinct schedulers every 10 s, and
              the INFO used_memory delta / 10,000 (no worker running);
  lateness    (watcher) 10,000 schedulers every 10 s for 60 s: handler start - planned time.
Prints a rich table and writes it as Markdown to bench/results-queue.md.
"""

import sys
from pathlib import Path

# This file is named queue.py: keep its folder off sys.path, or `import queue` (asyncio,
# concurrent.futures, ...) would import it instead of the standard library's module.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import argparse
import json
import os
import shlex
import statistics
import subprocess
import time
from dataclasses import dataclass, field
from typing import Any

import redis
from rich.markup import escape

from bench.common import (
    BENCH,
    REPO,
    BenchError,
    arg_parser,
    last_lines,
    load_average,
    machine_info,
    make_console,
    markdown_preamble,
    markdown_table,
    rich_table,
)
from watcher.redis_server import RedisServer

VENVS = BENCH / ".venvs"
PEERS = BENCH / "peers"
RESULTS = BENCH / "results-queue.md"

# pip requirements of each peer's venv (None: the project venv). saq 0.26 imports
# typing_extensions without declaring it, hence the explicit requirement.
REQUIREMENTS: dict[str, list[str] | None] = {
    "watcher": None,
    "arq": ["arq", "hiredis"],
    "saq": ["saq[redis,hiredis]", "typing_extensions"],
    "rq": ["rq", "hiredis"],
    "bullmq": ["bullmq", "hiredis"],
}
SCHEDULER_LIBS = ("watcher", "bullmq")

console = make_console()


@dataclass
class Variant:
    """One row of the table: a library with one set of worker settings."""

    lib: str
    label: str
    task: dict[str, Any]
    primary: bool = True  # the row that shows the library's scheduler numbers
    enqueue: list[float] = field(default_factory=list)
    e2e: list[float] = field(default_factory=list)
    enqueue_method: str = ""
    error: str | None = None
    notes: list[str] = field(default_factory=list)


def variants() -> list[Variant]:
    return [
        Variant("watcher", "watcher (concurrency=50)", {"concurrency": 50}),
        Variant("arq", "arq (max_jobs=50)", {"max_jobs": 50}),
        Variant(
            "arq", "arq (max_jobs=50, poll_delay=0.01)", {"max_jobs": 50, "poll_delay": 0.01}, False
        ),
        Variant("saq", "saq (concurrency=50)", {"concurrency": 50}),
        Variant("rq", "rq (SimpleWorker, burst)", {}),
        Variant("bullmq", "bullmq (concurrency=50)", {"concurrency": 50}),
        Variant("bullmq", "bullmq (concurrency=10)", {"concurrency": 10}, False),
    ]


@dataclass
class Sizes:
    jobs: int
    schedulers: int
    late_schedulers: int
    late_seconds: float
    every: float = 10.0
    run_timeout: float = 300.0


FULL = Sizes(jobs=20_000, schedulers=10_000, late_schedulers=10_000, late_seconds=60.0)
QUICK = Sizes(
    jobs=2_000, schedulers=1_000, late_schedulers=1_000, late_seconds=15.0, run_timeout=120.0
)


# -- peer environments ------------------------------------------------------------------


def python_for(lib: str) -> Path:
    """The interpreter for `lib`'s runner: the project venv for watcher, else bench/.venvs/<lib>,
    created and filled on first use (and refilled when the requirement list changes)."""
    reqs = REQUIREMENTS[lib]
    if reqs is None:
        return Path(sys.executable)
    venv = VENVS / lib
    python = venv / "bin" / "python"
    stamp = venv / ".bench-requirements"
    wanted = "\n".join(reqs)
    if python.exists() and stamp.exists() and stamp.read_text() == wanted:
        return python
    console.print(f"[bold]{lib}[/]: creating {venv} and installing {escape(' '.join(reqs))}")
    steps = [
        [sys.executable, "-m", "venv", "--clear", str(venv)],
        [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", *reqs],
    ]
    for cmd in steps:
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
        except subprocess.TimeoutExpired:
            raise BenchError(f"`{shlex.join(cmd[:4])} ...` timed out") from None
        if proc.returncode != 0:
            errors = [line for line in proc.stderr.splitlines() if line.startswith("ERROR")]
            reason = errors[0] if errors else last_lines(proc.stderr) or proc.returncode
            raise BenchError(f"install failed: {reason}")
    stamp.write_text(wanted)
    return python


def run_runner(lib: str, python: Path, task: dict[str, Any], timeout: float) -> dict[str, Any]:
    """Run bench/peers/<lib>_runner.py with one task; its last JSON line of stdout."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    if lib == "watcher":
        env["PYTHONPATH"] = str(REPO)
    cmd = [str(python), str(PEERS / f"{lib}_runner.py"), json.dumps(task)]
    try:
        proc = subprocess.run(
            cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=str(REPO)
        )
    except subprocess.TimeoutExpired:
        raise BenchError(f"runner timed out after {timeout:.0f} s") from None
    result = None
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith("{"):
            try:
                result = json.loads(line)
            except json.JSONDecodeError:
                continue
            break
    if result is None:
        reason = last_lines(proc.stderr) or f"no result (exit code {proc.returncode})"
        raise BenchError(reason)
    if not result.get("ok"):
        raise BenchError(result.get("error") or "runner failed")
    return result


# -- formatting -------------------------------------------------------------------------


def rate(value: float | None) -> str:
    return "—" if value is None else f"{value:,.0f}"


def median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def spread(values: list[float]) -> str:
    if not values:
        return "—"
    if len(values) == 1:
        return f"{values[0]:,.0f}"
    return f"{statistics.median(values):,.0f} ({min(values):,.0f}-{max(values):,.0f})"


def failed(reason: str) -> str:
    reason = " ".join(reason.split())
    return f"failed: {reason[:120]}"


# -- the run ----------------------------------------------------------------------------


@dataclass
class SchedResult:
    upsert: list[float] = field(default_factory=list)
    single: list[float] = field(default_factory=list)
    bytes_per: list[float] = field(default_factory=list)
    method: str = ""
    single_method: str = ""
    error: str | None = None


@dataclass
class LateResult:
    p50: list[float] = field(default_factory=list)
    p99: list[float] = field(default_factory=list)
    worst: list[float] = field(default_factory=list)
    runs: list[int] = field(default_factory=list)
    expected: int = 0
    error: str | None = None


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = arg_parser(__doc__, quick="smaller counts, one run", results=RESULTS)
    parser.add_argument(
        "--only", default="", help=f"comma-separated libraries ({', '.join(REQUIREMENTS)})"
    )
    parser.add_argument("--runs", type=int, default=None, help="runs per measurement (3)")
    args = parser.parse_args(argv)
    args.libs = [name.strip() for name in args.only.split(",") if name.strip()] or list(
        REQUIREMENTS
    )
    unknown = [name for name in args.libs if name not in REQUIREMENTS]
    if unknown:
        parser.error(f"unknown library {', '.join(unknown)}: choose from {', '.join(REQUIREMENTS)}")
    if args.runs is None:
        args.runs = 1 if args.quick else 3
    if args.runs < 1:
        parser.error("--runs must be >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    sizes = QUICK if args.quick else FULL
    rows = [v for v in variants() if v.lib in args.libs]
    sched = {lib: SchedResult() for lib in SCHEDULER_LIBS if lib in args.libs}
    late = LateResult() if "watcher" in args.libs else None
    started = time.monotonic()
    load_before = load_average()

    # environments first: a library whose install fails is reported, the rest go on
    pythons: dict[str, Path] = {}
    versions: dict[str, dict[str, str]] = {}
    setup_errors: dict[str, str] = {}
    for lib in args.libs:
        try:
            pythons[lib] = python_for(lib)
            versions[lib] = run_runner(lib, pythons[lib], {"mode": "versions"}, 120)["versions"]
            shown = ", ".join(f"{k} {v}" for k, v in versions[lib].items())
            console.print(f"[bold]{lib}[/]: {shown}")
        except BenchError as exc:
            setup_errors[lib] = str(exc)
            console.print(f"[bold red]{lib}[/]: {escape(failed(str(exc)))}")
    for row in rows:
        row.error = setup_errors.get(row.lib)
    for lib, result in sched.items():
        result.error = setup_errors.get(lib)
    if late is not None:
        late.error = setup_errors.get("watcher")

    with RedisServer() as server:
        url = server.url
        admin = redis.Redis.from_url(url)
        machine = machine_info(str(admin.info("server").get("redis_version", "?")))
        console.print(
            f"private redis-server {machine['redis']} at {url}; nproc {machine['nproc']}; "
            f"{sizes.jobs:,} jobs, {sizes.schedulers:,} schedulers, {args.runs} run(s)"
        )

        def task(mode: str, **extra: Any) -> dict[str, Any]:
            admin.flushall()
            return {"mode": mode, "url": url, "timeout": sizes.run_timeout, **extra}

        def measure(
            target: Variant | SchedResult | LateResult,
            lib: str,
            timeout: float,
            mode: str,
            **extra: Any,
        ) -> dict[str, Any] | None:
            """One runner call; a failure is kept in `target.error` (and shown): None."""
            try:
                return run_runner(lib, pythons[lib], task(mode, **extra), timeout)
            except BenchError as exc:
                target.error = str(exc)
                console.print(f" [red]{escape(failed(target.error))}[/]")
                return None

        for run in range(1, args.runs + 1):
            tag = f"run {run}/{args.runs}"
            for row in rows:
                if row.error:
                    continue
                console.print(f"[dim]{tag}[/] {row.label}: e2e {sizes.jobs:,} jobs ...", end="")
                timeout = sizes.run_timeout + 120
                res = measure(row, row.lib, timeout, "e2e", n=sizes.jobs, **row.task)
                if res is None:
                    continue
                row.enqueue.append(res["enqueue_rate"])
                row.e2e.append(res["e2e_rate"])
                row.enqueue_method = res["enqueue_method"]
                if res["handled"] != sizes.jobs:
                    row.notes.append(
                        f"run {run}: the handler ran {res['handled']:,} times for "
                        f"{sizes.jobs:,} jobs"
                    )
                console.print(
                    f" enqueue {res['enqueue_rate']:,.0f}/s, e2e {res['e2e_rate']:,.0f}/s "
                    f"({res['e2e_s']:.2f} s, {res['handled']:,} handled)"
                )
            for lib, result in sched.items():
                if result.error:
                    continue
                console.print(
                    f"[dim]{tag}[/] {lib}: upsert {sizes.schedulers:,} schedulers ...", end=""
                )
                timeout = sizes.run_timeout + 120
                res = measure(
                    result, lib, timeout, "schedulers", n=sizes.schedulers, every=sizes.every
                )
                if res is None:
                    continue
                result.upsert.append(res["upsert_rate"])
                result.bytes_per.append(res["bytes_per_scheduler"])
                result.method = res["upsert_method"]
                if "single_upsert_rate" in res:
                    result.single.append(res["single_upsert_rate"])
                    result.single_method = res["single_upsert_method"]
                console.print(
                    f" {res['upsert_rate']:,.0f}/s ({res['upsert_method']}), "
                    f"{res['bytes_per_scheduler']:,.0f} bytes/scheduler"
                )
            if late is not None and not late.error:
                console.print(
                    f"[dim]{tag}[/] watcher: lateness, {sizes.late_schedulers:,} schedulers "
                    f"every {sizes.every:g} s for {sizes.late_seconds:g} s ...",
                    end="",
                )
                res = measure(
                    late,
                    "watcher",
                    sizes.late_seconds + 180,
                    "lateness",
                    n=sizes.late_schedulers,
                    every=sizes.every,
                    duration=sizes.late_seconds,
                    concurrency=50,
                )
                if res is not None:
                    late.p50.append(res["p50_ms"])
                    late.p99.append(res["p99_ms"])
                    late.worst.append(res["max_ms"])
                    late.runs.append(res["runs"])
                    late.expected = res["expected_runs"]
                    console.print(
                        f" p50 {res['p50_ms']:.1f} ms, p99 {res['p99_ms']:.1f} ms, "
                        f"max {res['max_ms']:.1f} ms ({res['runs']:,} fires)"
                    )
        admin.flushall()
        admin.close()

    elapsed = time.monotonic() - started
    load = (load_before, load_average())
    header, body = build_table(rows, sched)
    notes = footer(rows, sched, late, sizes)
    show(header, body, notes, sizes, args.runs)
    write_markdown(
        args.output, header, body, notes, rows, sched, late, sizes, args, machine, versions,
        load, elapsed,
    )  # fmt: skip
    console.print(f"wrote {args.output} ({elapsed / 60:.1f} min in all)")
    return 0


def build_table(
    rows: list[Variant], sched: dict[str, SchedResult]
) -> tuple[list[str], list[list[str]]]:
    header = [
        "library (settings)",
        "enqueue/s",
        "enqueue via",
        "e2e/s",
        "e2e vs fastest peer",
        "upserts/s",
        "bytes/scheduler",
    ]
    peer_best = max(
        (median(r.e2e) or 0.0 for r in rows if r.lib != "watcher" and r.e2e), default=0.0
    )
    # enqueueing does not depend on the worker's settings: pool each library's samples
    enqueue: dict[str, list[float]] = {}
    for row in rows:
        enqueue.setdefault(row.lib, []).extend(row.enqueue)
    body = []
    for row in rows:
        if row.error and not row.e2e:
            cells = [row.label, failed(row.error), "", "", "", "", ""]
        else:
            e2e = median(row.e2e)
            ratio = f"{e2e / peer_best:.2f}x" if e2e and peer_best else "—"
            note = f" ({failed(row.error)})" if row.error else ""
            cells = [
                row.label + note,
                rate(median(enqueue[row.lib])),
                row.enqueue_method,
                rate(e2e),
                ratio,
                "",
                "",
            ]
        result = sched.get(row.lib)
        if result is not None and row.primary:
            if result.error and not result.upsert:
                cells[5] = failed(result.error)
            else:
                cells[5] = rate(median(result.upsert))
                cells[6] = rate(median(result.bytes_per))
        body.append(cells)
    return header, body


def footer(
    rows: list[Variant], sched: dict[str, SchedResult], late: LateResult | None, sizes: Sizes
) -> list[str]:
    """The lines under the table: lateness, watcher's one-at-a-time upserts, anomalies."""
    lines = []
    if late is not None:
        lines.append(lateness_line(late, sizes))
    watcher = sched.get("watcher")
    if watcher is not None and watcher.single:
        lines.append(
            f"watcher upserts one at a time, as bullmq must ({watcher.single_method}): "
            f"{median(watcher.single):,.0f}/s"
        )
    for row in rows:
        lines += [f"{row.label}: {note}" for note in row.notes]
    return lines


def lateness_line(late: LateResult, sizes: Sizes) -> str:
    what = (
        f"watcher fire lateness ({sizes.late_schedulers:,} schedulers every {sizes.every:g} s "
        f"over {sizes.late_seconds:g} s, one worker, concurrency 50)"
    )
    if not late.p50:
        return f"{what}: {failed(late.error or 'no result')}"
    return (
        f"{what}: p50 {median(late.p50):.1f} ms, p99 {median(late.p99):.1f} ms, "
        f"max {max(late.worst):.1f} ms ({round(median(late.runs) or 0):,} fires handled, "
        f"~{late.expected:,} planned in the window)"
    )


LEFT_COLUMNS = (0, 2)  # library and "enqueue via"; the figures are right-aligned


def show(header: list[str], body: list[list[str]], notes: list[str], sizes: Sizes, runs: int):
    title = f"Queue benchmark: {sizes.jobs:,} no-op jobs, median of {runs} run(s)"
    console.print(rich_table(title, header, body, LEFT_COLUMNS))
    for line in notes:
        console.print(escape(line))


def write_markdown(
    path: Path,
    header: list[str],
    body: list[list[str]],
    notes: list[str],
    rows: list[Variant],
    sched: dict[str, SchedResult],
    late: LateResult | None,
    sizes: Sizes,
    args: argparse.Namespace,
    machine: dict[str, str],
    versions: dict[str, dict[str, str]],
    load: tuple[float, float],
    elapsed: float,
) -> None:
    lines = [
        *markdown_preamble(
            "Queue benchmark",
            machine,
            versions="; ".join(
                f"{lib}: " + ", ".join(f"{k} {v}" for k, v in vers.items())
                for lib, vers in versions.items()
            ),
            load=load,
            elapsed=elapsed,
        ),
        "",
        f"{sizes.jobs:,} no-op jobs; each number is the median of {args.runs} run(s).",
        "",
        *markdown_table(header, body, LEFT_COLUMNS),
        "",
    ]
    if notes:
        lines += [*(f"- {line}" for line in notes), ""]
    lines += [
        "## How",
        "",
        "- One private redis-server for everything, FLUSHALL before every run; each library "
        "runs in its own venv (bench/.venvs/<lib>) as a subprocess (bench/peers/<lib>_runner.py); "
        "runs are interleaved (run 1 of every library, then run 2, ...).",
        f"- enqueue/s: {sizes.jobs:,} jobs carrying one small integer, with the library's bulk "
        "call where it has one (1,000 jobs a call), else its enqueue call from 50 concurrent "
        "asyncio tasks; enqueueing is measured in every e2e run, and a library's rows show the "
        "median of all its rows' samples.",
        f"- e2e/s: the jobs are enqueued first; then one worker process is started and timed "
        f"from its start until its handler has been entered {sizes.jobs:,} times (counted in "
        "the handler); the worker is stopped after the library reports them all completed.",
        f"- upserts/s: {sizes.schedulers:,} distinct scheduler ids, every {sizes.every:g} s "
        "(watcher: bulk `upsert_schedulers`; bullmq has no bulk call: `upsertJobScheduler` "
        "from 50 concurrent tasks). bytes/scheduler: INFO `used_memory` after minus before, "
        f"divided by {sizes.schedulers:,}, after one warm-up upsert, no worker running "
        "(bullmq's figure includes the delayed job it keeps for each scheduler's next run).",
    ]
    if late is not None:
        lines.append(
            "- lateness: handler start (wall clock) minus the run's planned fire time, for the "
            "runs planned after the worker started and before the end of the window; the "
            "worker keeps going until those have all started."
        )
    details = []
    for row in rows:
        if row.e2e:
            details.append(
                f"- {row.label}: enqueue/s {spread(row.enqueue)}; e2e/s {spread(row.e2e)}"
            )
    for lib, result in sched.items():
        if result.upsert:
            text = (
                f"- {lib} schedulers: upserts/s {spread(result.upsert)} ({result.method}); "
                f"bytes/scheduler {spread(result.bytes_per)}"
            )
            if result.single:
                text += f"; {result.single_method}: {spread(result.single)}/s"
            details.append(text)
    if late is not None and late.p50:
        details.append(
            "- watcher lateness per run (p50/p99/max ms): "
            + ", ".join(
                f"{a:.1f}/{b:.1f}/{c:.1f}"
                for a, b, c in zip(late.p50, late.p99, late.worst, strict=True)
            )
        )
    if details:
        lines += ["", "## Every run (median, min-max)", "", *details]
    path.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    sys.exit(main())
