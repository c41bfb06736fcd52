# ruff: noqa: E402  (sys.path is fixed before the imports, see below)
"""Check benchmark: conditional checks per second, end to end, against bare HTTP client loops.

    .venv/bin/python bench/checks.py [--quick] [--resources 5000] [--seconds 30] [--profile]

Everything runs on 127.0.0.1: a local origin (bench/origin_app.py: raw ASGI on uvicorn +
httptools, one process) serving N resources /r/<i>, each with an ETag (304 to a matching
If-None-Match, no body), and a private redis-server (watcher.redis_server.RedisServer).

Rows, each measured in its own process, over --windows windows (median reported):
  watcher (concurrency C)   N schedulers `every: 1s`, check `etag`, and ONE worker process
                            (`watcher.runner.serve(queue, concurrency=C, transport="aiohttp")`,
                            which also ticks the schedulers): checks/s from the queue's
                            `stat:completed` counter and from the origin's request count;
                            fired and skipped ticks (the schedulers' count/skipped fields);
                            fire and start lag (sampled from the newest finished jobs).
  bare httpx / aiohttp / httpx over httpx-aiohttp (concurrency 50)
                            a loop of the same conditional requests (If-None-Match with the
                            ETag learned from the first 200 of each resource -> 304).
CPU time per check: the measured process's utime+stime (/proc/<pid>/stat) over the window.

Subprocess entry points (used by the benchmark itself):
  --worker --redis URL --concurrency C [--profile FILE]   one watcher worker
  --client KIND --origin URL --resources N --concurrency C  one bare client loop
Prints a rich table and writes it as Markdown to bench/results-checks.md.
"""

import sys
from pathlib import Path

# This file is named checks.py and sits next to bench/queue.py: keep its folder off sys.path, or
# `import checks` (the built-in check plugins) and `import queue` would import these files.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import pstats
import signal
import statistics
import sysconfig
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any

from rich.markup import escape

from bench.common import (
    BENCH,
    REPO,
    BenchError,
    arg_parser,
    event_loop_name,
    free_port,
    last_lines,
    load_average,
    machine_info,
    make_console,
    markdown_preamble,
    markdown_table,
    package_versions,
    rich_table,
)

RESULTS = BENCH / "results-checks.md"
ORIGIN_APP = BENCH / "origin_app.py"
QUEUE_NAME = "bench"
CLIENT_KINDS = ("httpx", "aiohttp", "httpx-aiohttp")
CLIENT_LABELS = {
    "httpx": "bare httpx.AsyncClient (default transport)",
    "aiohttp": "bare aiohttp.ClientSession",
    "httpx-aiohttp": "httpx API over httpx-aiohttp (make_client)",
}
# the versions that the results file lists (besides python and redis-server)
PACKAGES = (
    "httpx",
    "httpcore",
    "httpx-aiohttp",
    "aiohttp",
    "sniffio",
    "redis",
    "hiredis",
    "uvicorn",
    "httptools",
)
TARGET_RATIO = 3.0
CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all its threads), in seconds."""
    text = Path(f"/proc/{pid}/stat").read_text()
    fields = text[text.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def machine_busy_seconds() -> float:
    """CPU seconds spent busy by the whole machine (all CPUs), from /proc/stat."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return (sum(fields[:8]) - idle) / CLK_TCK


def resource_data(origin: str, i: int) -> dict[str, Any]:
    """A scheduler's template data, as watcher.check.Resource.from_template reads it."""
    return {
        "id": f"r{i}",
        "url": f"{origin}/r/{i}",
        "method": "GET",
        "headers": {},
        "timeout": 10.0,
        "options": {},
        "notify": [],
    }


async def raw_http(port: int, path: str, headers: dict[str, str] | None = None) -> tuple:
    """One HTTP/1.1 exchange on a fresh socket with Connection: close, read to EOF:
    (status, headers as a lower-cased dict, body bytes exactly as they came off the wire)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    lines = [f"GET {path} HTTP/1.1", "Host: 127.0.0.1", "Connection: close"]
    lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
    writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
    await writer.drain()
    raw = await reader.read()
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    head, _, body = raw.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    parsed = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        parsed[name.strip().lower()] = value.strip()
    return int(status_line.split()[1]), parsed, body


async def origin_stats(port: int) -> dict[str, int]:
    status, _, body = await raw_http(port, "/_stats")
    if status != 200:
        raise BenchError(f"origin /_stats answered {status}")
    return json.loads(body)


# -- subprocess: one watcher worker -------------------------------------------------------


def worker_main(args: argparse.Namespace) -> int:
    """One watcher worker process (ticks and runs checks) until SIGTERM.

    With --profile FILE, cProfile starts at SIGUSR1 (sent when the measured window opens,
    after the warm-up) and its stats are written to FILE at exit."""
    import cProfile
    import logging

    from watcher.queue import Queue
    from watcher.runner import serve

    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")
    # CPU time, not wall time: the machine may be shared, and a preempted call is not slow
    profile = cProfile.Profile(time.process_time) if args.profile else None

    async def go() -> None:
        if profile is not None:
            asyncio.get_running_loop().add_signal_handler(signal.SIGUSR1, profile.enable)
        queue = Queue.from_url(args.redis, name=QUEUE_NAME)
        try:
            await serve(
                queue,
                concurrency=args.concurrency,
                transport="aiohttp",
                install_signal_handlers=True,
            )
        finally:
            await queue.close()

    asyncio.run(go())
    if profile is not None:
        profile.disable()
        profile.dump_stats(args.profile)
    return 0


# -- subprocess: one bare client loop -----------------------------------------------------


def client_main(args: argparse.Namespace) -> int:
    """Conditional requests from `concurrency` tasks until SIGTERM; prints "ready" once every
    resource's ETag is known, then one JSON line of tallies at exit."""
    tally = asyncio.run(client_loop(args.client, args.origin, args.resources, args.concurrency))
    print(json.dumps(tally), flush=True)
    return 0


