"""Prometheus metrics: what the runs came to since the start and the queue's figures,
served on /metrics while `watcher run` or `watcher worker` runs (`--metrics HOST:PORT`).

The runs are a cumulative `Tally`. With several worker processes it is the supervisor's
total of what they report every second, so the process that serves holds the sum (no
prometheus_client multiprocess mode); with one, the worker reports into `Metrics.runs`.
The queue's gauges are read from Redis at scrape time, within REDIS_TIMEOUT: when Redis
does not answer in time they are left out and the scrape still succeeds.

The HTTP server is a small one on the event loop (one request a connection), so a scrape
reads the tallies on the loop that counts them; the text is encoded in a thread.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector, CollectorRegistry

from watcher.queue import Queue
from watcher.tally import DURATION_BOUNDS_S, LAG_BOUNDS_MS, Tally

__all__ = [
    "LISTEN_EXAMPLE",
    "Metrics",
    "MetricsServer",
    "QueueFigures",
    "parse_listen",
    "queue_families",
    "read_queue",
    "run_families",
]

log = logging.getLogger("watcher.metrics")

LISTEN_EXAMPLE = "127.0.0.1:9108"
REDIS_TIMEOUT = 1.0
"""Seconds a scrape waits for the queue's figures from Redis; past that they are left out."""
REQUEST_TIMEOUT = 10.0
"""Seconds from a connection to its answer: a client that sends nothing is dropped."""
MAX_REQUEST_HEAD = 16 * 1024
"""Bytes of request line and headers read at most."""
LAG_BOUNDS_S = tuple(ms / 1000 for ms in LAG_BOUNDS_MS)


