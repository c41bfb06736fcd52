# ruff: noqa: E402  (sys.path is fixed before the imports, see below)
"""Check benchmark: `watcher run` and `watcher worker` as a user runs them, next to bare HTTP
client loops making the same conditional requests, in one run.

    .venv/bin/python bench/checks.py [--quick] [--resources 6000] [--seconds 30] [--profile]

Everything runs on 127.0.0.1: a local origin (bench/origin_app.py: raw ASGI on uvicorn +
httptools, one process) serving N resources /r/<i>, each with an ETag (304 to a matching
If-None-Match, no body), and a private redis-server (watcher.redis_server.RedisServer).

The benchmark writes a watcher.yaml into a folder of its own (`redis:` the private server,
N resources `every: 1s` on the origin, defaults for everything else) and runs the console
script there (.venv/bin/watcher, no -c), on a pseudo-terminal of 200 columns, in a session of
its own, once per row:
  watcher run                           default flags: a worker process per CPU, default output
  watcher run --processes 1 | --processes 2 | -q | -v
  watcher worker                        default flags, after a `watcher sync`
and, in the same run, bare client loops (one process, 50 tasks each): httpx.AsyncClient, the
httpx API over httpx-aiohttp (watcher's make_client), aiohttp.ClientSession.

The rows run in --windows rounds, each row once a round (so a burst of load from outside hits
one window of every row, not all windows of one): a visit starts the command (or client),
waits until it checks (the first watcher visit, on an empty Redis, until every resource had
its first answer, a 200; a client until it knows every ETag), warms up, measures one window
and stops it. Medians over the windows of:
  checks/s        requests the origin served in the window (its /_stats counter)
  CPU µs/check    utime+stime of every process in the command's session (the command and
                  its worker processes, from /proc) over the window, divided by the checks
  304 share       of the origin's answers in the window
  output lines/s  lines the command printed on its terminal
and the CPU used by the origin, redis-server, this script and the rest of the machine.

Subprocess entry points (used by the benchmark itself):
  --client KIND --origin URL --resources N --concurrency C   one bare client loop
  --profiled FILE WATCHER-ARGS...   the watcher command, cProfiled from its SIGUSR1 on
Prints a rich table and writes it as Markdown to bench/results-checks.md (--output).
"""

import sys
from pathlib import Path

# This file is named checks.py and sits next to bench/queue.py: keep its folder off sys.path, or
# `import checks` (the built-in check plugins) and `import queue` would import these files.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import argparse
import asyncio
import atexit
import contextlib
import fcntl
import itertools
import json
import os
import pstats
import re
import shlex
import shutil
import signal
import statistics
import struct
import sysconfig
import tempfile
import termios
import time
from collections.abc import Callable
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
WATCHER = str(Path(sys.executable).parent / "watcher")  # the console script beside python
QUEUE_NAME = "bench"
CONCURRENCY = 50  # tasks of the bare loops (and watcher's default checks at once per process)
CLIENT_LABELS = {
    "httpx": "bare httpx.AsyncClient (default transport)",
    "httpx-aiohttp": "bare httpx API over httpx-aiohttp (make_client)",
    "aiohttp": "bare aiohttp.ClientSession",
}
COMMANDS = {
    "run-p1": ["run", "--processes", "1"],
    "run": ["run"],
    "run-q": ["run", "-q"],
    "run-p2": ["run", "--processes", "2"],
    "run-v": ["run", "-v"],
    "worker": ["worker"],
}
ROWS = (*CLIENT_LABELS, *COMMANDS)  # the order they run in and are shown
PACKAGES = ("httpx", "httpcore", "httpx-aiohttp", "aiohttp", "redis", "hiredis", "uvicorn")
TARGET_VS_HTTPX, TARGET_RATE, TARGET_ALL_CORES, TARGET_OUTPUT = 3.0, 2500, 1.5, 0.10
CLK_TCK = os.sysconf("SC_CLK_TCK")
NPROC = len(os.sched_getaffinity(0))

console = make_console()


def label(key: str) -> str:
    if key in CLIENT_LABELS:
        return CLIENT_LABELS[key]
    text = f"`{shlex.join(['watcher', *COMMANDS[key]])}`"
    if key == "run":
        text += f" (defaults: {NPROC} processes)"
    return text + (" (after `watcher sync`)" if key == "worker" else "")


# -- processes: every one started in a session of its own, killed whatever happens ----------

GROUPS: set[int] = set()
"""Process groups started here. Each command leads a session of its own, so its worker
processes (spawned, not detached) share its group: killing the group kills them all."""


@atexit.register
def kill_groups() -> None:
    for group in list(GROUPS):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(group, signal.SIGKILL)
    GROUPS.clear()