async def client_loop(kind: str, origin: str, resources: int, concurrency: int) -> dict:
    import httpx

    urls = [f"{origin}/r/{i}" for i in range(resources)]
    etags: list[str | None] = [None] * resources
    tally = {
        "kind": kind,
        "requests": 0,
        "ok": 0,
        "not_modified": 0,
        "other": 0,
        "errors": 0,
        "body_bytes_304": 0,
        "nonempty_304": 0,
        "first_error": "",
        "versions": package_versions(
            "httpx", "httpcore", "anyio", "sniffio", "aiohttp", "httpx-aiohttp"
        ),
    }
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    counter = itertools.count()
    done = 0
    ready = False

    async with contextlib.AsyncExitStack() as stack:
        if kind == "aiohttp":
            import aiohttp

            session = await stack.enter_async_context(
                aiohttp.ClientSession(
                    connector=aiohttp.TCPConnector(limit=concurrency, limit_per_host=concurrency),
                    timeout=aiohttp.ClientTimeout(total=10),
                )
            )

            async def one(i: int) -> tuple[int, str | None, int]:
                etag = etags[i]
                headers = {"If-None-Match": etag} if etag else None
                async with session.get(urls[i], headers=headers) as response:
                    body = await response.read()
                    return response.status, response.headers.get("ETag"), len(body)

        else:
            if kind == "httpx":
                limits = httpx.Limits(
                    max_connections=concurrency, max_keepalive_connections=concurrency
                )
                client = httpx.AsyncClient(limits=limits, timeout=10.0)
            elif kind == "httpx-aiohttp":
                from watcher.http import make_client

                client = make_client(transport="aiohttp", max_connections=concurrency)
            else:
                raise SystemExit(f"unknown client kind {kind!r}")
            await stack.enter_async_context(client)

            async def one(i: int) -> tuple[int, str | None, int]:
                etag = etags[i]
                headers = {"If-None-Match": etag} if etag else None
                response = await client.get(urls[i], headers=headers)
                return response.status_code, response.headers.get("etag"), len(response.content)

        async def lane() -> None:
            nonlocal done, ready
            while not stop.is_set():
                i = next(counter) % resources
                try:
                    status, etag, size = await one(i)
                except Exception as exc:
                    tally["errors"] += 1
                    tally["first_error"] = tally["first_error"] or f"{type(exc).__name__}: {exc}"
                    await asyncio.sleep(0.01)
                    continue
                tally["requests"] += 1
                if status == 304:
                    tally["not_modified"] += 1
                    tally["body_bytes_304"] += size
                    tally["nonempty_304"] += size > 0
                elif status == 200:
                    tally["ok"] += 1
                    etags[i] = etag
                else:
                    tally["other"] += 1
                done += 1
                if not ready and done >= resources:
                    ready = True
                    print("ready", flush=True)

        await asyncio.gather(*(lane() for _ in range(concurrency)))
    return tally


# -- the orchestrator ---------------------------------------------------------------------


@dataclass
class Sizes:
    resources: int
    seconds: float  # measured seconds per row, split into `windows` windows
    windows: int
    warmup: float  # seconds after the row is ready (every resource checked once)
    ready_timeout: float


@dataclass
class Window:
    seconds: float
    checks: int  # completed runs (watcher) or origin requests (bare loops)
    origin_requests: int
    not_modified: int
    body_bytes_304: int
    cpu: dict[str, float]  # CPU seconds in the window: client, origin, redis, bench, machine

    @property
    def other_cpu(self) -> float:
        """CPU seconds of processes outside this benchmark (other users of the machine)."""
        ours = sum(self.cpu[k] for k in ("client", "origin", "redis", "bench"))
        return max(0.0, self.cpu["machine"] - ours)

    fired: int | None = None
    skipped: int | None = None
    memory: int | None = None
    fire_lag: list[float] = field(default_factory=list)
    start_lag: list[float] = field(default_factory=list)
    failed: int = 0  # jobs failed (queue counter)
    reruns: int = 0  # sampled finished jobs that needed more than one attempt
    sampled: int = 0

    @property
    def rate(self) -> float:
        return self.checks / self.seconds


@dataclass
class Row:
    label: str
    kind: str  # "watcher" or a client kind
    concurrency: int
    windows: list[Window] = field(default_factory=list)
    tally: dict[str, Any] = field(default_factory=dict)
    error: str | None = None

    @property
    def rate(self) -> float | None:
        return statistics.median(w.rate for w in self.windows) if self.windows else None

    def total(self, attr: str) -> float:
        return sum(getattr(w, attr) or 0 for w in self.windows)

    def cpu_share(self, process: str) -> float:
        if process == "other":
            return sum(w.other_cpu for w in self.windows) / self.total("seconds")
        return sum(w.cpu[process] for w in self.windows) / self.total("seconds")

    def cpu_us_per_check(self) -> float | None:
        checks = self.total("checks")
        return sum(w.cpu["client"] for w in self.windows) / checks * 1e6 if checks else None

    def lag(self, attr: str, q: float) -> float | None:
        values = sorted(v for w in self.windows for v in getattr(w, attr))
        return values[min(len(values) - 1, int(q * len(values)))] if values else None


@dataclass
class Snap:
    t: float
    origin: dict[str, int]
    cpu: dict[str, float]
    completed: int | None = None
    failed: int = 0
    fired: int | None = None
    skipped: int | None = None
    memory: int | None = None


