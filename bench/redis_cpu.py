# ruff: noqa: E402  (sys.path is fixed before the imports, see bench/common.py)
"""Redis CPU time per steady-state check: `watcher run` as a user runs it, the redis-server
process's CPU (user + sys) over windows, divided by the checks done in each.

    .venv/bin/python bench/redis_cpu.py [--resources 6000] [--every 1s] [--windows 3]
        [--seconds 15] [--warmup 10] [--processes N] [--sample 3] [--rev GIT_REV]

Everything runs on 127.0.0.1: a private redis-server started here (watcher.redis_server's
RedisServer, a free port, no persistence), the local origin of bench/origin_app.py (uvicorn +
httptools; a 304 to a request whose If-None-Match holds the resource's ETag), and
`watcher run -q -c <folder>/watcher.yaml` (default flags otherwise; `--processes N` when
given), the YAML listing N resources `every: 1s` on the origin with
`hosts: {default: {concurrency: 0}}`, so no per-host budget holds the single origin back.

Once every resource had its baseline (the origin's 200 count reached N) and a warm-up passed,
each window reads, before and after: the origin's counters (checks = requests it answered),
`watcher:{bench}:stat:completed` (Redis's own count, read with a plain client), utime+stime of
the redis-server process, of every process in the command's session (the command and its
worker processes) and of the origin (/proc/<pid>/stat, clock ticks), and INFO commandstats and
stats (calls and usec per command, network bytes). Commands that scripts call are counted in
commandstats too, and their time is inside evalsha's: the two are not to be added up.

After the windows, two SLOWLOG samples tell the scripts apart (each EVALSHA's SHA1 is named
from the tree's own watcher/lua scripts; a script's own commands are logged too, from the
client address "?:0", just before its EVALSHA): one of --sample seconds logging the calls
slower than --slowlog-us µs (the time per script: logging every command, a script's ones
included, would slow Redis down several times), then one of a second logging every command
(the calls per check, and the commands each script runs). The time per script is shown beside
the windows' evalsha time from commandstats, which says how much the threshold left out.

--rev GIT_REV measures the same against another revision too: checked out with
`git worktree add --detach` into a temporary folder, run with the same python and
PYTHONPATH=<that folder> (`python -m watcher.cli run ...`), each tree with its own Redis and
origin, one after the other; the worktree is removed afterwards.
"""

import sys
from pathlib import Path

sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import argparse
import atexit
import contextlib
import http.client
import json
import os
import shutil
import signal
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import redis

from bench.common import (
    BENCH,
    REPO,
    BenchError,
    arg_parser,
    command_line,
    free_port,
    last_lines,
    load_average,
    machine_info,
    make_console,
    package_versions,
    rich_table,
)
from watcher.redis_server import RedisServer

ORIGIN_APP = BENCH / "origin_app.py"
WATCHER = str(Path(sys.executable).parent / "watcher")  # the console script beside python
QUEUE = "bench"
PREFIX = f"watcher:{{{QUEUE}}}:"
CLIENT_NAME = "redis-cpu-bench"  # this script's own connection, left out of the sample
CLK_TCK = os.sysconf("SC_CLK_TCK")
READY_TIMEOUT = 300.0
STOP_TIMEOUT = 20.0
TOP = 10
SHA_MAP = """
import json, watcher
from redis.asyncio import Redis
from watcher.queue import SCRIPTS
from watcher.scripts import load_scripts
scripts = load_scripts(Redis(), "x:", SCRIPTS)
print(json.dumps({"file": watcher.__file__,
                  "shas": {s.registered.sha: name for name, s in scripts.items()}}))
"""

console = make_console()
GROUPS: set[int] = set()
"""Process groups started here (each process leads a session of its own)."""


@atexit.register
def kill_groups() -> None:
    for group in list(GROUPS):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(group, signal.SIGKILL)
    GROUPS.clear()


# -- what is measured -------------------------------------------------------------------


@dataclass(frozen=True)
class Tree:
    """A tree of the project and how to run its console script."""

    label: str
    root: Path
    command: tuple[str, ...]
    env: dict[str, str]