def processes() -> dict[int, tuple[int, float]]:
    """Every process on the machine: pid -> (session id, utime + stime in seconds), from
    /proc/<pid>/stat (the CPU of all the process's threads)."""
    out = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                text = Path(f"/proc/{name}/stat").read_text()
            except OSError:
                continue  # gone meanwhile
            fields = text[text.rindex(")") + 2 :].split()
            out[int(name)] = (int(fields[3]), (int(fields[11]) + int(fields[12])) / CLK_TCK)
    return out


def machine_busy_seconds() -> float:
    """CPU seconds spent busy by the whole machine (all CPUs), from /proc/stat."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return (sum(fields[:8]) - idle) / CLK_TCK


ANSI = re.compile(rb"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)|\r")


class Terminal:
    """A command on a pseudo-terminal (200 columns, TERM=xterm-256color) in a session of its
    own: counts the lines it prints and keeps the first and the last bytes of its output."""

    KEEP = 16384

    def __init__(self, argv: list[str], cwd: Path) -> None:
        self.argv, self.cwd = argv, cwd
        self.proc: asyncio.subprocess.Process | None = None
        self.lines = 0
        self.head = bytearray()
        self.tail = bytearray()
        self.master = -1

    async def start(self) -> None:
        master, slave = os.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 50, 200, 0, 0))
        env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES", "NO_COLOR")}
        try:
            self.proc = await asyncio.create_subprocess_exec(
                *self.argv,
                cwd=self.cwd,
                env={**env, "TERM": "xterm-256color"},
                stdin=asyncio.subprocess.DEVNULL,
                stdout=slave,
                stderr=slave,
                start_new_session=True,
            )
        except BaseException:
            os.close(master)
            raise
        finally:
            os.close(slave)
        GROUPS.add(self.proc.pid)
        self.master = master
        os.set_blocking(master, False)
        asyncio.get_running_loop().add_reader(master, self.read)

    def read(self) -> bool:
        """Read what the terminal has; False when there was nothing (or it is closed)."""
        if self.master < 0:
            return False
        try:
            data = os.read(self.master, 65536)
        except BlockingIOError:
            return False
        except OSError:  # EIO: every process that had the terminal open has exited
            data = b""
        if not data:
            asyncio.get_running_loop().remove_reader(self.master)
            os.close(self.master)
            self.master = -1
            return False
        self.lines += data.count(b"\n")
        if len(self.head) < self.KEEP:
            self.head += data[: self.KEEP - len(self.head)]
        self.tail += data
        if len(self.tail) > 2 * self.KEEP:
            del self.tail[: -self.KEEP]
        return True

    @staticmethod
    def text(data: bytes | bytearray) -> list[str]:
        lines = ANSI.sub(b"", bytes(data)).decode(errors="replace").split("\n")
        return [line.strip() for line in lines if line.strip()]

    def last(self, n: int) -> list[str]:
        return self.text(self.tail[: self.tail.rfind(b"\n") + 1])[-n:] if n > 0 else []

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    def exited(self) -> str:
        code = self.proc.returncode if self.proc else None
        return f"the command exited with code {code}: {' | '.join(self.last(3)) or '(no output)'}"

    async def stop(self, grace: float = 30.0) -> int | None:
        """SIGTERM to the command (it stops its own workers gracefully), then SIGKILL to
        whatever is left of its process group; returns the command's exit code."""
        if self.proc is None:
            return None
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGTERM)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.proc.wait(), grace)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        await self.proc.wait()
        GROUPS.discard(self.proc.pid)
        while self.read():
            pass
        if self.master >= 0:
            asyncio.get_running_loop().remove_reader(self.master)
            os.close(self.master)
            self.master = -1
        return self.proc.returncode


# -- subprocesses: a bare client loop, a profiled watcher command --------------------------


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
    tally = {"requests": 0, "ok": 0, "not_modified": 0, "other": 0, "errors": 0}
    tally.update(body_bytes_304=0, nonempty_304=0, first_error="")
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
            else:
                from watcher.http import make_client

                client = make_client(transport="aiohttp", max_connections=concurrency)
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


def profiled_main(path: str, argv: list[str]) -> int:
    """The console script's `main(argv)` in this process, cProfiled (CPU time) from the
    SIGUSR1 the benchmark sends when the measured window opens; the stats go to `path`."""
    import cProfile

    from watcher.cli import main as watcher_main

    profile = cProfile.Profile(time.process_time)
    signal.signal(signal.SIGUSR1, lambda *_: profile.enable())
    try:
        return watcher_main(argv)
    finally:
        profile.disable()
        profile.dump_stats(path)


# -- the orchestrator ---------------------------------------------------------------------


@dataclass
class Sizes:
    resources: int
    seconds: float  # measured seconds per row, split into `windows` windows
    windows: int
    warmup: float  # seconds after every resource's first answer
    ready_timeout: float


@dataclass
class Snap:
    t: float
    origin: dict[str, int]
    procs: dict[int, tuple[int, float]]
    machine: float
    lines: int