class Bench:
    def __init__(self, args: argparse.Namespace, sizes: Sizes) -> None:
        self.args = args
        self.sizes = sizes
        self.origin_port = free_port()
        self.origin_url = f"http://127.0.0.1:{self.origin_port}"
        self.origin_proc: asyncio.subprocess.Process | None = None
        self.redis_server: Any = None
        self.queue: Any = None
        self.logs = Path(tempfile.mkdtemp(prefix="watcher-bench-checks-"))
        self.ids = [f"r{i}" for i in range(sizes.resources)]
        self.verification: list[str] = []
        self.profile_lines: list[str] = []

    # -- processes ----------------------------------------------------------------------

    async def start(self) -> None:
        from watcher.queue import Queue
        from watcher.redis_server import RedisServer

        log = (self.logs / "origin.log").open("wb")
        self.origin_proc = await asyncio.create_subprocess_exec(
            sys.executable,
            str(ORIGIN_APP),
            "--port",
            str(self.origin_port),
            "--resources",
            str(self.sizes.resources),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=log,
            stderr=log,
        )
        deadline = time.monotonic() + 20
        while True:
            try:
                await origin_stats(self.origin_port)
                break
            except OSError:
                if self.origin_proc.returncode is not None or time.monotonic() > deadline:
                    reason = tail(self.logs / "origin.log")
                    raise BenchError(f"the origin did not start: {reason}") from None
                await asyncio.sleep(0.05)
        self.redis_server = RedisServer().start()
        self.queue = Queue.from_url(self.redis_server.url, name=QUEUE_NAME)

    async def stop(self) -> None:
        if self.queue is not None:
            with contextlib.suppress(Exception):
                await self.queue.redis.flushall()
            await self.queue.close()
        if self.redis_server is not None:
            self.redis_server.cleanup()
        if self.origin_proc is not None and self.origin_proc.returncode is None:
            await terminate(self.origin_proc)

    # -- verification -------------------------------------------------------------------

    async def verify(self) -> None:
        """A 304 carries no body: off a raw socket (the origin), and through watcher's client."""
        from watcher.http import make_client

        status, headers, body = await raw_http(self.origin_port, "/r/0")
        etag = headers.get("etag", "")
        if status != 200 or not etag or len(body) != int(headers.get("content-length", -1)):
            raise BenchError(f"origin: unexpected first answer {status} {headers} {body!r}")
        ok_size = len(body)
        status, headers, body = await raw_http(self.origin_port, "/r/0", {"If-None-Match": etag})
        framing = {k: v for k, v in headers.items() if k in ("content-length", "transfer-encoding")}
        if status != 304 or body or framing:
            raise BenchError(f"origin: 304 with a body or framing: {status} {headers} {body!r}")
        self.verification.append(
            f"origin, raw socket: `GET /r/0` → 200 with ETag {etag} and a {ok_size}-byte body; "
            f"with `If-None-Match: {etag}` → 304, headers only (0 bytes between the header "
            "block and EOF; no Content-Length, no Transfer-Encoding)"
        )
        async with make_client(transport="aiohttp") as client:
            response = await client.get(f"{self.origin_url}/r/0", headers={"If-None-Match": etag})
            if response.status_code != 304 or response.content or response.num_bytes_downloaded:
                raise BenchError(
                    f"make_client(aiohttp): 304 expected with no body, got "
                    f"{response.status_code} with {len(response.content)} bytes"
                )
        self.verification.append(
            "watcher's client (`make_client(transport='aiohttp')`): 304, `content == b''`, "
            "`num_bytes_downloaded == 0`"
        )

    # -- measurement --------------------------------------------------------------------

    async def snapshot(self, pid: int, watcher: bool) -> Snap:
        assert self.origin_proc is not None and self.redis_server is not None
        snap = Snap(
            t=time.monotonic(),
            origin=await origin_stats(self.origin_port),
            cpu={
                "client": cpu_seconds(pid),
                "origin": cpu_seconds(self.origin_proc.pid),
                "redis": cpu_seconds(self.redis_server.process.pid),
                "bench": cpu_seconds(os.getpid()),
                "machine": machine_busy_seconds(),
            },
        )
        if watcher:
            counts = await self.queue.counts()
            snap.completed, snap.failed = counts["completed"], counts["failed"]
            fields = await self.queue.scheduler_fields(["count", "skipped"], self.ids)
            snap.fired = sum(int(c or 0) for c, _ in fields.values())
            snap.skipped = sum(int(s or 0) for _, s in fields.values())
            snap.memory = int((await self.queue.redis.info("memory"))["used_memory"])
        return snap

    async def sample_finished(self, window: Window) -> None:
        """Fire lag (job created - planned slot), start lag (started - planned slot), in ms,
        and attempts, of the newest finished jobs (the queue keeps the newest 1,000 ids)."""
        redis = self.queue.redis
        ids = await redis.lrange(self.queue.key("finished"), 0, -1)
        async with redis.pipeline(transaction=False) as pipe:
            for jid in ids:
                pipe.hmget(self.queue.key(f"job:{jid}"), ["at", "created", "started", "att"])
            replies = await pipe.execute()
        for at, created, started, attempt in replies:
            if at and created and started:
                window.fire_lag.append(float(created) - float(at))
                window.start_lag.append(float(started) - float(at))
                window.sampled += 1
                window.reruns += int(attempt or 1) > 1

    async def measure(self, pid: int, watcher: bool, proc: Any) -> list[Window]:
        windows = []
        window_s = self.sizes.seconds / self.sizes.windows
        before = await self.snapshot(pid, watcher)
        for _ in range(self.sizes.windows):
            await asyncio.sleep(window_s)
            if proc.returncode is not None:
                raise BenchError(f"the measured process exited with code {proc.returncode}")
            after = await self.snapshot(pid, watcher)
            requests = after.origin["requests"] - before.origin["requests"]
            window = Window(
                seconds=after.t - before.t,
                checks=(after.completed - before.completed) if watcher else requests,
                origin_requests=requests,
                not_modified=after.origin["not_modified"] - before.origin["not_modified"],
                body_bytes_304=after.origin["body_bytes_304"] - before.origin["body_bytes_304"],
                cpu={k: after.cpu[k] - before.cpu[k] for k in after.cpu},
            )
            if watcher:
                window.fired = after.fired - before.fired
                window.skipped = after.skipped - before.skipped
                window.memory = after.memory - before.memory
                window.failed = after.failed - before.failed
                await self.sample_finished(window)
            windows.append(window)
            console.print(f"    window: {describe_window(window, watcher)}")
            before = await self.snapshot(pid, watcher) if watcher else after
        return windows

    # -- rows ---------------------------------------------------------------------------

    async def run_watcher(self, concurrency: int, profile: Path | None = None) -> Row:
        from watcher.queue import SchedulerSpec

        row = Row(f"watcher worker (concurrency {concurrency})", "watcher", concurrency)
        n = self.sizes.resources
        await self.queue.redis.flushall()
        t0 = time.perf_counter()
        await self.queue.upsert_schedulers(
            SchedulerSpec(id=f"r{i}", name="etag", data=resource_data(self.origin_url, i), every=1)
            for i in range(n)
        )
        console.print(
            f"[bold]{row.label}[/]: {n:,} schedulers every 1 s upserted in "
            f"{time.perf_counter() - t0:.2f} s; starting the worker"
        )
        log_path = self.logs / f"worker-{concurrency}{'-profile' if profile else ''}.log"
        command = [sys.executable, str(Path(__file__).resolve()), "--worker"]
        command += ["--redis", self.redis_server.url, "--concurrency", str(concurrency)]
        if profile is not None:
            command += ["--profile-file", str(profile)]
        with log_path.open("wb") as log:
            proc = await asyncio.create_subprocess_exec(
                *command, stdin=asyncio.subprocess.DEVNULL, stdout=log, stderr=log
            )
        try:
            deadline = time.monotonic() + self.sizes.ready_timeout
            while (completed := (await self.queue.counts())["completed"]) < n:
                if proc.returncode is not None:
                    raise BenchError(f"worker exited ({proc.returncode}): {tail(log_path)}")
                if time.monotonic() > deadline:
                    raise BenchError(f"only {completed:,} of {n:,} baseline runs completed")
                await asyncio.sleep(0.2)
            await asyncio.sleep(self.sizes.warmup)
            if profile is not None:
                proc.send_signal(signal.SIGUSR1)
            row.windows = await self.measure(proc.pid, True, proc)
        finally:
            code = await terminate(proc)
        if code not in (0, None):
            console.print(f"  [yellow]worker exit code {code}: {escape(tail(log_path))}[/]")
        lines = [line for line in log_path.read_text(errors="replace").splitlines() if line]
        row.tally["lease_lost_lines"] = sum("lease lost" in line for line in lines)
        others = [line for line in lines if "lease lost" not in line]
        row.tally["other_log_lines"] = len(others)
        row.tally["other_log_first"] = others[0][:200] if others else ""
        return row

    async def run_client(self, kind: str, concurrency: int) -> Row:
        row = Row(f"{CLIENT_LABELS[kind]} (concurrency {concurrency})", kind, concurrency)
        console.print(f"[bold]{row.label}[/]: learning {self.sizes.resources:,} ETags")
        log_path = self.logs / f"client-{kind}.log"
        command = [sys.executable, str(Path(__file__).resolve()), "--client", kind]
        command += ["--origin", self.origin_url, "--resources", str(self.sizes.resources)]
        command += ["--concurrency", str(concurrency)]
        with log_path.open("wb") as log:
            proc = await asyncio.create_subprocess_exec(
                *command,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=log,
            )
        assert proc.stdout is not None
        try:
            try:
                line = await asyncio.wait_for(proc.stdout.readline(), self.sizes.ready_timeout)
            except TimeoutError:
                raise BenchError("the client did not learn every ETag in time") from None
            if line.strip() != b"ready":
                raise BenchError(f"client failed: {tail(log_path)}")
            await asyncio.sleep(self.sizes.warmup)
            row.windows = await self.measure(proc.pid, False, proc)
        finally:
            await terminate(proc)
        out = (await proc.stdout.read()).decode().strip().splitlines()
        if not out:
            raise BenchError(f"client printed no tallies: {tail(log_path)}")
        row.tally = json.loads(out[-1])
        return row

    async def profile(self, concurrency: int) -> None:
        path = self.logs / f"worker-{concurrency}.prof"
        console.print(f"[bold]profile[/]: cProfile in the worker, concurrency {concurrency}")
        windows, self.sizes.windows = self.sizes.windows, 1
        seconds, self.sizes.seconds = self.sizes.seconds, self.sizes.seconds / windows
        try:
            row = await self.run_watcher(concurrency, profile=path)
        finally:
            self.sizes.windows, self.sizes.seconds = windows, seconds
        checks = int(row.total("checks"))
        self.profile_lines = profile_report(path, checks, row)
        self.profile_lines += await self.tick_cost(min(8.0, seconds / windows))

    async def tick_cost(self, seconds: float) -> list[str]:
        """CPU per scheduler tick, measured without a profiler: this process calls the
        ticker's step (`Ticker.tick`, as its loop does) for `seconds` with nobody
        taking jobs, so every tick after a scheduler's first is skipped, as under overload."""
        from watcher.queue import SchedulerSpec
        from watcher.ticker import Ticker

        console.print(f"[bold]tick cost[/]: {self.sizes.resources:,} schedulers, {seconds:g} s")
        n = self.sizes.resources
        await self.queue.redis.flushall()
        await self.queue.upsert_schedulers(
            SchedulerSpec(id=f"r{i}", name="etag", data=resource_data(self.origin_url, i), every=1)
            for i in range(n)
        )
        ticker = Ticker(self.queue, batch=500)
        redis_pid = self.redis_server.process.pid
        cpu0, redis0, t0 = time.process_time(), cpu_seconds(redis_pid), time.monotonic()
        calls = 0
        while time.monotonic() - t0 < seconds:
            wait = await ticker.tick()
            calls += 1
            if wait > 0:
                await asyncio.sleep(wait)
        cpu, wall = time.process_time() - cpu0, time.monotonic() - t0
        redis_cpu = cpu_seconds(redis_pid) - redis0
        fields = await self.queue.scheduler_fields(["name", "count", "skipped"], self.ids)
        fired = sum(int(c or 0) for _, c, _ in fields.values())
        skipped = sum(int(k or 0) for _, _, k in fields.values())
        ticks = max(fired + skipped, 1)
        await self.queue.redis.flushall()
        return [
            "",
            "Tick cost without a profiler (this script calling `Ticker.tick()` in a loop, "
            f"as the worker's tick loop does, for {wall:.1f} s; {n:,} schedulers every 1 s; "
            "no worker taking jobs, so after its first run every scheduler's ticks are "
            f"skipped): {ticks:,} ticks ({fired:,} fired, {skipped:,} skipped), {calls:,} "
            f"`_tick` calls ({ticks / calls:.1f} schedulers per call); Python CPU "
            f"{cpu / ticks * 1e6:.1f} µs per tick = {cpu / wall:.0%} of a CPU at "
            f"{ticks / wall:,.0f} ticks/s; redis-server {redis_cpu / ticks * 1e6:.1f} µs per "
            f"tick = {redis_cpu / wall:.0%} of a CPU.",
        ]