@dataclass(frozen=True)
class Snap:
    t: float
    origin: dict[str, int]
    completed: int
    redis_cpu: float
    origin_cpu: float
    session: dict[int, float]  # pid -> CPU seconds, every process in the command's session
    commands: dict[str, tuple[int, int]]  # command -> (calls, usec)
    net: tuple[int, int]  # bytes into and out of Redis


@dataclass(frozen=True)
class Window:
    seconds: float
    checks: int  # requests the origin answered
    not_modified: int
    completed: int  # stat:completed's rise
    redis_cpu: float
    watcher_cpu: float
    origin_cpu: float
    procs: int
    commands: dict[str, tuple[int, int]]
    net: tuple[int, int]

    @property
    def rate(self) -> float:
        return self.checks / self.seconds

    def per_check(self, seconds: float) -> float:
        """µs per check of `seconds` of CPU."""
        return seconds / self.checks * 1e6 if self.checks else float("nan")

    @property
    def redis_us(self) -> float:
        return self.per_check(self.redis_cpu)


@dataclass
class ScriptCost:
    """A top-level command's (or one script's) calls and time, and the commands its calls
    ran inside (a script's redis.call()s: name -> calls)."""

    calls: int = 0
    usec: int = 0
    inside: dict[str, int] = field(default_factory=dict)


@dataclass
class Result:
    tree: Tree
    windows: list[Window] = field(default_factory=list)
    timing: tuple[dict[str, ScriptCost], int] = ({}, 0)  # (costs, checks meanwhile)
    counting: tuple[dict[str, ScriptCost], int] = ({}, 0)
    redis_version: str = ""
    imported_from: str = ""
    error: str | None = None

    def median(self, value: Callable[[Window], float]) -> float:
        return statistics.median(value(w) for w in self.windows)

    def spread(self, value: Callable[[Window], float]) -> tuple[float, float]:
        values = [value(w) for w in self.windows]
        return min(values), max(values)


# -- processes and counters ----------------------------------------------------------------


