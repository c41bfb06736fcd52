"""Prometheus metrics (`--metrics HOST:PORT`): tallies with per-check outcomes and durations
that add up across processes, the exposition, the HTTP endpoint, and the console script
serving the sum over its worker processes, against a private Redis and a local origin."""

from __future__ import annotations

import asyncio
import logging
import os
import pickle
import re
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

from watcher.metrics import Metrics, MetricsServer, QueueFigures, parse_listen, read_queue
from watcher.queue import Queue
from watcher.runner import RunStats
from watcher.tally import DURATION_BOUNDS_S, Tally

from .helpers import WATCHER, Watcher, wait_for
from .origin import Origin

Families = dict[str, Metric]
SUMMARY = re.compile(r"([\d,]+) checks in \d+s")


# -- tallies ------------------------------------------------------------------------------


def test_a_tally_counts_runs_by_check_and_outcome_and_adds_up_after_pickling() -> None:
    child = Tally()
    child.record_run("etag", "not_modified", 0.004)
    child.record_run("etag", "not_modified", 0.3)
    child.record_run("status", "failed", 70.0)
    child.record_resource("docs", "not_modified", 0.3)
    child.record_delivery("hook", "sent")
    child.record_lag(15)
    taken = pickle.loads(pickle.dumps(child.take()))  # as a child sends it to its supervisor
    assert child == Tally()  # counting starts again
    total = Tally()
    total.add(taken)
    total.add(taken)
    assert total.outcomes == {("etag", "not_modified"): 4, ("status", "failed"): 2}
    assert total.durations["etag"][0] == 2  # 4 ms: the first bucket (≤ 5 ms)
    assert total.durations["etag"][DURATION_BOUNDS_S.index(0.5)] == 2
    assert total.durations["status"][-1] == 2  # past the last bound
    assert total.duration_sums["etag"] == pytest.approx(2 * 0.304)
    assert total.resources == {("docs", "not_modified"): 2}
    assert total.deliveries == {("hook", "sent"): 2}
    assert (sum(total.lags), total.lag_sum_ms) == (2, 30)
    taken.durations["etag"][0] += 100  # the total holds copies, not the report's lists
    assert total.durations["etag"][0] == 2


def test_run_stats_label_each_run_with_how_it_ended() -> None:
    stats = RunStats()
    stats.add("etag", 0.1, resource="a", baseline=True, changed=False)
    stats.add("etag", 0.1, resource="a", not_modified=True)
    stats.add("etag", 0.1, resource="a")
    stats.add("etag", 0.1, resource="a", changed=True)
    stats.add("etag", 0.1, resource="a", retrying=True)
    stats.add("etag", 0.1, resource="a", failed=True)
    outcomes = {outcome for _, outcome in stats.tally.outcomes}
    assert outcomes == {"baseline", "not_modified", "unchanged", "changed", "retrying", "failed"}
    assert (stats.tally.checks, stats.tally.changes, stats.tally.failures) == (6, 1, 1)
    assert stats.tally.resources == {}  # by resource only when asked
    stats.per_resource = True
    stats.add("etag", 0.1, resource="a")
    assert stats.tally.resources == {("a", "unchanged"): 1}


# -- the exposition -------------------------------------------------------------------------


def parse(text: str) -> Families:
    return {family.name: family for family in text_string_to_metric_families(text)}


def value(families: Families, sample: str, **labels: str) -> float:
    """The sum of the samples named `sample` whose labels include `labels`."""
    family = families[re.sub(r"_(total|bucket|count|sum)$", "", sample)]
    return sum(
        s.value for s in family.samples if s.name == sample and labels.items() <= s.labels.items()
    )