# A profiled function's file is shown from below the first of these: site-packages (first:
# the venv may sit inside the repository), the repository, the standard library.
SITE_PACKAGES = "site-packages/"
IN_REPO = f"{REPO}/"
STDLIB = f"{sysconfig.get_paths()['stdlib']}/"


def profile_report(path: Path, checks: int, row: Row) -> list[str]:
    """Top functions by own time and the per-check cumulative cost of watcher's steps."""
    stats = pstats.Stats(str(path))
    entries = stats.stats  # type: ignore[attr-defined]
    total = sum(tt for (_, _, tt, _, _) in entries.values())

    def name(func: tuple[str, int, str]) -> str:
        filename, line, fn = func
        if filename == "~":
            return fn
        for marker in (SITE_PACKAGES, IN_REPO, STDLIB):
            if marker in filename:
                filename = filename.split(marker, 1)[1]
                break
        return f"{filename}:{line} {fn}"

    rate = row.rate or 0
    lines = [
        f"cProfile of the worker process during one {row.total('seconds'):.0f} s window at "
        f"concurrency {row.concurrency}: {checks:,} checks ({rate:,.0f}/s under the profiler), "
        f"{total:.2f} s of profiled CPU (timer: process CPU time), "
        f"{total / max(checks, 1) * 1e6:,.0f} µs per check (cProfile inflates every call; "
        "compare shares, not absolutes; a coroutine counts one call per resumption).",
        "",
        "Top 25 by own time (tottime):",
        "",
        "| own s | share | µs/check | calls/check | cum s | function |",
        "| ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    top = sorted(entries.items(), key=lambda item: item[1][2], reverse=True)[:25]
    for func, (_cc, nc, tt, ct, _callers) in top:
        lines.append(
            f"| {tt:.2f} | {tt / total:.1%} | {tt / max(checks, 1) * 1e6:.1f} | "
            f"{nc / max(checks, 1):.2f} | {ct:.2f} | `{name(func)}` |"
        )
    groups: dict[str, float] = {}
    for func, (_cc, _nc, tt, _ct, _callers) in entries.items():
        group = package_of(func[0], func[2])
        groups[group] = groups.get(group, 0.0) + tt
    lines += [
        "",
        "Own time by package (where the worker's CPU goes):",
        "",
        "| package | own s | share | µs/check |",
        "| --- | ---: | ---: | ---: |",
    ]
    for group, tt in sorted(groups.items(), key=lambda item: item[1], reverse=True)[:14]:
        lines.append(f"| {group} | {tt:.2f} | {tt / total:.1%} | {tt / max(checks, 1) * 1e6:.1f} |")
    steps = {
        ("watcher/ticker.py", "tick"): "tick: due + next_slot + fire (all schedulers)",
        ("watcher/queue.py", "take"): "fetch: take script + Job objects",
        ("watcher/queue.py", "wait_for_work"): "fetch: idle wait (BLPOP)",
        ("watcher/worker.py", "_run"): "run: handler (check) + _finish",
        ("watcher/runner.py", "run"): "run: CheckRunner.run",
        ("watcher/runner.py", "_complete"): "run: CheckRunner._complete",
        ("watcher/check.py", "from_template"): "run: Resource.from_template",
        ("checks/etag.py", "check"): "run: etag check",
        ("watcher/fetch.py", "_send"): "run: build_request + client.send",
        ("httpx/_client.py", "build_request"): "run: httpx build_request",
        ("httpx/_models.py", "extract_cookies"): "run: httpx Cookies.extract_cookies",
        ("watcher/worker.py", "_finish"): "run: Worker._finish (JSON encoding)",
        ("watcher/worker.py", "flush"): "finish: finish script",
        ("watcher/keeper.py", "extend_leases"): "keep: extend leases",
        ("watcher/keeper.py", "heartbeat"): "keep: heartbeat",
        ("watcher/queue.py", "_call"): "all scripts: Queue._call",
        ("redis/asyncio/connection.py", "pack_command"): "all Redis calls: pack_command",
        ("watcher/schedule.py", "next_slot"): "tick: Schedule.next_slot",
    }
    lines += [
        "",
        "watcher's steps, cumulative (a step's own code plus what it calls, while it runs):",
        "",
        "| step | function | cum s | share | µs/check | calls/check |",
        "| --- | --- | ---: | ---: | ---: | ---: |",
    ]
    for (file_part, fn), label in steps.items():
        for func, (_cc, nc, _tt, ct, _callers) in entries.items():
            if func[2] == fn and func[0].endswith(file_part):
                lines.append(
                    f"| {label} | `{name(func)}` | {ct:.2f} | {ct / total:.1%} | "
                    f"{ct / max(checks, 1) * 1e6:.1f} | {nc / max(checks, 1):.2f} |"
                )
    return lines


def package_of(filename: str, function: str) -> str:
    if filename == "~":
        return "builtins/C (" + ("socket" if "socket" in function else "other") + ")"
    for marker in (SITE_PACKAGES, IN_REPO):
        if marker in filename:
            return filename.split(marker, 1)[1].split("/", 1)[0].removesuffix(".py")
    if STDLIB in filename:
        return "stdlib " + filename.split(STDLIB, 1)[1].split("/", 1)[0].removesuffix(".py")
    return filename


async def terminate(proc: Any, timeout: float = 20.0) -> int | None:
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), timeout)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
    return proc.returncode