@dataclass
class Window:
    seconds: float
    requests: int
    not_modified: int
    cpu: dict[str, float]  # CPU seconds: measured, origin, redis, bench, other, machine
    procs: int  # processes in the measured command's session
    lines: int  # lines the command printed
    load: float

    @property
    def rate(self) -> float:
        return self.requests / self.seconds

    def share(self, who: str) -> float:
        """CPU of `who` as a share of one CPU."""
        return self.cpu[who] / self.seconds

    @property
    def us_per_check(self) -> float | None:
        return self.cpu["measured"] / self.requests * 1e6 if self.requests else None


@dataclass
class Row:
    key: str
    windows: list[Window] = field(default_factory=list)
    tally: dict[str, Any] = field(default_factory=dict)  # a bare loop's own counts
    start_lines: int = 0  # lines the command printed before the windows
    start_last: str = ""  # the last of them
    printed: list[str] = field(default_factory=list)  # the last lines printed in the windows
    exit_codes: list[int | None] = field(default_factory=list)  # after SIGTERM, each visit
    error: str | None = None
    skipped: str | None = None

    @property
    def label(self) -> str:
        return label(self.key)

    @property
    def watcher(self) -> bool:
        return self.key in COMMANDS

    def median(self, value: Callable[[Window], float | None]) -> float | None:
        values = [v for w in self.windows if (v := value(w)) is not None]
        return statistics.median(values) if values else None

    @property
    def rate(self) -> float | None:
        return self.median(lambda w: w.rate)

    @property
    def us_per_check(self) -> float | None:
        return self.median(lambda w: w.us_per_check)


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