def proc_stat(pid: int) -> tuple[int, float] | None:
    """(session id, utime + stime in seconds) of a process, None when it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2 :].split()
    return int(fields[3]), (int(fields[11]) + int(fields[12])) / CLK_TCK


def session_cpu(sid: int) -> dict[int, float]:
    """pid -> CPU seconds of every process in session `sid`."""
    found = {}
    for name in os.listdir("/proc"):
        if name.isdigit() and (stat := proc_stat(int(name))) and stat[0] == sid:
            found[int(name)] = stat[1]
    return found


def cpu_of(pid: int) -> float:
    stat = proc_stat(pid)
    if stat is None:
        raise BenchError(f"process {pid} is gone")
    return stat[1]


def origin_stats(port: int) -> dict[str, int]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)  # no proxy, ever
    try:
        conn.request("GET", "/_stats")
        response = conn.getresponse()
        if response.status != 200:
            raise BenchError(f"origin /_stats answered {response.status}")
        stats: dict[str, int] = json.loads(response.read())
        return stats
    finally:
        conn.close()


def command_stats(client: redis.Redis) -> dict[str, tuple[int, int]]:
    info: dict[str, Any] = client.info("commandstats")
    return {
        name.removeprefix("cmdstat_"): (int(v["calls"]), int(v["usec"])) for name, v in info.items()
    }


def snapshot(client: redis.Redis, origin_port: int, pids: dict[str, int]) -> Snap:
    stats: dict[str, Any] = client.info("stats")
    return Snap(
        t=time.monotonic(),
        origin=origin_stats(origin_port),
        completed=int(client.get(PREFIX + "stat:completed") or 0),
        redis_cpu=cpu_of(pids["redis"]),
        origin_cpu=cpu_of(pids["origin"]),
        session=session_cpu(pids["watcher"]),
        commands=command_stats(client),
        net=(int(stats["total_net_input_bytes"]), int(stats["total_net_output_bytes"])),
    )


def window(a: Snap, b: Snap) -> Window:
    # a process born in the window counts from its start
    watcher_cpu = sum(cpu - a.session.get(pid, 0.0) for pid, cpu in b.session.items())
    commands = {}
    for name, (calls, usec) in b.commands.items():
        before = a.commands.get(name, (0, 0))
        if calls > before[0]:
            commands[name] = (calls - before[0], usec - before[1])
    return Window(
        seconds=b.t - a.t,
        checks=b.origin["requests"] - a.origin["requests"],
        not_modified=b.origin["not_modified"] - a.origin["not_modified"],
        completed=b.completed - a.completed,
        redis_cpu=b.redis_cpu - a.redis_cpu,
        watcher_cpu=watcher_cpu,
        origin_cpu=b.origin_cpu - a.origin_cpu,
        procs=len(b.session),
        commands=commands,
        net=(b.net[0] - a.net[0], b.net[1] - a.net[1]),
    )


# -- the trees ------------------------------------------------------------------------------


def main_tree() -> Tree:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return Tree("working tree", REPO, (WATCHER,), env)


@contextlib.contextmanager
def rev_tree(rev: str) -> Iterator[Tree]:
    """REV checked out (detached) into a temporary folder, removed afterwards."""
    root = Path(tempfile.mkdtemp(prefix="watcher-bench-rev-")) / "tree"
    git = ["git", "-C", str(REPO), "worktree"]
    added = subprocess.run(
        [*git, "add", "--detach", str(root), rev], capture_output=True, text=True, check=False
    )
    if added.returncode:
        raise BenchError(f"git worktree add {rev}: {last_lines(added.stderr, 2)}")
    try:
        env = {**os.environ, "PYTHONPATH": str(root)}
        command = (sys.executable, "-m", "watcher.cli")
        yield Tree(f"{rev} ({worktree_head(root)[:10]})", root, command, env)
    finally:
        subprocess.run([*git, "remove", "--force", str(root)], capture_output=True, check=False)
        shutil.rmtree(root.parent, ignore_errors=True)


def worktree_head(root: Path) -> str:
    """The commit a detached worktree is at, read from its git files (no git command)."""
    with contextlib.suppress(OSError, IndexError):
        gitdir = Path((root / ".git").read_text().split("gitdir:", 1)[1].strip())
        return (gitdir / "HEAD").read_text().strip()
    return "?"


SCRIPT_NAMES: set[str] = set()
"""The scripts' names seen (to tell them from plain commands in the output)."""