def tail(path: Path, lines: int = 5) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no log)"
    return last_lines(text, lines) or "(empty log)"


# -- output -------------------------------------------------------------------------------

console = make_console()


def describe_window(w: Window, watcher: bool) -> str:
    share = w.not_modified / w.origin_requests if w.origin_requests else 0
    text = (
        f"{w.rate:,.0f} checks/s, origin {w.origin_requests / w.seconds:,.0f} req/s, "
        f"304 {share:.1%}, CPU client {w.cpu['client'] / w.seconds:.0%} "
        f"origin {w.cpu['origin'] / w.seconds:.0%} redis {w.cpu['redis'] / w.seconds:.0%} "
        f"other processes {w.other_cpu / w.seconds:.0%}"
    )
    if watcher:
        fired, skipped = (w.fired or 0) / w.seconds, (w.skipped or 0) / w.seconds
        text += f", fired {fired:,.0f}/s, skipped {skipped:,.0f}/s"
    return text


def fmt(value: float | None, spec: str = ",.0f", suffix: str = "") -> str:
    return "" if value is None else f"{value:{spec}}{suffix}"


HEADER = [
    "configuration",
    "checks/s",
    "range",
    "vs bare httpx",
    "origin req/s",
    "304 share",
    "CPU µs/check",
    "1-CPU ceiling/s",
    "client CPU",
    "origin CPU",
    "redis CPU",
    "other procs CPU",
    "fired/s",
    "skipped/s",
    "start lag p50/p99 ms",
]