class Bench:
    def __init__(self, sizes: Sizes) -> None:
        self.sizes = sizes
        self.folder = Path(tempfile.mkdtemp(prefix="watcher-bench-checks-"))
        self.origin_port = free_port()
        self.origin_url = f"http://127.0.0.1:{self.origin_port}"
        self.origin: asyncio.subprocess.Process | None = None
        self.redis_server: Any = None
        self.redis: Any = None
        self.verification: list[str] = []
        self.first_visit = True  # Redis is empty until the first watcher row

    # -- processes ----------------------------------------------------------------------

    async def start(self) -> None:
        import redis.asyncio

        from watcher.redis_server import RedisServer

        with (self.folder / "origin.log").open("wb") as log:
            self.origin = await asyncio.create_subprocess_exec(
                *[sys.executable, str(ORIGIN_APP), "--port", str(self.origin_port)],
                *["--resources", str(self.sizes.resources)],
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,
            )
        GROUPS.add(self.origin.pid)
        deadline = time.monotonic() + 20
        while True:
            try:
                await origin_stats(self.origin_port)
                break
            except OSError:
                if self.origin.returncode is not None or time.monotonic() > deadline:
                    reason = last_lines((self.folder / "origin.log").read_text(), 3)
                    raise BenchError(f"the origin did not start: {reason}") from None
                await asyncio.sleep(0.05)
        self.redis_server = RedisServer()
        self.redis_server.start()
        GROUPS.add(self.redis_server.process.pid)  # it leads a session of its own
        self.redis = redis.asyncio.Redis.from_url(self.redis_server.url)
        lines = [
            "# written by bench/checks.py",
            f"redis: {self.redis_server.url}",
            f"queue: {QUEUE_NAME}",
            "# every resource is on one local origin: its budget must not be the bottleneck",
            "hosts:",
            "  default: {concurrency: 0}",
            "defaults:",
            "  every: 1s",
            "resources:",
        ]
        for i in range(self.sizes.resources):
            lines += [f"  - id: r{i}", f"    url: {self.origin_url}/r/{i}"]
        (self.folder / "watcher.yaml").write_text("\n".join(lines) + "\n")

    async def stop(self) -> None:
        if self.redis is not None:
            with contextlib.suppress(Exception):
                await self.redis.aclose()
        if self.redis_server is not None and self.redis_server.process is not None:
            pid = self.redis_server.process.pid
            self.redis_server.cleanup()
            GROUPS.discard(pid)
        if self.origin is not None:
            if self.origin.returncode is None:
                self.origin.terminate()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.origin.wait(), 10)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.origin.pid, signal.SIGKILL)
            await self.origin.wait()
            GROUPS.discard(self.origin.pid)
        shutil.rmtree(self.folder, ignore_errors=True)

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

    async def accepts(self, argv: list[str]) -> bool:
        """Whether the console script takes these arguments (`--help` exits 0 if so)."""
        proc = await asyncio.create_subprocess_exec(
            WATCHER,
            *argv,
            "--help",
            cwd=self.folder,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        return await proc.wait() == 0

    # -- measurement --------------------------------------------------------------------

    async def snapshot(self, term: Terminal) -> Snap:
        origin = await origin_stats(self.origin_port)
        return Snap(time.monotonic(), origin, processes(), machine_busy_seconds(), term.lines)

    def window(self, a: Snap, b: Snap, term: Terminal) -> Window:
        assert term.proc and self.origin and self.redis_server.process

        def session(sid: int) -> tuple[float, int]:
            """CPU seconds used in the window by the processes of session `sid` (a process
            born in the window counts from its start), and how many there are now."""
            cpu, count = 0.0, 0
            for pid, (session_id, seconds) in b.procs.items():
                if session_id == sid:
                    count += 1
                    old = a.procs.get(pid)
                    cpu += seconds - (old[1] if old and old[0] == sid else 0.0)
            return cpu, count

        measured, count = session(term.proc.pid)
        me = os.getpid()
        cpu = {
            "measured": measured,
            "origin": session(self.origin.pid)[0],
            "redis": session(self.redis_server.process.pid)[0],
            "bench": b.procs[me][1] - a.procs[me][1],
            "machine": b.machine - a.machine,
        }
        cpu["other"] = max(0.0, cpu["machine"] - sum(cpu[k] for k in COLUMNS_CPU[:4]))
        return Window(
            seconds=b.t - a.t,
            requests=b.origin["requests"] - a.origin["requests"],
            not_modified=b.origin["not_modified"] - a.origin["not_modified"],
            cpu=cpu,
            procs=count,
            lines=b.lines - a.lines,
            load=load_average(),
        )

    async def measure(self, term: Terminal) -> Window:
        before = await self.snapshot(term)
        await asyncio.sleep(self.sizes.seconds / self.sizes.windows)
        if not term.running:
            raise BenchError(term.exited())
        window = self.window(before, await self.snapshot(term), term)
        console.print(f"    window: {escape(describe_window(window))}")
        return window

    # -- rows ---------------------------------------------------------------------------

    async def run_watcher(self, row: Row, profile: Path | None = None) -> None:
        """One window of `watcher ARGS`, run in the folder of the YAML. The first visit of
        the first row starts from an empty Redis: it waits for every resource's first answer
        (a 200); later visits find the ETags in Redis and wait for the first check."""
        argv = COMMANDS[row.key]
        n = self.sizes.resources
        console.print(f"[bold]{escape(row.label)}[/]: {n:,} resources")
        if argv[0] == "worker":
            sync = await asyncio.create_subprocess_exec(
                WATCHER,
                "sync",
                cwd=self.folder,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
                start_new_session=True,
            )
            out, _ = await sync.communicate()
            if sync.returncode:
                raise BenchError(f"watcher sync: {last_lines(out.decode(errors='replace'), 2)}")
            console.print(f"  watcher sync: {escape(last_lines(out.decode(errors='replace')))}")
        command = [WATCHER, *argv]
        if profile is not None:
            command = [sys.executable, str(Path(__file__).resolve()), "--profiled", str(profile)]
            command += argv
        first = await origin_stats(self.origin_port)
        baselines = n if self.first_visit else 0
        self.first_visit = False
        term = Terminal(command, self.folder)
        await term.start()
        try:
            deadline = time.monotonic() + self.sizes.ready_timeout
            while True:
                now = await origin_stats(self.origin_port)
                if now["ok"] - first["ok"] >= baselines and now["requests"] > first["requests"]:
                    break
                if not term.running:
                    raise BenchError(term.exited())
                if time.monotonic() > deadline:
                    raise BenchError(f"not ready in {self.sizes.ready_timeout:g} s")
                await asyncio.sleep(0.2)
            await asyncio.sleep(self.sizes.warmup)
            if profile is not None:
                term.proc.send_signal(signal.SIGUSR1)  # type: ignore[union-attr]
            row.start_lines, row.start_last = term.lines, (term.last(1) or [""])[0]
            row.windows.append(await self.measure(term))
            row.printed = term.last(min(2, term.lines - row.start_lines))
        finally:
            row.exit_codes.append(await term.stop())

    async def run_client(self, row: Row) -> None:
        """One window of a bare client loop (which learns every ETag first)."""
        console.print(f"[bold]{escape(row.label)}[/]: learning {self.sizes.resources:,} ETags")
        command = [sys.executable, str(Path(__file__).resolve()), "--client", row.key]
        command += ["--origin", self.origin_url, "--resources", str(self.sizes.resources)]
        term = Terminal([*command, "--concurrency", str(CONCURRENCY)], self.folder)
        await term.start()
        try:
            deadline = time.monotonic() + self.sizes.ready_timeout
            while b"ready" not in term.head:
                if not term.running:
                    raise BenchError(term.exited())
                if time.monotonic() > deadline:
                    raise BenchError("the client did not learn every ETag in time")
                await asyncio.sleep(0.1)
            await asyncio.sleep(self.sizes.warmup)
            row.windows.append(await self.measure(term))
        finally:
            row.exit_codes.append(await term.stop())
        last = term.last(1)
        if not last or not last[0].startswith("{"):
            raise BenchError(f"the client printed no tallies: {term.exited()}")
        for key, value in json.loads(last[0]).items():
            if isinstance(value, int):
                row.tally[key] = row.tally.get(key, 0) + value
            elif value and not row.tally.get(key):
                row.tally[key] = value

    async def profile(self) -> list[str]:
        path = self.folder / "watcher-run.prof"
        row = Row("run-p1")
        await self.run_watcher(row, profile=path)
        return profile_report(path, row)


# A profiled function's file is shown from below the first of these: site-packages (first:
# the venv may sit inside the repository), the repository, the standard library.
SITE_PACKAGES = "site-packages/"
IN_REPO = f"{REPO}/"
STDLIB = f"{sysconfig.get_paths()['stdlib']}/"


def profile_report(path: Path, row: Row) -> list[str]:
    """Top functions by own time, and own time by package."""
    stats = pstats.Stats(str(path))
    entries = stats.stats  # type: ignore[attr-defined]
    total = sum(tt for (_, _, tt, _, _) in entries.values())
    checks = max(sum(w.requests for w in row.windows), 1)

    def name(func: tuple[str, int, str]) -> str:
        filename, line, fn = func
        if filename == "~":
            return fn
        for marker in (SITE_PACKAGES, IN_REPO, STDLIB):
            if marker in filename:
                filename = filename.split(marker, 1)[1]
                break
        return f"{filename}:{line} {fn}"

    lines = [
        f"cProfile of `watcher run --processes 1` (the console script's `main()` under "
        f"cProfile, started by SIGUSR1 when the window opened) over one "
        f"{sum(w.seconds for w in row.windows):.0f} s window: {checks:,} checks "
        f"({row.rate or 0:,.0f}/s under the profiler), {total:.2f} s of profiled CPU (timer: "
        f"process CPU time), {total / checks * 1e6:,.0f} µs per check (cProfile inflates "
        "every call: compare shares, not absolutes; a coroutine counts one call per "
        "resumption).",
        "",
        "Top 25 by own time (tottime):",
        "",
        "| own s | share | µs/check | calls/check | cum s | function |",
        "| ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    top = sorted(entries.items(), key=lambda item: item[1][2], reverse=True)[:25]
    for func, (_cc, nc, tt, ct, _callers) in top:
        lines.append(
            f"| {tt:.2f} | {tt / total:.1%} | {tt / checks * 1e6:.1f} | {nc / checks:.2f} | "
            f"{ct:.2f} | `{name(func)}` |"
        )
    groups: dict[str, float] = {}
    for func, (_cc, _nc, tt, _ct, _callers) in entries.items():
        group = package_of(func[0], func[2])
        groups[group] = groups.get(group, 0.0) + tt
    lines += [
        "",
        "Own time by package (where the process's CPU goes):",
        "",
        "| package | own s | share | µs/check |",
        "| --- | ---: | ---: | ---: |",
    ]
    for group, tt in sorted(groups.items(), key=lambda item: item[1], reverse=True)[:14]:
        lines.append(f"| {group} | {tt:.2f} | {tt / total:.1%} | {tt / checks * 1e6:.1f} |")
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


# -- output -------------------------------------------------------------------------------

COLUMNS_CPU = ("measured", "origin", "redis", "bench", "other")
HEADER = [
    "command / client",
    "checks/s",
    "range",
    "vs bare httpx",
    "304 share",
    "CPU µs/check",
    "procs",
    "its CPU",
    "origin CPU",
    "redis CPU",
    "bench CPU",
    "other CPU",
    "machine busy",
    "output lines/s",
]


def fmt(value: float | None, spec: str = ",.0f", suffix: str = "") -> str:
    return "" if value is None else f"{value:{spec}}{suffix}"


def percent(value: float | None) -> str:
    return "" if value is None else f"{value:.0%}"


def describe_window(w: Window) -> str:
    share = w.not_modified / w.requests if w.requests else 0
    cpu = " ".join(f"{k} {w.share(k):.0%}" for k in COLUMNS_CPU).replace("measured", "it")
    return (
        f"{w.rate:,.0f} checks/s, 304 {share:.1%}, {fmt(w.us_per_check)} µs/check, "
        f"{w.procs} procs, CPU {cpu}, machine busy {w.share('machine') / NPROC:.0%}, "
        f"{w.lines / w.seconds:,.1f} lines/s, load {w.load:.2f}"
    )


def table_rows(rows: list[Row]) -> list[list[str]]:
    base = next((r.rate for r in rows if r.key == "httpx" and r.rate), None)
    body = []
    for row in rows:
        if row.error or row.skipped or not row.windows:
            reason = row.skipped or (row.error or "no windows").split(" | ")[0]
            why = "not run" if row.skipped else "failed"
            body.append([row.label, f"{why}: {reason[:70]}", *[""] * (len(HEADER) - 2)])
            continue
        rates = [w.rate for w in row.windows]
        share = sum(w.not_modified for w in row.windows) / max(
            sum(w.requests for w in row.windows), 1
        )
        body.append(
            [
                row.label,
                fmt(row.rate),
                f"{min(rates):,.0f}-{max(rates):,.0f}",
                fmt(row.rate / base if base and row.rate else None, ".2f", "x"),
                f"{share:.1%}",
                fmt(row.us_per_check),
                fmt(row.median(lambda w: w.procs)),
                *(percent(row.median(lambda w, k=k: w.share(k))) for k in COLUMNS_CPU),
                percent(row.median(lambda w: w.share("machine") / NPROC)),
                fmt(row.median(lambda w: w.lines / w.seconds), ",.1f") if row.watcher else "",
            ]
        )
    return body


def verdict(met: bool) -> str:
    return "met" if met else "NOT met"


def outside(*rows: Row) -> str:
    """A caveat when processes outside the benchmark took much CPU in these rows' windows."""
    shares = [row.median(lambda w: w.share("other")) or 0.0 for row in rows]
    if max(shares) < 0.25:
        return ""
    each = " and ".join(f"{share:.0%}" for share in shares)
    return f" (caveat: other processes used {each} of a CPU in these rows' windows)"


def targets(rows: list[Row], offered: int) -> list[str]:
    by = {r.key: r for r in rows if r.rate}
    out = []
    httpx, p1, run, quiet = (by.get(k) for k in ("httpx", "run-p1", "run", "run-q"))
    if httpx and p1 and httpx.rate and p1.rate:
        ratio = p1.rate / httpx.rate
        met = ratio >= TARGET_VS_HTTPX and p1.rate >= TARGET_RATE
        text = (
            f"`watcher run --processes 1` vs bare httpx (target ≥ {TARGET_VS_HTTPX:g}x and ≥ "
            f"{TARGET_RATE:,} checks/s): {verdict(met)}: {p1.rate:,.0f} vs {httpx.rate:,.0f} "
            f"checks/s = {ratio:.2f}x"
        )
        if p1.us_per_check and httpx.us_per_check:
            text += (
                f"; per CPU second {httpx.us_per_check / p1.us_per_check:.2f}x "
                f"({p1.us_per_check:,.0f} vs {httpx.us_per_check:,.0f} µs per check)"
            )
        out.append(text + outside(p1, httpx))
    else:
        out.append("`watcher run --processes 1` vs bare httpx: not measured")
    if run and p1 and run.rate and p1.rate:
        ratio = run.rate / p1.rate
        out.append(
            f"`watcher run` (defaults, {NPROC} processes) vs its own `--processes 1` (target ≥ "
            f"{TARGET_ALL_CORES:g}x): {verdict(ratio >= TARGET_ALL_CORES)}: {run.rate:,.0f} vs "
            f"{p1.rate:,.0f} checks/s = {ratio:.2f}x"
            + (
                f" (all {offered:,} checks/s offered ran: the ratio is a floor)"
                if run.rate >= 0.95 * offered
                else ""
            )
            + outside(run, p1)
        )
    else:
        out.append("`watcher run` vs `--processes 1`: not measured")
    if run and quiet and run.rate and quiet.rate:
        diff = run.rate / quiet.rate - 1
        text = (
            f"default output vs `-q` (target within {TARGET_OUTPUT:.0%}): "
            f"{verdict(diff >= -TARGET_OUTPUT)}: {run.rate:,.0f} vs {quiet.rate:,.0f} checks/s "
            f"= {diff:+.1%}"
        )
        if run.us_per_check and quiet.us_per_check:
            text += (
                f"; CPU per check {run.us_per_check:,.0f} vs {quiet.us_per_check:,.0f} µs "
                f"= {run.us_per_check / quiet.us_per_check - 1:+.1%}"
            )
        out.append(text + outside(run, quiet))
    else:
        out.append("default output vs `-q`: not measured")
    return out


def notes(rows: list[Row], offered: int) -> list[str]:
    out = []
    for row in rows:
        if row.skipped:
            out.append(f"{row.label}: not run: {row.skipped}")
            continue
        if row.error:
            out.append(f"{row.label}: FAILED: {row.error}")
        if not row.windows:
            continue
        origin = max(w.share("origin") for w in row.windows)
        text = f"{row.label}: origin CPU at most {origin:.0%} of one CPU in a window"
        if origin > 0.85:
            text += " (near its one core: the origin may have limited this row)"
        if row.rate and row.rate >= 0.95 * offered:
            text += f"; ran everything offered ({offered:,} checks/s)"
        if row.watcher:
            lines = sum(w.lines for w in row.windows)
            text += (
                f"; processes in its session: {fmt(row.median(lambda w: w.procs))}; exit codes "
                f"after SIGTERM: {sorted(set(row.exit_codes))}; its terminal at the last visit: "
                f"{row.start_lines:,} lines at "
                f"start (the last: `{row.start_last[:160]}`), {lines:,} in the "
                "windows"
                + (", the last: " if lines else "")
                + " ⏎ ".join(f"`{line[:160]}`" for line in row.printed)
            )
        elif row.tally:
            t = row.tally
            text += (
                f"; {t['requests']:,} responses in all ({t['ok']:,} 200, "
                f"{t['not_modified']:,} 304, {t['other']:,} other, {t['errors']:,} errors"
                + (f", first: {t['first_error']}" if t["errors"] else "")
                + f"); 304s with a non-empty body: {t['nonempty_304']} "
                f"({t['body_bytes_304']} bytes)"
            )
        out.append(text)
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
            "Check benchmark: the console script against bare HTTP clients",
            machine,
            versions=", ".join(f"{k} {v}" for k, v in package_versions(*PACKAGES).items()),
            load=load,
            elapsed=elapsed,
            server_note=f"; origin: uvicorn + httptools, loop {machine['loop']}, one process",
            load_note=" (the machine is shared: see the `other CPU` column and each window)",
        ),
        "",
        f"{sizes.resources:,} resources `every: 1s` (so {sizes.resources:,} checks/s offered); "
        f"each figure is the median of {sizes.windows} windows of {window_s:g} s, one per "
        "round (range: min-max of the windows' checks/s).",
        "",
        *markdown_table(HEADER, table_rows(rows)),
        "",
        "## Targets",
        "",
        *(f"- {line}" for line in targets(rows, sizes.resources)),
        "",
        "## Notes",
        "",
        *(f"- {line}" for line in notes(rows, sizes.resources)),
        "",
        "## 304s carry no body",
        "",
        *(f"- {line}" for line in verification),
        "",
        "## How",
        "",
        f"- Every process runs on this machine and shares its {machine['nproc']} CPUs: the "
        "origin (one uvicorn process), redis-server, the measured command with its worker "
        "processes, and this script (which reads the command's terminal and samples counters "
        "between windows).",
        f"- watcher rows: this script writes a watcher.yaml (`redis:` the private server, "
        f"`queue: {QUEUE_NAME}`, `hosts: {{default: {{concurrency: 0}}}}` (no per-host limit: "
        "every resource is on one local origin), `defaults: {every: 1s}`, "
        f"{sizes.resources:,} resources "
        "`{id: r<i>, url: <origin>/r/<i>}`, everything else default: check `etag`, "
        "notify `[console]`, no jitter) and runs `.venv/bin/watcher <command>` in its folder "
        "(no -c; the `watcher worker` row runs `watcher sync` first), on a pseudo-terminal of "
        "200x50 with TERM=xterm-256color, in a session of its own. The rows run in "
        f"{sizes.windows} rounds, each row one window a round, every visit a fresh start of "
        "the command against the same Redis: the first visit of all starts from an empty "
        "Redis and waits until every resource had its first answer (the origin's 200 count "
        f"rose by {sizes.resources:,}), later ones find the ETags there and wait for the first "
        f"check; then {sizes.warmup:g} s of warm-up, one window, and SIGTERM (then SIGKILL to "
        "its process group, whatever is left).",
        "- bare rows: one process, 50 tasks looping over the same resources with "
        "`If-None-Match` set to the ETag learned from the resource's first 200, started afresh "
        f"at each visit; the window opens once every ETag is known and {sizes.warmup:g} s of "
        "warm-up passed. httpx gets "
        "`Limits(max_connections=50, max_keepalive_connections=50)`; aiohttp "
        "`TCPConnector(limit=50)`; the httpx-aiohttp row uses watcher's own "
        "`make_client(transport='aiohttp', max_connections=50)`. Each reads the body.",
        "- checks/s: requests the origin served in the window. CPU µs/check: utime+stime of "
        "every process in the measured command's session (/proc/<pid>/stat: the command, "
        "its worker processes and multiprocessing's resource tracker; `procs` counts them) "
        "over the window, divided by the checks. its/origin/redis/bench CPU: share of one "
        "CPU; other CPU: the machine's busy time (/proc/stat) minus these, i.e. processes "
        "outside this benchmark; machine busy: share of all CPUs. output lines/s: lines the "
        "command printed on its terminal.",
    ]
    if profile_lines:
        lines += ["", "## Profile", "", *profile_lines]
    lines += ["", "## Every window", ""]
    for row in rows:
        for turn, w in enumerate(row.windows):
            lines.append(f"- {row.label}, round {turn + 1}: {describe_window(w)}")
    path.write_text("\n".join(lines) + "\n")