async def test_the_exposition_says_what_the_runs_came_to() -> None:
    metrics = Metrics()
    metrics.runs.record_run("etag", "not_modified", 0.02)
    metrics.runs.record_run("etag", "changed", 0.2)
    metrics.runs.changes, metrics.runs.checks, metrics.runs.skipped = 1, 2, 3
    metrics.runs.record_held("example.org", {"rate": 4})
    metrics.runs.record_lag(3)
    metrics.runs.record_resource("docs", "changed", 0.2)
    body, content_type = await metrics.exposition()
    assert content_type.startswith("text/plain")
    families = parse(body.decode())
    assert families["watcher_checks"].type == "counter"
    assert value(families, "watcher_checks_total", check="etag") == 2
    assert value(families, "watcher_checks_total", outcome="changed") == 1
    assert value(families, "watcher_changes_total") == 1
    assert value(families, "watcher_runs_skipped_total") == 3
    assert value(families, "watcher_runs_held_total", host="example.org", reason="rate") == 4
    assert families["watcher_deliveries"].type == "counter"  # defined, none counted yet
    assert families["watcher_run_duration_seconds"].type == "histogram"
    assert value(families, "watcher_run_duration_seconds_count", check="etag") == 2
    assert value(families, "watcher_run_duration_seconds_bucket", check="etag", le="0.025") == 1
    assert value(families, "watcher_run_duration_seconds_bucket", le="+Inf") == 2
    assert value(families, "watcher_run_duration_seconds_sum") == pytest.approx(0.22)
    assert value(families, "watcher_start_lag_seconds_bucket", le="0.002") == 0
    assert value(families, "watcher_start_lag_seconds_bucket", le="0.005") == 1
    assert value(families, "watcher_start_lag_seconds_sum") == pytest.approx(0.003)
    assert value(families, "watcher_redis_up") == 0  # no queue yet
    assert "watcher_queue_jobs" not in families and "watcher_resource_checks" not in families
    metrics.per_resource = True
    families = parse((await metrics.exposition())[0].decode())
    assert value(families, "watcher_resource_checks_total", resource="docs") == 1
    assert value(families, "watcher_resource_run_seconds_total", resource="docs") == 0.2
    openmetrics, content_type = await metrics.exposition("application/openmetrics-text")
    assert content_type.startswith("application/openmetrics-text")
    assert openmetrics.endswith(b"# EOF\n")


async def test_queue_gauges_come_from_redis_at_scrape_time(queue: Queue) -> None:
    await queue.add_jobs("etag", [{}, {}, {}])
    assert await read_queue(queue) == QueueFigures(waiting=3, active=0, delayed=0, workers=0)
    metrics = Metrics()
    metrics.queue = queue
    families = parse((await metrics.exposition())[0].decode())
    assert value(families, "watcher_queue_jobs", state="waiting") == 3
    assert value(families, "watcher_workers_alive") == 0
    assert value(families, "watcher_redis_up") == 1