def table_rows(rows: list[Row]) -> list[list[str]]:
    base = next((r.rate for r in rows if r.kind == "httpx" and r.rate), None)
    body = []
    for row in rows:
        if row.error or not row.windows:
            reason = (row.error or "no windows").split(" | ")[-1].strip()
            body.append([row.label, f"failed: {reason[:60]}", *[""] * (len(HEADER) - 2)])
            continue
        rates = [w.rate for w in row.windows]
        seconds = row.total("seconds")
        origin_rate = statistics.median(w.origin_requests / w.seconds for w in row.windows)
        share = row.total("not_modified") / max(row.total("origin_requests"), 1)
        watcher = row.kind == "watcher"
        lag = ""
        if watcher and row.lag("start_lag", 0.5) is not None:
            lag = f"{row.lag('start_lag', 0.5):,.0f} / {row.lag('start_lag', 0.99):,.0f}"
        body.append(
            [
                row.label,
                fmt(row.rate),
                f"{min(rates):,.0f}-{max(rates):,.0f}",
                fmt(row.rate / base if base and row.rate else None, ".2f", "x"),
                fmt(origin_rate),
                f"{share:.1%}",
                fmt(row.cpu_us_per_check()),
                fmt(1e6 / row.cpu_us_per_check() if row.cpu_us_per_check() else None),
                f"{row.cpu_share('client'):.0%}",
                f"{row.cpu_share('origin'):.0%}",
                f"{row.cpu_share('redis'):.0%}",
                f"{row.cpu_share('other'):.0%}",
                fmt(row.total("fired") / seconds) if watcher else "",
                fmt(row.total("skipped") / seconds) if watcher else "",
                lag,
            ]
        )
    return body


def show(rows: list[Row], sizes: Sizes) -> None:
    title = (
        f"Conditional checks, {sizes.resources:,} resources, median of {sizes.windows} "
        f"windows of {sizes.seconds / sizes.windows:g} s"
    )
    console.print(rich_table(title, HEADER, table_rows(rows)))