def parse_listen(text: str) -> tuple[str, int]:
    """HOST:PORT ([::1]:PORT for IPv6) as (host, port); ValueError saying what is expected."""
    host, colon, port = text.rpartition(":")
    expected = f"expected HOST:PORT, e.g. {LISTEN_EXAMPLE}"
    if not colon or not host or not port.isdigit():
        raise ValueError(f"{text!r}: {expected}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise ValueError(f"{text!r}: an IPv6 address goes in brackets, e.g. [::1]:9108")
    if not 1 <= int(port) <= 65535:
        raise ValueError(f"{text!r}: port {int(port)} is out of range (1-65535); {expected}")
    return host, int(port)


# -- the figures ----------------------------------------------------------------------------


@dataclass(frozen=True)
class QueueFigures:
    """What Redis says about the queue at scrape time."""

    waiting: int
    active: int
    delayed: int
    workers: int
    """Worker processes alive (a heartbeat within the last 30 s), on every machine."""


async def read_queue(queue: Queue, timeout: float = REDIS_TIMEOUT) -> QueueFigures | None:
    """The queue's figures, or None when Redis does not answer within `timeout` seconds."""
    try:
        async with asyncio.timeout(timeout):
            counts, workers = await asyncio.gather(queue.counts(), queue.workers())
    except Exception as exc:  # unreachable, slow, failing over: the scrape goes on without
        log.debug("metrics: queue figures left out: %r", exc)
        return None
    return QueueFigures(
        waiting=counts["wait"],
        active=counts["active"],
        delayed=counts["delayed"],
        workers=len(workers),
    )


def run_families(runs: Tally, *, per_resource: bool = False) -> Iterator[Metric]:
    """What the runs came to, as Prometheus metric families."""
    yield _counters(
        "watcher_checks_total",
        "Check runs, by check and how each ended (unchanged, not_modified: a 304, changed, "
        "baseline, failed, retrying); every attempt counts",
        ("check", "outcome"),
        runs.outcomes,
    )
    yield CounterMetricFamily("watcher_changes_total", "Runs that found a change", runs.changes)
    yield CounterMetricFamily(
        "watcher_failures_total",
        "Runs that ended failed (for good, or out of attempts)",
        runs.failures,
    )
    yield CounterMetricFamily(
        "watcher_retries_total", "Runs that failed and are retried", runs.retries
    )
    yield CounterMetricFamily(
        "watcher_runs_skipped_total",
        "Ticks skipped because the resource's previous run was still going",
        runs.skipped,
    )
    yield CounterMetricFamily(
        "watcher_overdue_runs_spread_total",
        "Overdue runs moved to a time spread over their interval rather than fired at once",
        runs.spread,
    )
    yield _counters(
        "watcher_runs_held_total",
        "Runs held back by a host budget, by host and reason (concurrency, rate, paused)",
        ("host", "reason"),
        runs.held,
    )
    yield _counters(
        "watcher_deliveries_total",
        "Notifier deliveries, by notifier and outcome",
        ("notifier", "outcome"),
        runs.deliveries,
    )
    durations = HistogramMetricFamily(
        "watcher_run_duration_seconds",
        "How long runs took, by check",
        labels=("check",),
        unit="seconds",
    )
    for check, buckets in sorted(runs.durations.items()):
        sum_value = runs.duration_sums.get(check, 0.0)
        durations.add_metric((check,), _buckets(DURATION_BOUNDS_S, buckets), sum_value)
    yield durations
    yield HistogramMetricFamily(
        "watcher_start_lag_seconds",
        "How late runs started after their planned time (first attempts)",
        buckets=_buckets(LAG_BOUNDS_S, runs.lags),
        sum_value=runs.lag_sum_ms / 1000,
        unit="seconds",
    )
    if per_resource:
        yield from _resource_families(runs)


def _resource_families(runs: Tally) -> Iterator[Metric]:
    yield _counters(
        "watcher_resource_checks_total",
        "Check runs, by resource and how each ended (as watcher_checks_total)",
        ("resource", "outcome"),
        runs.resources,
    )
    seconds = CounterMetricFamily(
        "watcher_resource_run_seconds_total",
        "Seconds the runs of each resource took",
        labels=("resource",),
        unit="seconds",
    )
    for resource, total in sorted(runs.resource_seconds.items()):
        seconds.add_metric((resource,), total)
    yield seconds


def queue_families(figures: QueueFigures | None) -> Iterator[Metric]:
    """The queue's gauges; only `watcher_redis_up` (0) when Redis did not answer."""
    yield GaugeMetricFamily(
        "watcher_redis_up",
        "1 when Redis answered this scrape's queue reads in time, else 0 (and the queue "
        "gauges are left out)",
        0 if figures is None else 1,
    )
    if figures is None:
        return
    jobs = GaugeMetricFamily(
        "watcher_queue_jobs", "Jobs in the queue now, by state", labels=("state",)
    )
    for state in ("waiting", "active", "delayed"):
        jobs.add_metric((state,), getattr(figures, state))
    yield jobs
    yield GaugeMetricFamily(
        "watcher_workers_alive",
        "Worker processes alive on this queue (a heartbeat within 30s), on every machine",
        figures.workers,
    )


def _counters(
    name: str, documentation: str, labels: Sequence[str], counts: Mapping[tuple[str, str], int]
) -> CounterMetricFamily:
    family = CounterMetricFamily(name, documentation, labels=labels)
    for key, count in sorted(counts.items()):
        family.add_metric(key, count)
    return family


def _buckets(bounds: Sequence[float], counts: Sequence[int]) -> list[tuple[str, float]]:
    """A Tally histogram (a count per bucket, the last past every bound) as Prometheus
    buckets: cumulative, `le` each bound, then +Inf."""
    cumulative = 0
    buckets: list[tuple[str, float]] = []
    for bound, count in zip((*bounds, math.inf), counts, strict=True):
        cumulative += count
        buckets.append(("+Inf" if math.isinf(bound) else repr(float(bound)), cumulative))
    return buckets


class _Figures(Collector):
    """One scrape's figures, fixed when the scrape began (encoded in another thread)."""

    def __init__(self, runs: Tally, queue: QueueFigures | None, per_resource: bool) -> None:
        self.runs, self.queue, self.per_resource = runs, queue, per_resource

    def collect(self) -> Iterable[Metric]:
        yield from run_families(self.runs, per_resource=self.per_resource)
        yield from queue_families(self.queue)


class Metrics:
    """What /metrics shows: `runs`, what the runs came to since the start (the supervisor's
    `total`, or a Tally the one worker process reports into), and `queue`'s figures."""

    def __init__(self, *, per_resource: bool = False, redis_timeout: float = REDIS_TIMEOUT):
        self.per_resource = per_resource
        """Series by resource too: one per resource and outcome (many, at scale)."""
        self.runs = Tally()
        self.queue: Queue | None = None
        """None until the queue is open (e.g. while waiting for Redis at start)."""
        self.redis_timeout = redis_timeout

    async def registry(self) -> CollectorRegistry:
        """A registry of the figures now: the runs so far, and the queue's if Redis answers."""
        figures = None if self.queue is None else await read_queue(self.queue, self.redis_timeout)
        runs = Tally()
        runs.add(self.runs)  # a copy: the loop goes on counting while it is encoded
        registry = CollectorRegistry(auto_describe=False)
        registry.register(_Figures(runs, figures, self.per_resource))
        return registry

    async def exposition(self, accept: str = "") -> tuple[bytes, str]:
        """The text a scrape gets, in the format its Accept header asks for, and its type."""
        encode, content_type = choose_encoder(accept)
        registry = await self.registry()
        # per-resource series can be many: encoded off the loop, which keeps running checks
        return await asyncio.to_thread(encode, registry), content_type


# -- the HTTP server --------------------------------------------------------------------------


class MetricsServer:
    """GET /metrics over HTTP/1.1 on the event loop, one request a connection."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics
        self._server: asyncio.Server | None = None
        self._answering: set[asyncio.Task[object]] = set()

    async def start(self, host: str, port: int) -> None:
        """Listen on host:port; OSError when that cannot be (the port is taken, say)."""
        self._server = await asyncio.start_server(
            self._connected, host, port, limit=MAX_REQUEST_HEAD
        )

    @property
    def port(self) -> int:
        assert self._server is not None, "started"
        return int(self._server.sockets[0].getsockname()[1])

    async def close(self) -> None:
        if self._server is None:
            return
        self._server.close()
        for task in list(self._answering):
            task.cancel()
        await self._server.wait_closed()
        self._server = None

    async def _connected(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._answering.add(task)
        try:
            async with asyncio.timeout(REQUEST_TIMEOUT):
                await self._answer(reader, writer)
        except (
            TimeoutError,
            ConnectionError,
            asyncio.IncompleteReadError,
            asyncio.LimitOverrunError,
        ):
            pass  # gone, silent, or a head past MAX_REQUEST_HEAD: nothing to answer
        except asyncio.CancelledError:
            pass  # the server is closing; asyncio would log a cancelled handler as an error
        finally:
            self._answering.discard(task)
            writer.close()

    async def _answer(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        try:
            method, path, accept = _request(head)
        except ValueError:
            writer.write(_response(400, b"bad request\n"))
            await writer.drain()
            return
        if method not in ("GET", "HEAD"):
            answer = _response(405, b"GET /metrics\n", extra=(("Allow", "GET, HEAD"),))
        elif path != "/metrics":
            answer = _response(404, b"not found: the metrics are at /metrics\n")
        else:
            answer = await self._scrape(accept)
        if method == "HEAD":
            answer = answer.split(b"\r\n\r\n", 1)[0] + b"\r\n\r\n"
        writer.write(answer)
        await writer.drain()

    async def _scrape(self, accept: str) -> bytes:
        try:
            body, content_type = await self.metrics.exposition(accept)
        except Exception:
            log.exception("metrics: the scrape failed")
            return _response(500, b"the metrics could not be gathered; see the log\n")
        return _response(200, body, content_type)


def _request(head: bytes) -> tuple[str, str, str]:
    """(method, path, Accept header) of a request head; ValueError when malformed."""
    request_line, *header_lines = head.decode("latin-1").split("\r\n")
    parts = request_line.split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        raise ValueError(f"not an HTTP/1 request line: {request_line[:80]!r}")
    accept = ""
    for line in header_lines:
        name, _, value = line.partition(":")
        if name.strip().lower() == "accept":
            accept = value.strip()
    return parts[0], urlsplit(parts[1]).path, accept


_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed"}


def _response(
    status: int,
    body: bytes,
    content_type: str = "text/plain; charset=utf-8",
    extra: Sequence[tuple[str, str]] = (),
) -> bytes:
    headers = [
        f"HTTP/1.1 {status} {_REASONS.get(status, 'Internal Server Error')}",
        f"Content-Type: {content_type}",
        f"Content-Length: {len(body)}",
        "Connection: close",
        *(f"{name}: {value}" for name, value in extra),
    ]
    return "\r\n".join(headers).encode("latin-1") + b"\r\n\r\n" + body