@pytest.fixture
def silent_redis() -> Iterator[int]:
    """A port that takes connections and never answers: a Redis that hangs."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(16)
        yield server.getsockname()[1]


async def test_a_redis_that_does_not_answer_leaves_the_gauges_out(silent_redis: int) -> None:
    queue = Queue.from_url(f"redis://127.0.0.1:{silent_redis}/0", "silent")
    metrics = Metrics(redis_timeout=0.3)
    metrics.queue = queue
    metrics.runs.record_run("etag", "unchanged", 0.01)
    try:
        started = time.monotonic()
        families = parse((await metrics.exposition())[0].decode())
        assert time.monotonic() - started < 2
    finally:
        await queue.close()
    assert value(families, "watcher_redis_up") == 0
    assert "watcher_queue_jobs" not in families and "watcher_workers_alive" not in families
    assert value(families, "watcher_checks_total") == 1  # the rest of the scrape is there


# -- the endpoint ---------------------------------------------------------------------------


async def test_the_endpoint_serves_metrics_and_stops_cleanly(
    caplog: pytest.LogCaptureFixture,
) -> None:
    metrics = Metrics()
    metrics.runs.record_run("etag", "unchanged", 0.01)
    server = MetricsServer(metrics)
    await server.start("127.0.0.1", 0)
    url = f"http://127.0.0.1:{server.port}"
    async with httpx.AsyncClient(timeout=5) as http:
        answer = await http.get(f"{url}/metrics")
        assert answer.status_code == 200
        assert answer.headers["content-type"].startswith("text/plain")
        assert value(parse(answer.text), "watcher_checks_total") == 1
        head = await http.head(f"{url}/metrics")
        assert (head.status_code, head.content) == (200, b"")
        assert (await http.get(f"{url}/")).status_code == 404
        assert (await http.post(f"{url}/metrics")).status_code == 405
    _, idle = await asyncio.open_connection("127.0.0.1", server.port)  # sends nothing
    await asyncio.sleep(0.1)
    caplog.set_level(logging.DEBUG)
    started = time.monotonic()
    await server.close()
    assert time.monotonic() - started < 2  # not held up by the idle connection
    idle.close()
    await asyncio.sleep(0.05)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text
    with pytest.raises(httpx.ConnectError):
        await httpx.AsyncClient().get(f"{url}/metrics")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1:9108", ("127.0.0.1", 9108)),
        ("[::1]:80", ("::1", 80)),
        ("0.0.0.0:1", ("0.0.0.0", 1)),
    ],
)
def test_listen_addresses(text: str, expected: tuple[str, int]) -> None:
    assert parse_listen(text) == expected


@pytest.mark.parametrize(
    ("text", "said"),
    [
        ("127.0.0.1", "expected HOST:PORT"),
        ("9108", "expected HOST:PORT"),
        (":9108", "expected HOST:PORT"),
        ("127.0.0.1:x", "expected HOST:PORT"),
        ("127.0.0.1:0", "out of range (1-65535)"),
        ("127.0.0.1:70000", "out of range (1-65535)"),
        ("::1:80", "in brackets"),
    ],
)
def test_bad_listen_addresses_say_what_is_expected(text: str, said: str) -> None:
    with pytest.raises(ValueError, match=re.escape(said)):
        parse_listen(text)


# -- the console script -----------------------------------------------------------------------


def write_config(folder: Path, redis_url: str, queue: str, origin: Origin, count: int) -> None:
    resources = "".join(
        f"  - id: r{i}\n    url: {origin.url}r{i}\n    every: 1s\n" for i in range(count)
    )
    (folder / "watcher.yaml").write_text(
        f"redis: {redis_url}\nqueue: {queue}\nhosts:\n  default: {{concurrency: 0}}\n"
        f"resources:\n{resources}"
    )


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def scrape(port: int) -> Families:
    answer = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5)
    answer.raise_for_status()
    return parse(answer.text)


def checks_scraped(port: int) -> float:
    try:
        return value(scrape(port), "watcher_checks_total")
    except httpx.HTTPError:  # not listening yet
        return 0


async def _each_worker_ran_checks(queue: Queue, processes: int) -> bool:
    workers = await queue.workers()
    return len(workers) == processes and all(int(w.get("runs_1m", 0)) > 0 for w in workers)


async def test_run_with_two_processes_serves_the_sum_of_both(
    tmp_path: Path, redis_url: str, queue_name: str, queue: Queue, origin: Origin
) -> None:
    """10 resources every second, each answered in 0.25 s, and two processes of one check
    at a time: each process runs at most 4 a second, so the figures the origin sees
    (about 8 a second) are only reached by adding up both."""
    origin.set(delay=0.25)
    write_config(tmp_path, redis_url, queue_name, origin, count=10)
    port = free_port()
    run = Watcher(
        "run",
        *("--processes", "2", "--concurrency", "1", "--metrics", f"127.0.0.1:{port}"),
        cwd=tmp_path,
    )
    try:
        await wait_for(lambda: checks_scraped(port) >= 10, 30, what="checks counted")
        await wait_for(lambda: _each_worker_ran_checks(queue, 2), 20, what="both ran checks")
        await asyncio.sleep(4)
        requested_before = len(origin.requests)
        first = scrape(port)
        requested_after = len(origin.requests)
        await asyncio.sleep(3)
        second = scrape(port)
    finally:
        code = run.stop()
    assert code == 0, run.output
    assert run.saying(f"metrics at http://127.0.0.1:{port}/metrics"), run.output
    checks = value(first, "watcher_checks_total")
    elapsed_slack = 15  # up to a second of runs not reported yet, and those in flight
    assert requested_before - elapsed_slack <= checks <= requested_after, (checks, requested_after)
    assert value(second, "watcher_checks_total") > checks  # cumulative: it grows
    assert value(first, "watcher_checks_total", check="etag", outcome="baseline") == 10
    assert value(first, "watcher_checks_total", outcome="not_modified") > 0
    count = value(first, "watcher_run_duration_seconds_count", check="etag")
    assert count == checks  # the same reports, the same snapshot
    assert value(first, "watcher_run_duration_seconds_sum") >= 0.2 * count
    assert value(first, "watcher_run_duration_seconds_bucket", le="0.1") == 0
    assert value(first, "watcher_start_lag_seconds_count") > 0
    assert value(second, "watcher_workers_alive") == 2
    assert value(second, "watcher_redis_up") == 1
    for state in ("waiting", "active", "delayed"):
        assert [s for s in second["watcher_queue_jobs"].samples if s.labels["state"] == state]
    assert "watcher_resource_checks" not in second  # per resource only when asked


async def test_per_resource_series_when_asked(
    tmp_path: Path, redis_url: str, queue_name: str, origin: Origin
) -> None:
    write_config(tmp_path, redis_url, queue_name, origin, count=3)
    port = free_port()
    run = Watcher(
        "run",
        *("--processes", "2", "--metrics", f"127.0.0.1:{port}", "--metrics-per-resource"),
        cwd=tmp_path,
    )
    try:
        await wait_for(lambda: checks_scraped(port) >= 9, 30, what="checks counted")
        families = scrape(port)
    finally:
        assert run.stop() == 0, run.output
    checks = value(families, "watcher_checks_total")
    assert value(families, "watcher_resource_checks_total") == checks
    for resource in ("r0", "r1", "r2"):
        assert value(families, "watcher_resource_checks_total", resource=resource) >= 1
        assert (
            value(families, "watcher_resource_checks_total", resource=resource, outcome="baseline")
            == 1
        )
        assert value(families, "watcher_resource_run_seconds_total", resource=resource) > 0


async def test_one_worker_process_serves_metrics_beside_its_summary_line(
    tmp_path: Path, redis_url: str, queue_name: str, origin: Origin
) -> None:
    """With one process the summary line and the metrics both count the same runs: the
    summary what happened in its period, the metrics everything so far."""
    write_config(tmp_path, redis_url, queue_name, origin, count=3)
    synced = subprocess.run([WATCHER, "sync"], cwd=tmp_path, capture_output=True, timeout=60)
    assert synced.returncode == 0, synced.stderr
    port = free_port()
    worker = Watcher(
        "worker",
        *("--processes", "1", "--summary", "1", "--metrics", f"127.0.0.1:{port}"),
        "--metrics-per-resource",
        cwd=tmp_path,
    )
    try:
        await wait_for(lambda: len(_summarized(worker)) >= 4, 30, what="summary lines")
        summarized = sum(_summarized(worker))
        families = scrape(port)
    finally:
        assert worker.stop() == 0, worker.output
    checks = value(families, "watcher_checks_total")
    assert 0 < summarized <= checks  # what the summary took, the total has too
    assert checks - summarized <= 3 * 3  # and no more than the last seconds' runs besides
    assert value(families, "watcher_resource_checks_total") == checks


def _summarized(run: Watcher) -> list[int]:
    return [int(m[1].replace(",", "")) for line in run.lines if (m := SUMMARY.search(line))]


def _watcher(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if k != "WATCHER_REDIS_URL"}
    environment.update({"COLUMNS": "400", "NO_COLOR": "1"})
    return subprocess.run(
        [WATCHER, *args], cwd=cwd, env=environment, capture_output=True, text=True, timeout=60
    )


async def test_a_port_in_use_is_one_line_and_exit_2_before_any_work(
    tmp_path: Path, redis_url: str, queue_name: str, queue: Queue, origin: Origin
) -> None:
    write_config(tmp_path, redis_url, queue_name, origin, count=2)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = _watcher("run", "--processes", "2", "--metrics", f"127.0.0.1:{port}", cwd=tmp_path)
    assert result.returncode == 2, result
    said = (result.stdout + result.stderr).strip().splitlines()
    assert said == [
        f"error: --metrics 127.0.0.1:{port}: cannot listen there: address already in use"
    ]
    assert await queue.scheduler_ids() == []  # nothing was synced
    assert origin.requests == []


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (("--metrics", "127.0.0.1"), "expected HOST:PORT, e.g. 127.0.0.1:9108"),
        (("--metrics", "127.0.0.1:70000"), "port 70000 is out of range (1-65535)"),
        (("--metrics-per-resource",), "--metrics-per-resource needs --metrics HOST:PORT"),
    ],
)
async def test_a_bad_metrics_option_is_a_usage_error(
    tmp_path: Path,
    redis_url: str,
    queue_name: str,
    origin: Origin,
    args: tuple[str, ...],
    said: str,
) -> None:
    write_config(tmp_path, redis_url, queue_name, origin, count=1)
    for command in ("run", "worker"):
        result = _watcher(command, "--processes", "1", *args, cwd=tmp_path)
        assert result.returncode == 2, result
        assert said in result.stderr, result.stderr
        assert "Traceback" not in result.stderr
    assert origin.requests == []


def test_the_yaml_can_say_where_metrics_listen() -> None:
    from watcher.config import ConfigError, parse_config

    config = parse_config("metrics: {listen: '127.0.0.1:9108', per_resource: true}\n")
    assert config.metrics is not None and config.metrics.listen == "127.0.0.1:9108"
    with pytest.raises(ConfigError, match=r"watcher.yaml:1:\d+: metrics.listen: .*HOST:PORT"):
        parse_config("metrics: {listen: 'localhost'}\n")