def target_line(rows: list[Row], offered: int) -> str:
    base = next((r.rate for r in rows if r.kind == "httpx" and r.rate), None)
    watchers = [r for r in rows if r.kind == "watcher" and r.rate]
    if not base or not watchers:
        return "target (watcher ≥ 3x bare httpx): not measured"
    best = max(watchers, key=lambda r: r.rate or 0)
    ratio = (best.rate or 0) / base
    verdict = "met" if ratio >= TARGET_RATIO else "NOT met"
    text = (
        f"target (watcher ≥ {TARGET_RATIO:g}x bare httpx): {verdict}: best watcher row "
        f"({best.label}) {best.rate:,.0f} checks/s = {ratio:.2f}x bare httpx {base:,.0f} req/s"
    )
    httpx_row = next(r for r in rows if r.kind == "httpx" and r.rate)
    base_cpu, best_cpu = httpx_row.cpu_us_per_check(), best.cpu_us_per_check()
    if base_cpu and best_cpu:
        text += (
            f"; per CPU second (1-CPU ceilings, less sensitive to other load on the machine): "
            f"{1e6 / best_cpu:,.0f} vs {1e6 / base_cpu:,.0f} = {base_cpu / best_cpu:.2f}x"
        )
    if (best.rate or 0) >= 0.95 * offered:
        text += f" (watcher ran everything offered, {offered:,}/s: the ratio is a floor)"
    return text


def notes(rows: list[Row], sizes: Sizes) -> list[str]:
    out = [f"{row.label}: FAILED: {row.error}" for row in rows if row.error]
    offered = sizes.resources  # every 1 s
    for row in rows:
        if row.kind != "watcher" or not row.windows:
            continue
        seconds = row.total("seconds")
        fired = row.total("fired") / seconds
        skipped = row.total("skipped") / seconds
        coalesced = max(0.0, offered - fired - skipped)
        memory = row.total("memory") / max(row.total("checks"), 1)
        text = (
            f"{row.label}: offered {offered:,}/s ticks; fired {fired:,.0f}/s, skipped "
            f"(no-overlap) {skipped:,.0f}/s, not ticked at all (missed slots coalesced) "
            f"~{coalesced:,.0f}/s; fire lag p50/p99 {fmt(row.lag('fire_lag', 0.5))}/"
            f"{fmt(row.lag('fire_lag', 0.99))} ms; Redis used_memory "
            f"{memory:+,.0f} bytes per check"
        )
        sampled = int(row.total("sampled"))
        text += (
            f"; failed jobs {int(row.total('failed'))}; sampled finished jobs that needed a "
            f"second attempt: {int(row.total('reruns'))} of {sampled:,}; worker log: "
            f"{row.tally.get('lease_lost_lines', 0)} 'lease lost' warning(s)"
        )
        if row.tally.get("other_log_lines"):
            text += (
                f", {row.tally['other_log_lines']} other line(s), first: "
                f"{row.tally['other_log_first']}"
            )
        out.append(text)
    for row in rows:
        if row.kind == "watcher" or not row.tally:
            continue
        t = row.tally
        out.append(
            f"{row.label}: {t['requests']:,} responses in all ({t['ok']:,} 200, "
            f"{t['not_modified']:,} 304, {t['other']:,} other, {t['errors']:,} errors"
            + (f", first: {t['first_error']}" if t["errors"] else "")
            + f"); 304s with a non-empty body: {t['nonempty_304']} "
            f"({t['body_bytes_304']} bytes)"
        )
    return out


def write_markdown(
    path: Path,
    rows: list[Row],
    sizes: Sizes,
    machine: dict[str, str],
    verification: list[str],
    profile_lines: list[str],
    load: tuple[float, float],
    elapsed: float,
) -> None:
    window_s = sizes.seconds / sizes.windows
    lines = [
        *markdown_preamble(
            "Check benchmark",
            machine,
            versions=", ".join(f"{k} {v}" for k, v in package_versions(*PACKAGES).items()),
            load=load,
            elapsed=elapsed,
            server_note=f"; origin: uvicorn + httptools, loop {machine['loop']}, one process",
            load_note=" (other processes shared the machine: see the `other procs CPU` column)",
        ),
        "",
        f"{sizes.resources:,} resources; each number is the median of {sizes.windows} windows "
        f"of {window_s:g} s (range: min-max of the windows).",
        "",
        *markdown_table(HEADER, table_rows(rows)),
        "",
        target_line(rows, sizes.resources),
        "",
        "## Notes",
        "",
        *(f"- {line}" for line in notes(rows, sizes)),
        "",
        "## 304s carry no body",
        "",
        *(f"- {line}" for line in verification),
        "",
        "## How",
        "",
        "- Every process runs on this machine and shares its "
        f"{machine['nproc']} CPUs: the origin (one uvicorn process), redis-server, the "
        "measured process, and this script (which samples counters between windows).",
        f"- watcher rows: FLUSHALL, then {sizes.resources:,} schedulers (`every: 1s`, check "
        "`etag`, template data id/url/method/headers/timeout/options, `notify: []`), so the "
        f"offered load is {sizes.resources:,} checks/s; one worker process running "
        "`watcher.runner.serve(queue, concurrency=C, transport='aiohttp')` (it also ticks the "
        "schedulers). The row starts once every resource has its baseline (stat:completed ≥ "
        f"{sizes.resources:,}), then {sizes.warmup:g} s of warm-up. checks/s is the delta of "
        "`stat:completed` over the window (queue + HTTP + write-back, end to end); origin "
        "req/s counts the requests that reached the origin. fired/skipped: deltas of the "
        "schedulers' `count`/`skipped` fields (skipped = a tick whose previous run was still "
        "pending or active: the no-overlap rule). start lag: job `started` - planned slot "
        "`at`, sampled from the newest 1,000 finished jobs at the end of each window.",
        "- bare rows: one process, 50 tasks looping over the same resources with "
        "`If-None-Match` set to the ETag learned from the resource's first 200 (so 304s "
        "from then on); the row starts once every ETag is known, then "
        f"{sizes.warmup:g} s of warm-up; checks/s = origin requests over the window. httpx "
        "gets `Limits(max_connections=50, max_keepalive_connections=50)` (its default "
        "keep-alive pool of 20 would churn connections at concurrency 50); aiohttp gets "
        "`TCPConnector(limit=50)`; the httpx-aiohttp row uses watcher's own "
        "`make_client(transport='aiohttp', max_connections=50)`. Each reads the body "
        "(`response.content` / `await response.read()`).",
        "- CPU µs/check: the measured process's utime+stime (/proc/<pid>/stat) over the "
        "windows divided by the checks; 1-CPU ceiling: 1,000,000 / CPU µs per check, the rate "
        "that process would reach with one CPU to itself; client/origin/redis CPU: share of "
        "one CPU; other procs CPU: the machine's busy time (/proc/stat) minus these processes "
        "and this script, i.e. load from outside the benchmark competing for the same CPUs.",
    ]
    if profile_lines:
        lines += ["", "## Profile (watcher worker)", "", *profile_lines]
    lines += ["", "## Every window", ""]
    for row in rows:
        for w in row.windows:
            lines.append(f"- {row.label}: {describe_window(w, row.kind == 'watcher')}")
    path.write_text("\n".join(lines) + "\n")