# -- main -----------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = arg_parser(__doc__, quick="400 resources, 1 s windows (2 min)", results=RESULTS)
    parser.add_argument("--resources", type=int, default=None, help="resources (6000)")
    parser.add_argument(
        "--seconds", type=float, default=None, help="measured seconds per row (30), in windows"
    )
    parser.add_argument(
        "--windows", type=int, default=3, help="rounds: windows per row, one a round (3)"
    )
    parser.add_argument("--warmup", type=float, default=None, help="warm-up seconds per row (4)")
    parser.add_argument(
        "--rows", default=",".join(ROWS), help=f"rows to run, in order (default: {','.join(ROWS)})"
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="also cProfile `watcher run --processes 1` over one window (not a table row)",
    )
    # a subprocess entry point
    parser.add_argument("--client", choices=list(CLIENT_LABELS), help=argparse.SUPPRESS)
    parser.add_argument("--origin", help=argparse.SUPPRESS)
    parser.add_argument("--concurrency", type=int, default=CONCURRENCY, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    unknown = [key for key in args.rows.split(",") if key not in ROWS]
    if unknown:
        parser.error(f"unknown rows {unknown}; known: {', '.join(ROWS)}")
    return args


async def orchestrate(args: argparse.Namespace, sizes: Sizes) -> int:
    started, load_start = time.monotonic(), load_average()
    loop, task = asyncio.get_running_loop(), asyncio.current_task()
    assert task is not None
    for sig in (signal.SIGTERM, signal.SIGHUP):  # SIGINT: asyncio.run cancels us already
        loop.add_signal_handler(sig, task.cancel)
    rows = [Row(key) for key in args.rows.split(",")]
    bench = Bench(sizes)
    profile_lines: list[str] = []
    try:
        await bench.start()
        info = await bench.redis.info("server")
        machine = machine_info(str(info.get("redis_version", "?")))
        machine["loop"] = event_loop_name()
        console.print(
            f"origin {bench.origin_url} (uvicorn + httptools, loop {machine['loop']}), "
            f"redis-server {machine['redis']} at {bench.redis_server.url}; nproc "
            f"{machine['nproc']}, load average {load_start:.2f}; {sizes.resources:,} "
            f"resources, {sizes.windows} windows of {sizes.seconds / sizes.windows:g} s; "
            f"watcher.yaml in {bench.folder} (removed at the end)"
        )
        await bench.verify()
        for line in bench.verification:
            console.print(f"[green]verified[/] {escape(line)}")
        for row in rows:
            if row.watcher and not await bench.accepts(COMMANDS[row.key]):
                row.skipped = f"`{shlex.join(['watcher', *COMMANDS[row.key]])}` is refused"
                console.print(f"[yellow]{escape(row.label)}: {escape(row.skipped)}[/]")
        for turn in range(sizes.windows):  # rounds: a burst of outside load hits every row
            console.print(f"[bold]round {turn + 1} of {sizes.windows}[/]")
            for row in rows:
                if row.skipped or row.error:
                    continue
                try:
                    await (bench.run_watcher(row) if row.watcher else bench.run_client(row))
                except BenchError as exc:
                    row.error = str(exc)
                    console.print(f"  [red]{escape(str(exc))}[/]")
        if args.profile:
            console.print("[bold]profile[/]: `watcher run --processes 1` under cProfile")
            try:
                profile_lines = await bench.profile()
            except BenchError as exc:
                profile_lines = [f"the profiled run failed: {exc}"]
    finally:
        await bench.stop()
    elapsed = time.monotonic() - started
    load = (load_start, load_average())
    title = (
        f"Conditional checks, {sizes.resources:,} resources every 1 s, median of "
        f"{sizes.windows} windows of {sizes.seconds / sizes.windows:g} s"
    )
    console.print(rich_table(title, HEADER, table_rows(rows)))
    for line in [*targets(rows, sizes.resources), *notes(rows, sizes.resources)]:
        console.print(f"- {escape(line)}")
    for line in profile_lines:
        console.print(escape(line))
    write_markdown(
        args.output, rows, sizes, machine, bench.verification, profile_lines, load, elapsed
    )
    console.print(
        f"load average {load[0]:.2f} at start, {load[1]:.2f} at end; wrote {args.output} "
        f"({elapsed / 60:.1f} min in all)"
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--profiled"]:
        return profiled_main(argv[1], argv[2:])
    args = parse_args(argv)
    if args.client:
        return client_main(args)
    resources = args.resources or (400 if args.quick else 6000)
    seconds = args.seconds or (3.0 if args.quick else 30.0)
    warmup = args.warmup if args.warmup is not None else (0.5 if args.quick else 4.0)
    sizes = Sizes(resources, seconds, max(1, args.windows), warmup, ready_timeout=120.0)
    try:
        return asyncio.run(orchestrate(args, sizes))
    except (KeyboardInterrupt, asyncio.CancelledError):
        console.print("[yellow]interrupted: every process started here was stopped[/]")
        return 130


if __name__ == "__main__":
    sys.exit(main())