def script_names(tree: Tree) -> tuple[dict[str, str], str]:
    """SHA1 -> script name for the tree's scripts, and where its watcher is imported from."""
    env = {**tree.env, "PYTHONPATH": str(tree.root)}
    done = subprocess.run(  # in the tree: `python -c` puts its folder first on sys.path
        [sys.executable, "-c", SHA_MAP],
        cwd=tree.root,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode:
        console.print(f"[yellow]script names unknown: {last_lines(done.stderr)}[/]")
        return {}, "?"
    found = json.loads(done.stdout)
    SCRIPT_NAMES.update(found["shas"].values())
    return found["shas"], found["file"]


# -- one measurement ------------------------------------------------------------------------


def start_origin(port: int, resources: int, folder: Path) -> subprocess.Popen[bytes]:
    with (folder / "origin.log").open("wb") as log:
        origin = subprocess.Popen(
            [sys.executable, str(ORIGIN_APP), "--port", str(port), "--resources", str(resources)],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            start_new_session=True,
        )
    GROUPS.add(origin.pid)
    deadline = time.monotonic() + 20
    while True:
        try:
            origin_stats(port)
            return origin
        except OSError:
            if origin.poll() is not None or time.monotonic() > deadline:
                reason = last_lines((folder / "origin.log").read_text(), 3)
                raise BenchError(f"the origin did not start: {reason}") from None
            time.sleep(0.05)


def write_yaml(folder: Path, redis_url: str, origin_port: int, args: argparse.Namespace) -> Path:
    lines = [
        "# written by bench/redis_cpu.py",
        f"redis: {redis_url}",
        f"queue: {QUEUE}",
        "# every resource is on one local origin: per-host budgets must not hold it back",
        "hosts:",
        "  default: {concurrency: 0}",
        "defaults:",
        f"  every: {args.every}",
        "resources:",
    ]
    for i in range(args.resources):
        lines += [f"  - id: r{i}", f"    url: http://127.0.0.1:{origin_port}/r/{i}"]
    path = folder / "watcher.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


def start_watcher(tree: Tree, yaml: Path, args: argparse.Namespace) -> subprocess.Popen[bytes]:
    argv = [*tree.command, "run", "-q", "-c", str(yaml)]
    if args.processes is not None:
        argv += ["--processes", str(args.processes)]
    with (yaml.parent / "watcher.log").open("wb") as log:
        proc = subprocess.Popen(
            argv,
            cwd=yaml.parent,
            env=tree.env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            start_new_session=True,
        )
    GROUPS.add(proc.pid)
    console.print(f"  started: {' '.join(argv[len(tree.command) :])} (pid {proc.pid})")
    return proc


def watcher_failed(proc: subprocess.Popen[bytes], folder: Path) -> BenchError:
    said = last_lines((folder / "watcher.log").read_text(errors="replace"), 3)
    return BenchError(f"watcher exited with {proc.returncode}: {said}")


def wait_baselines(proc: subprocess.Popen[bytes], port: int, n: int, folder: Path) -> float:
    """Wait until every resource had its first answer (a 200); returns the seconds it took."""
    start = time.monotonic()
    while origin_stats(port)["ok"] < n:
        if proc.poll() is not None:
            raise watcher_failed(proc, folder)
        if time.monotonic() - start > READY_TIMEOUT:
            raise BenchError(f"baselines not done in {READY_TIMEOUT:g} s")
        time.sleep(0.2)
    return time.monotonic() - start


def stop_process(proc: subprocess.Popen[bytes]) -> int | None:
    """SIGTERM to its group, SIGKILL to what is left after STOP_TIMEOUT; its exit code."""
    code: int | None = None
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        code = proc.wait(STOP_TIMEOUT)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    GROUPS.discard(proc.pid)
    return code


def text(value: Any) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


def sample_scripts(
    client: redis.Redis, port: int, seconds: float, threshold: int, names: dict[str, str]
) -> tuple[dict[str, ScriptCost], int]:
    """The commands slower than `threshold` µs for `seconds` (SLOWLOG): cost per top-level
    command or script, and the checks meanwhile."""
    saved = {str(k): str(v) for k, v in client.config_get("slowlog-*").items()}
    client.config_set("slowlog-max-len", 1_000_000)
    client.slowlog_reset()
    before = origin_stats(port)["requests"]
    client.config_set("slowlog-log-slower-than", threshold)
    time.sleep(seconds)
    client.config_set("slowlog-log-slower-than", saved["slowlog-log-slower-than"])
    checks = origin_stats(port)["requests"] - before
    entries = sorted(client.slowlog_get(-1), key=lambda entry: int(entry["id"]))
    client.config_set("slowlog-max-len", saved["slowlog-max-len"])
    client.slowlog_reset()
    return tally_slowlog(entries, names), checks


def tally_slowlog(entries: list[dict[str, Any]], names: dict[str, str]) -> dict[str, ScriptCost]:
    costs: dict[str, ScriptCost] = {}
    inside: dict[str, int] = {}  # the commands of the script whose EVALSHA comes next
    for entry in entries:
        words = text(entry["command"]).split(" ")
        name = words[0].lower()
        if text(entry.get("client_address", "")) == "?:0":
            inside[name] = inside.get(name, 0) + 1
            continue
        if text(entry.get("client_name", "")) == CLIENT_NAME:
            inside = {}
            continue
        if name in ("evalsha", "evalsha_ro") and len(words) > 1:
            name = names.get(words[1], f"evalsha {words[1][:8]}")
        cost = costs.setdefault(name, ScriptCost())
        cost.calls += 1
        cost.usec += int(entry["duration"])
        for command, calls in inside.items():
            cost.inside[command] = cost.inside.get(command, 0) + calls
        inside = {}
    return costs


def measure(tree: Tree, args: argparse.Namespace) -> Result:
    result = Result(tree)
    names, result.imported_from = script_names(tree)
    folder = Path(tempfile.mkdtemp(prefix="watcher-bench-redis-cpu-"))
    port = free_port()
    server = RedisServer(binary=shutil.which("redis-server", path="/usr/local/bin:/usr/bin"))
    origin = proc = None
    try:
        origin = start_origin(port, args.resources, folder)
        server.start()
        assert server.process is not None
        GROUPS.add(server.process.pid)
        client = redis.Redis.from_url(server.url, decode_responses=True, client_name=CLIENT_NAME)
        result.redis_version = str(client.info("server")["redis_version"])
        yaml = write_yaml(folder, server.url, port, args)
        proc = start_watcher(tree, yaml, args)
        took = wait_baselines(proc, port, args.resources, folder)
        console.print(f"  {args.resources:,} baselines in {took:.1f} s; warm-up {args.warmup:g} s")
        time.sleep(args.warmup)
        pids = {"redis": server.process.pid, "origin": origin.pid, "watcher": proc.pid}
        for i in range(args.windows):
            before = snapshot(client, port, pids)
            time.sleep(args.seconds)
            if proc.poll() is not None:
                raise watcher_failed(proc, folder)
            result.windows.append(window(before, snapshot(client, port, pids)))
            console.print(f"  window {i + 1}: {describe(result.windows[-1])}")
        if args.sample > 0:
            result.timing = sample_scripts(client, port, args.sample, args.slowlog_us, names)
            result.counting = sample_scripts(client, port, 1.0, 0, names)
        client.close()
    except BenchError as exc:
        result.error = str(exc)
        console.print(f"  [red]{exc}[/]")
    finally:
        if proc is not None:
            console.print(f"  watcher exit code after SIGTERM: {stop_process(proc)}")
        if server.process is not None:
            GROUPS.discard(server.process.pid)
        server.cleanup()
        if origin is not None:
            stop_process(origin)
        shutil.rmtree(folder, ignore_errors=True)
    return result


def describe(w: Window) -> str:
    share = w.not_modified / w.checks if w.checks else 0.0
    return (
        f"{w.rate:,.0f} checks/s (stat:completed {w.completed / w.seconds:,.0f}/s), "
        f"304 {share:.1%}, Redis CPU {w.redis_cpu / w.seconds:.0%} = {w.redis_us:.1f} µs/check, "
        f"watcher {w.per_check(w.watcher_cpu):.0f} µs/check ({w.procs} procs), "
        f"origin {w.per_check(w.origin_cpu):.0f} µs/check"
    )


# -- output ---------------------------------------------------------------------------------

Metric = tuple[str, Callable[[Window], float], str]
METRICS: list[Metric] = [
    ("checks/s (origin)", lambda w: w.rate, "{:,.0f}"),
    ("completed/s (stat:completed)", lambda w: w.completed / w.seconds, "{:,.0f}"),
    ("304 share", lambda w: w.not_modified / w.checks if w.checks else 0.0, "{:.1%}"),
    ("Redis CPU (share of one core)", lambda w: w.redis_cpu / w.seconds, "{:.1%}"),
    ("Redis CPU µs/check", lambda w: w.redis_us, "{:.1f}"),
    ("watcher CPU µs/check", lambda w: w.per_check(w.watcher_cpu), "{:.0f}"),
    ("watcher CPU (share of one core)", lambda w: w.watcher_cpu / w.seconds, "{:.0%}"),
    ("origin CPU µs/check", lambda w: w.per_check(w.origin_cpu), "{:.0f}"),
    ("Redis bytes in/check", lambda w: w.net[0] / w.checks if w.checks else 0.0, "{:,.0f}"),
    ("Redis bytes out/check", lambda w: w.net[1] / w.checks if w.checks else 0.0, "{:,.0f}"),
]


def print_windows(result: Result) -> None:
    header = ["window", *(name for name, _, _ in METRICS)]
    body = [
        [str(i + 1), *(fmt.format(value(w)) for _, value, fmt in METRICS)]
        for i, w in enumerate(result.windows)
    ]
    title = f"{result.tree.label}: every window ({result.windows[0].seconds:.0f} s each)"
    console.print(rich_table(title, header, body))


def print_summary(results: Sequence[Result]) -> None:
    header = ["metric"]
    for r in results:
        header += [f"{r.tree.label}: median", "range"]
    if len(results) == 2:
        header.append(f"{results[1].tree.label} / {results[0].tree.label}")
    body = []
    for name, value, fmt in METRICS:
        row = [name]
        for r in results:
            low, high = r.spread(value)
            row += [fmt.format(r.median(value)), f"{fmt.format(low)}-{fmt.format(high)}"]
        if len(results) == 2:
            base = results[0].median(value)
            row.append(f"{results[1].median(value) / base:.2f}x" if base else "")
        body.append(row)
    console.print(rich_table(f"Medians over {len(results[0].windows)} windows", header, body))


def command_totals(result: Result) -> tuple[dict[str, tuple[int, int]], int]:
    totals: dict[str, tuple[int, int]] = {}
    for w in result.windows:
        for name, (calls, usec) in w.commands.items():
            old = totals.get(name, (0, 0))
            totals[name] = (old[0] + calls, old[1] + usec)
    return totals, sum(w.checks for w in result.windows)


def print_commands(results: Sequence[Result]) -> None:
    """INFO commandstats over every window: the top commands by time, per check."""
    tables = [command_totals(r) for r in results]
    ranked = sorted(
        {name for totals, _ in tables for name in totals},
        key=lambda name: -max(totals.get(name, (0, 0))[1] / checks for totals, checks in tables),
    )[:TOP]
    header = ["command"]
    for r in results:
        header += [f"{r.tree.label}: calls/check", "µs/call", "µs/check"]
    body = []
    for name in ranked:
        row = [name]
        for totals, checks in tables:
            calls, usec = totals.get(name, (0, 0))
            per_call = f"{usec / calls:.1f}" if calls else ""
            row += [f"{calls / checks:.3f}", per_call, f"{usec / checks:.2f}"]
        body.append(row)
    title = (
        "INFO commandstats over the windows, top by time (calls made by scripts count here "
        "too, and their time is inside evalsha's)"
    )
    console.print(rich_table(title, header, body))


def print_sample(result: Result, threshold: int) -> None:
    """The SLOWLOG samples: each top-level command, each script on its own, with the
    commands a script's call runs."""
    (timed, n), (counted, m) = result.timing, result.counting
    if not (n and m):
        return
    total = sum(c.usec for c in timed.values())
    header = ["command or script", "calls/check", "checks/call", f"calls ≥{threshold} µs/check"]
    header += ["µs/call", "µs/check", "share", "commands run inside, per check"]
    body = []
    for name in sorted({*timed, *counted}, key=lambda k: -timed.get(k, ScriptCost()).usec)[:TOP]:
        cost, count = timed.get(name, ScriptCost()), counted.get(name, ScriptCost())
        ran = sorted(count.inside.items(), key=lambda item: -item[1])
        body.append(
            [
                name,
                f"{count.calls / m:.4f}",
                f"{m / count.calls:,.1f}" if count.calls else "",
                f"{cost.calls / n:.4f}",
                f"{cost.usec / cost.calls:,.1f}" if cost.calls else "",
                f"{cost.usec / n:.2f}",
                f"{cost.usec / total:.0%}" if total else "",
                ", ".join(f"{c} {k / m:.2f}" for c, k in ran[:8]),
            ]
        )
    title = (
        f"{result.tree.label}: per script (SLOWLOG: time from calls ≥{threshold} µs over "
        f"{n:,} checks; calls and commands inside from every call over {m:,} checks)"
    )
    console.print(rich_table(title, header, body, left=(0, 7)))
    totals, checks = command_totals(result)
    evalsha = totals.get("evalsha", (0, 0))[1] / checks
    console.print(
        f"  {total / n:.1f} µs/check in the sampled calls (scripts: "
        f"{sum(c.usec for k, c in timed.items() if k in SCRIPT_NAMES or ' ' in k) / n:.1f}); "
        f"in the windows: evalsha {evalsha:.1f} µs/check (commandstats), Redis CPU "
        f"{result.median(lambda w: w.redis_us):.1f} µs/check (the rest of the CPU: reading "
        "requests, writing replies, the event loop, serverCron). commandstats and SLOWLOG "
        "time is wall-clock: on a busy machine a long script is preempted mid-call, so it can "
        "exceed the process's CPU; read it as shares"
    )


def print_head(args: argparse.Namespace, redis_version: str) -> None:
    machine = machine_info(redis_version)
    versions = package_versions("redis", "hiredis", "uvicorn", "httptools")
    console.print(
        f"machine: nproc {machine['nproc']}, {machine['cpu']}, {machine['os']}; python "
        f"{machine['python']}, redis-server {machine['redis']} (private, no persistence, "
        f"127.0.0.1); {', '.join(f'{k} {v}' for k, v in versions.items())}"
    )
    console.print(f"load average (1 min): {load_average():.2f}")
    console.print(f"command: {command_line()}")
    processes = f"--processes {args.processes}" if args.processes else "default --processes"
    console.print(
        f"{args.resources:,} resources every {args.every} on one local origin (304 to a matching "
        f"If-None-Match); `hosts: {{default: {{concurrency: 0}}}}` so per-host budgets do not "
        f"hold the single origin back; `watcher run -q`, {processes}; warm-up {args.warmup:g} s "
        f"after the baselines, then {args.windows} windows of {args.seconds:g} s"
    )


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = arg_parser(__doc__)
    parser.add_argument("--resources", type=int, default=6000, help="resources (%(default)s)")
    parser.add_argument("--every", default="1s", help="their interval (%(default)s)")
    parser.add_argument("--windows", type=int, default=3, help="windows (%(default)s)")
    parser.add_argument("--seconds", type=float, default=15.0, help="a window (%(default)s s)")
    parser.add_argument("--warmup", type=float, default=10.0, help="warm-up (%(default)s s)")
    parser.add_argument(
        "--processes", type=int, default=None, help="passed to `watcher run` (default: not)"
    )
    parser.add_argument(
        "--sample", type=float, default=3.0, help="SLOWLOG sample, 0: none (%(default)s s)"
    )
    parser.add_argument(
        "--slowlog-us", type=int, default=25, help="SLOWLOG threshold (%(default)s µs)"
    )
    parser.add_argument("--rev", help="also measure this git revision (a temporary worktree)")
    args = parser.parse_args(argv)
    if args.resources < 1 or args.windows < 1 or args.seconds <= 0:
        parser.error("--resources, --windows and --seconds must be positive")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.monotonic()
    results = []
    with contextlib.ExitStack() as stack:
        trees = [main_tree()]
        if args.rev:
            trees.append(stack.enter_context(rev_tree(args.rev)))
        for tree in trees:
            console.print(f"[bold]{tree.label}[/] ({tree.root})")
            results.append(measure(tree, args))
    ok = [r for r in results if r.windows and r.error is None]
    print_head(args, ok[0].redis_version if ok else "?")
    for r in results:
        console.print(f"{r.tree.label}: imports watcher from {r.imported_from}")
        if r.error:
            console.print(f"[red]{r.tree.label}: {r.error}[/]")
    if not ok:
        return 1
    for r in ok:
        print_windows(r)
    print_summary(ok)
    print_commands(ok)
    for r in ok:
        print_sample(r, args.slowlog_us)
    console.print(f"({(time.monotonic() - started) / 60:.1f} min in all)")
    return 0 if len(ok) == len(results) else 1


if __name__ == "__main__":
    sys.exit(main())