# -- main -----------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = arg_parser(__doc__, quick="500 resources, short windows", results=RESULTS)
    parser.add_argument("--resources", type=int, default=None, help="resources (5000)")
    parser.add_argument(
        "--seconds",
        type=float,
        default=None,
        help="measured seconds per row (30), split in windows",
    )
    parser.add_argument("--windows", type=int, default=3, help="windows per row (3)")
    parser.add_argument("--warmup", type=float, default=None, help="warm-up seconds per row")
    parser.add_argument("--concurrency", default="50,100,200", help="watcher worker concurrencies")
    parser.add_argument("--skip-clients", action="store_true", help="watcher rows only")
    parser.add_argument("--skip-watcher", action="store_true", help="bare client rows only")
    parser.add_argument(
        "--profile",
        action="store_true",
        help="also profile one worker (cProfile, one window; the row is not in the table)",
    )
    # subprocess entry points
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--client", choices=CLIENT_KINDS, help=argparse.SUPPRESS)
    parser.add_argument("--redis", help=argparse.SUPPRESS)
    parser.add_argument("--origin", help=argparse.SUPPRESS)
    parser.add_argument("--profile-file", dest="profile_file", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


async def orchestrate(args: argparse.Namespace, sizes: Sizes) -> int:
    started = time.monotonic()
    concurrencies = [int(c) for c in args.concurrency.split(",") if c.strip()]
    rows: list[Row] = []
    bench = Bench(args, sizes)
    try:
        await bench.start()
        info = await bench.queue.redis.info("server")
        machine = machine_info(str(info.get("redis_version", "?")))
        machine["loop"] = event_loop_name()
        load_start = load_average()
        console.print(
            f"origin {bench.origin_url} (uvicorn + httptools, loop {machine['loop']}), "
            f"redis-server {machine['redis']} at {bench.redis_server.url}; nproc "
            f"{machine['nproc']}; {sizes.resources:,} resources, {sizes.windows} windows of "
            f"{sizes.seconds / sizes.windows:g} s; logs in {bench.logs}"
        )
        await bench.verify()
        for line in bench.verification:
            console.print(f"[green]verified[/] {escape(line)}")
        if not args.skip_watcher:
            for concurrency in concurrencies:
                try:
                    rows.append(await bench.run_watcher(concurrency))
                except BenchError as exc:
                    label = f"watcher worker (concurrency {concurrency})"
                    rows.append(Row(label, "watcher", concurrency, error=str(exc)))
                    console.print(f"  [red]{escape(str(exc))}[/]")
        if not args.skip_clients:
            for kind in CLIENT_KINDS:
                try:
                    rows.append(await bench.run_client(kind, 50))
                except BenchError as exc:
                    rows.append(Row(CLIENT_LABELS[kind], kind, 50, error=str(exc)))
                    console.print(f"  [red]{escape(str(exc))}[/]")
        if args.profile:
            best = max(
                (r for r in rows if r.kind == "watcher" and r.rate),
                key=lambda r: r.rate or 0,
                default=None,
            )
            await bench.profile(best.concurrency if best else concurrencies[0])
    finally:
        await bench.stop()
    elapsed = time.monotonic() - started
    load = (load_start, load_average())
    show(rows, sizes)
    console.print(target_line(rows, sizes.resources))
    for line in notes(rows, sizes):
        console.print(f"- {escape(line)}")
    for line in bench.profile_lines:
        console.print(escape(line))
    write_markdown(
        args.output, rows, sizes, machine, bench.verification, bench.profile_lines, load, elapsed
    )
    console.print(f"wrote {args.output} ({elapsed / 60:.1f} min in all)")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker or args.client:
        args.concurrency = int(args.concurrency)
    if args.worker:
        args.profile = args.profile_file
        return worker_main(args)
    if args.client:
        return client_main(args)
    resources = args.resources or (500 if args.quick else 5000)
    seconds = args.seconds or (6.0 if args.quick else 30.0)
    warmup = args.warmup if args.warmup is not None else (2.0 if args.quick else 4.0)
    sizes = Sizes(resources, seconds, max(1, args.windows), warmup, ready_timeout=90.0)
    return asyncio.run(orchestrate(args, sizes))


if __name__ == "__main__":
    sys.exit(main())
