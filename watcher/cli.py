"""The `watcher` command: sync, run, worker, status, history, check."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import re
import signal
import socket
import sys
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from redis.exceptions import AuthenticationError
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from watcher import __version__
from watcher.backoff import backoff
from watcher.connection import QueueSettings, read_queue_settings
from watcher.keeper import SyncWatch
from watcher.logs import setup_logging
from watcher.outbox import DeliveryState
from watcher.queue import UNAVAILABLE, Queue
from watcher.redis_server import RedisServer, RedisServerError
from watcher.registry import PluginError, add_plugin_dir, load_check, plugin_dirs
from watcher.summary import summarize
from watcher.supervisor import Supervisor, WorkerProcess
from watcher.yaml_source import ConfigError

if TYPE_CHECKING:  # the read commands (status, history) start faster without them
    from watcher.config import Config, NotifierConfig
    from watcher.metrics import Metrics
    from watcher.runner import CheckRunner

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2
EMBEDDED_DIR = Path(".watcher")
REDIS_CONNECT_TIMEOUT = 5.0
"""Seconds one attempt to reach Redis may take while waiting for it."""
log = logging.getLogger("watcher")
Command = Callable[[argparse.Namespace], Coroutine[Any, Any, int]]
console = Console(soft_wrap=True)  # a message is one line, however long (tables fit the width)
errors = Console(stderr=True, soft_wrap=True)  # an error is one line, however long


class CommandError(Exception):
    """A runtime failure with a message for the user (exit 1)."""


# -- configuration and Redis --------------------------------------------------------------


def read_config(path: str) -> Config:
    """Load and validate the YAML, including that every check can be loaded."""
    from watcher.config import load_config

    # Dotted paths import from beside the YAML, also while it loads (plugins' options).
    add_plugin_dir(os.path.dirname(os.path.abspath(path)))
    config = load_config(path)
    problems = []
    failed: dict[str, PluginError | None] = {}
    for index, resource in enumerate(config.resources):
        if resource.check not in failed:
            try:
                load_check(resource.check, resource=resource.id)
                failed[resource.check] = None
            except PluginError as exc:
                failed[resource.check] = exc
        if failed[resource.check] is not None:
            message = (
                f"check {resource.check!r} (resource {resource.id!r}): "
                + str(failed[resource.check]).split(": ", 1)[-1]
            )
            problems += config.error(("resources", index, "check"), message).errors
    if problems:
        raise ConfigError(problems, config.source)
    return config


def configured_redis(args: argparse.Namespace, config: QueueSettings | Config | None) -> str | None:
    return args.redis or os.environ.get("WATCHER_REDIS_URL") or (config.redis if config else None)


@contextlib.asynccontextmanager
async def open_queue(
    args: argparse.Namespace,
    config: QueueSettings | Config | None,
    *,
    announce: bool = False,
    existing_data_only: bool = False,
) -> AsyncIterator[Queue]:
    """The queue on the configured Redis, else on the embedded one: started if needed. With
    `existing_data_only` (status, history, queues, prune), an embedded Redis that never kept
    data is not started for nothing: the command says so."""
    url = configured_redis(args, config)
    server = None
    if url is None and existing_data_only and not (EMBEDDED_DIR / "redis").is_dir():
        url = running_embedded_redis()  # nothing kept here: read only a running one
        if url is None:
            where = f"`redis:` in {args.config}" if Path(args.config).exists() else args.config
            raise CommandError(
                f"no Redis to read: no {where}, no WATCHER_REDIS_URL or --redis, and no "
                f"embedded Redis running in {EMBEDDED_DIR}/ (`watcher run` starts one)"
            )
    if url is None:
        url, server = embedded_redis(announce)
    try:
        name = args.queue or (config.queue if config else "watcher")
        limit = config.history_limit if config else 10_000
        queue = await Queue.connect(url, name, changes_max=limit)
    except Exception as exc:
        if server:
            server.stop()
        raise CommandError(f"cannot reach Redis at {_safe_url(url)}: {exc}") from None
    try:
        yield queue
    finally:
        await queue.close()
        if server:
            server.stop()


async def wait_for_redis(args: argparse.Namespace, config: Config | None) -> bool:
    """Wait, with backoff, until the configured Redis answers (a worker started beside its
    Redis must not lose the race), unless --no-wait; False when SIGTERM came meanwhile.
    The embedded Redis is started, not waited for; a wrong password is not waited out."""
    url = configured_redis(args, config)
    if url is None or args.no_wait:
        return True
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    started = time.monotonic()
    attempt = 0
    try:
        while True:
            try:
                probe = await asyncio.wait_for(Queue.connect(url), REDIS_CONNECT_TIMEOUT)
            except AuthenticationError:
                return True  # open_queue reports it
            except UNAVAILABLE as exc:
                if attempt == 0:
                    log.warning("waiting for Redis at %s (%s); retrying", _safe_url(url), _why(exc))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), backoff(attempt, 0.2, 5.0))
                if stop.is_set():
                    return False
                attempt += 1
                continue
            except Exception:
                return True  # not a Redis that is still starting: open_queue reports it
            await probe.close()
            if attempt:
                waited = time.monotonic() - started
                log.info("Redis at %s is up after %.1fs", _safe_url(url), waited)
            return True
    finally:
        loop.remove_signal_handler(signal.SIGTERM)


def _why(exc: BaseException) -> str:
    """Why a connection failed, in a few words: 'connection refused'."""
    text = str(exc) or ("timed out" if isinstance(exc, TimeoutError) else type(exc).__name__)
    if found := re.match(r"Error (-?\d+) connecting to \S+\. (.*?)\.?$", text):
        number, detail = int(found[1]), found[2]
        text = os.strerror(number) if number > 0 else detail
    return text[:1].lower() + text[1:]


def embedded_address() -> str | None:
    """The address of this directory's embedded Redis: its port is kept in .watcher/ across
    restarts, so a worker in another terminal finds it again (None: never started here)."""
    try:
        port = int((EMBEDDED_DIR / "redis.port").read_text())
    except (OSError, ValueError):
        return None
    return f"redis://127.0.0.1:{port}/0"


def running_embedded_redis() -> str | None:
    """The URL of the embedded Redis another watcher process runs here, if it answers."""
    url = embedded_address()
    if url is None:
        return None
    import redis

    try:
        redis.Redis.from_url(url, socket_connect_timeout=0.5).ping()
    except Exception:
        return None
    return url


def embedded_redis(announce: bool) -> tuple[str, RedisServer | None]:
    """Reuse the embedded Redis another watcher process started here, or start it: on the
    port it had before when that is free."""
    url = running_embedded_redis()
    if url is not None:
        if announce:
            console.print(f"[dim]using the embedded Redis at {url} (data in {EMBEDDED_DIR}/)")
        return url, None
    before = embedded_address()
    port = int(before.rsplit(":", 1)[1].split("/")[0]) if before else None
    moved = port is not None and not port_is_free(port)
    try:
        server = RedisServer(EMBEDDED_DIR / "redis", port=None if moved else port, persist=True)
        server.start()
    except RedisServerError as exc:
        raise CommandError(str(exc)) from None
    (EMBEDDED_DIR / "redis.port").write_text(f"{server.port}\n")
    if moved:
        log.warning(
            "port %s of the embedded Redis is taken; it is on %s now: workers attached to the "
            "old port must be restarted",
            port,
            server.port,
        )
    if announce:
        console.print(
            f"[bold]watcher {__version__}[/] started an embedded Redis at {server.url} "
            f"(data kept in {EMBEDDED_DIR}/redis; WATCHER_REDIS_URL or `redis:` picks your own)"
        )
    return server.url, server


def port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as redis-server binds
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _safe_url(url: str) -> str:
    """A Redis URL without its password."""
    if "@" in url:
        scheme, rest = url.split("://", 1)
        return f"{scheme}://***@{rest.split('@', 1)[1]}"
    return url


# -- sync ---------------------------------------------------------------------------------


async def do_sync(
    queue: Queue, config: Config, *, dry_run: bool, quiet: bool = False, adopt: bool = False
) -> int:
    from watcher.bulk import collector_paused

    with collector_paused():
        return await _sync(queue, config, dry_run=dry_run, quiet=quiet, adopt=adopt)


async def _sync(queue: Queue, config: Config, *, dry_run: bool, quiet: bool, adopt: bool) -> int:
    from watcher.sync import apply_plan, mark_synced, plan_sync

    plan = await plan_sync(queue, config, adopt=adopt)
    if not quiet or not plan.empty:
        print_plan(plan, config, dry_run)
    if not quiet:
        await tell_orphaned_queues(queue)
    if dry_run:
        return EXIT_OK
    if plan.empty:
        await mark_synced(queue, config)
        return EXIT_OK
    total = len([s for s in plan.steps if s.action != "conflict"])
    if total > 2000:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
        )

        with Progress(
            TextColumn("syncing"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=console,
            transient=True,
        ) as progress:
            task = progress.add_task("sync", total=total)
            await apply_plan(queue, plan, lambda n: progress.advance(task, n))
    else:
        await apply_plan(queue, plan)
    await mark_synced(queue, config)
    return EXIT_OK


def print_plan(plan: Any, config: Config, dry_run: bool) -> None:
    marks = {
        "create": ("+", "green"),
        "update": ("~", "yellow"),
        "remove": ("-", "red"),
        "conflict": ("!", "magenta"),
    }
    shown = plan.steps[:200]
    if shown:
        width = max(len(step.id) for step in shown)
        for step in shown:  # a line each, unpadded: the plan reads the same in a pipe
            mark, style = marks[step.action]
            line = f" {step.id.ljust(width)}  {step.describe()}"
            console.print(Text.assemble((mark, style), line), highlight=False)
        if len(plan.steps) > len(shown):
            console.print(f"[dim]… and {len(plan.steps) - len(shown)} more")
    for host, old, new in plan.budget_changes:
        line = f" hosts.{host}  {old} → {new}"
        console.print(Text.assemble(("~", "yellow"), line), highlight=False)
    counts = {a: len(plan.of(a)) for a in ("create", "update", "remove", "conflict")}
    summary = (
        f"{counts['create']} to create, {counts['update']} to update, "
        f"{counts['remove']} to remove, {plan.unchanged} unchanged"
    )
    if counts["conflict"]:
        summary += f", {counts['conflict']} declared by another config (left alone)"
    if plan.empty:
        console.print(f"[green]{config.source}: nothing to do[/] ({summary})")
    else:
        verb = "would apply" if dry_run else "applied"
        console.print(f"{config.source}: {verb}: {summary}")


async def tell_orphaned_queues(queue: Queue) -> None:
    """Say which other queues of this Redis no config owns any more (a renamed file leaves
    its queue behind), with the fix."""
    from watcher.inventory import survey

    for other in await survey(queue):
        if other.name != queue.name and other.orphaned and other.resources:
            log.warning(
                "queue %r holds %d resource(s) of %s, which %s: if this config is that file "
                "renamed, add `queue: %s` to it to keep their state (then `watcher sync "
                "--adopt`); `watcher prune` removes them",
                other.name,
                other.resources,
                other.source,
                other.orphaned,
                other.name,
            )


# -- commands -----------------------------------------------------------------------------


async def cmd_sync(args: argparse.Namespace) -> int:
    config = read_config(args.config)
    async with open_queue(args, config) as queue:
        return await do_sync(queue, config, dry_run=args.dry_run, adopt=args.adopt)


async def cmd_run(args: argparse.Namespace) -> int:

    config = read_config(args.config)
    async with serving_metrics(args, config) as metrics:
        return await _run(args, config, metrics)


async def _run(args: argparse.Namespace, config: Config, metrics: Metrics | None) -> int:
    if not await wait_for_redis(args, config):
        return EXIT_OK
    async with open_queue(args, config, announce=True) as queue:
        if metrics:
            metrics.queue = queue
        await do_sync(queue, config, dry_run=False, adopt=args.adopt)
        console.print(
            f"watching {len(config.resources)} resource(s) from {config.source} (queue "
            f"{queue.name!r} at {_safe_url(queue.url or '')}) with {_workers(args)}; Ctrl-C stops"
        )

        async def sync_again() -> None:
            """Redis lost the queue's data: sync the YAML again (the keeper calls this)."""
            try:
                current = await off_the_loop(lambda: read_config(args.config))
            except (ConfigError, OSError):
                log.error("%s cannot be loaded now; syncing the one read at start", args.config)
                current = config
            await do_sync(queue, current, dry_run=False, quiet=True)

        if args.processes > 1:
            supervisor = Supervisor(worker_process(args, queue, config), args.processes)
            if metrics:
                metrics.runs = supervisor.total

            async def restart_workers(fresh: Config) -> None:
                if notifier_definitions(fresh) != supervisor.options.notifiers:
                    log.info("notifiers changed; restarting the worker processes one by one")
                    await supervisor.restart_all(worker_process(args, queue, fresh))

            reload = asyncio.create_task(watch_config(args, queue, restart_workers))
            try:
                await supervise(supervisor, SyncWatch(queue, resync=sync_again), args)
            finally:
                reload.cancel()
        else:
            runners: list[CheckRunner] = []

            async def swap_notifiers(fresh: Config) -> None:
                for runner in runners:
                    runner.use_notifiers(notifier_definitions(fresh))

            reload = asyncio.create_task(watch_config(args, queue, swap_notifiers))
            try:
                await serve_here(
                    args,
                    queue,
                    config,
                    worker={"resync": sync_again},
                    started=runners.append,
                    metrics=metrics,
                )
            finally:
                reload.cancel()
    console.print("stopped")
    return EXIT_OK


def _workers(args: argparse.Namespace) -> str:
    checks = f"{args.concurrency} concurrent checks"
    return checks if args.processes == 1 else f"{args.processes} processes of {checks} each"


def worker_process(args: argparse.Namespace, queue: Queue, config: Config | None) -> WorkerProcess:
    """What each worker process of a supervisor runs (it reads no YAML)."""
    assert queue.url is not None, "the queue was opened from a URL"
    return WorkerProcess(
        redis_url=queue.url,
        queue=queue.name,
        changes_max=queue.changes_max,
        notifiers=notifier_definitions(config),
        concurrency=args.concurrency,
        transport=args.transport,
        verbose=args.verbose,
        debug=args.debug,
        worker={"watch_sync": False},  # the supervisor watches the sync marker for them all
        plugin_dirs=plugin_dirs(),
        per_resource=args.metrics_per_resource,
    )


async def serve_here(
    args: argparse.Namespace,
    queue: Queue,
    config: Config | None,
    *,
    worker: dict[str, Any],
    started: Callable[[CheckRunner], None] | None = None,
    metrics: Metrics | None = None,
) -> None:
    """Check workers in this process (`--processes 1`) until SIGTERM/SIGINT; with
    `metrics`, what they count is added to its runs every second."""
    from watcher.runner import serve

    await serve(
        queue,
        notifiers=notifier_definitions(config),
        concurrency=args.concurrency,
        transport=args.transport,
        install_signal_handlers=True,
        started=started,
        worker=worker,
        summary_every=summary_every(args),
        report=None if metrics is None else metrics.runs.add,
        per_resource=args.metrics_per_resource,
    )


@contextlib.asynccontextmanager
async def serving_metrics(
    args: argparse.Namespace, config: Config | None
) -> AsyncIterator[Metrics | None]:
    """/metrics on `--metrics HOST:PORT` (or the YAML's `metrics: {listen}`) while the command
    runs (None without it). It listens at once: a port in use is a usage error before any
    work starts."""
    if args.metrics is None and config is not None and config.metrics is not None:
        args.metrics = _listen_address(config.metrics.listen)
        args.metrics_per_resource = args.metrics_per_resource or config.metrics.per_resource
    if args.metrics is None:
        if args.metrics_per_resource:
            raise UsageError("--metrics-per-resource needs --metrics HOST:PORT")
        yield None
        return
    from watcher.metrics import Metrics, MetricsServer

    metrics = Metrics(per_resource=args.metrics_per_resource)
    server = MetricsServer(metrics)
    host, port = args.metrics
    where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    try:
        await server.start(host, port)
    except OSError as exc:
        why = escape(_os_why(exc))
        raise UsageError(f"--metrics {escape(where)}: cannot listen there: {why}") from None
    console.print(f"metrics at http://{escape(where)}/metrics")
    try:
        yield metrics
    finally:
        await server.close()


def _os_why(exc: OSError) -> str:
    """'address already in use', rather than the errno and the address tuple."""
    errno = exc.errno or 0  # negative: a host name that does not resolve (gaierror)
    text = os.strerror(errno) if errno > 0 else exc.strerror or str(exc)
    return text[:1].lower() + text[1:]


def summary_every(args: argparse.Namespace) -> float:
    return 0.0 if args.quiet else max(0.0, args.summary)


async def supervise(supervisor: Supervisor, watch: SyncWatch, args: argparse.Namespace) -> None:
    """Run the supervisor's worker processes until SIGTERM/SIGINT; meanwhile watch the
    queue's sync marker, and sum up what they all did, once for all of them."""
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, supervisor.stop)

    async def look_every_second() -> None:
        while True:
            with contextlib.suppress(*UNAVAILABLE):  # the workers say the outage
                await watch.look()
            await asyncio.sleep(1.0)

    tasks = [asyncio.create_task(look_every_second())]
    if every := summary_every(args):
        tasks.append(asyncio.create_task(summarize(watch.queue, supervisor.tally.take, every)))
    try:
        await supervisor.run()
    finally:
        for task in tasks:
            task.cancel()
        watch.stop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)


def notifier_definitions(config: Config | None) -> dict[str, NotifierConfig]:
    return dict(config.notifiers) if config else {}


_T = TypeVar("_T")


async def off_the_loop(work: Callable[[], _T]) -> _T:
    """`work()` in a daemon thread, so that the checks go on meanwhile. Not
    `asyncio.to_thread`: its pool is joined at exit, so a SIGTERM would wait for the work."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[_T] = loop.create_future()

    def succeed(result: _T) -> None:
        if not done.done():
            done.set_result(result)

    def fail(error: Exception) -> None:
        if not done.done():
            done.set_exception(error)

    def run() -> None:
        try:
            result = work()
        except Exception as exc:
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits
                loop.call_soon_threadsafe(fail, exc)
        else:
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(succeed, result)

    threading.Thread(target=run, name="watcher-reload", daemon=True).start()
    return await done


async def watch_config(
    args: argparse.Namespace, queue: Queue, reloaded: Callable[[Config], Awaitable[None]]
) -> None:
    """When the YAML changes, hand the new config to `reloaded` (notifiers), then re-sync;
    a bad edit is reported and the running config kept."""
    path = Path(args.config)
    seen = path.stat().st_mtime_ns
    while True:
        await asyncio.sleep(1.0)
        try:
            mtime = path.stat().st_mtime_ns
        except OSError:
            continue
        if mtime == seen:
            continue
        seen = mtime
        try:
            fresh = await off_the_loop(lambda: read_config(args.config))
        except ConfigError as exc:
            log.error(
                "%s changed but is invalid; keeping the running configuration:\n%s",
                args.config,
                exc,
            )
            continue
        log.info("%s changed; syncing", args.config)
        try:
            # Notifiers first: a resource synced to use a new notifier must find every
            # worker process knowing it already.
            await reloaded(fresh)
            await do_sync(queue, fresh, dry_run=False, quiet=True)
        except Exception as exc:  # Redis away, say: the next edit (or restart) tries again
            log.error("syncing %s failed: %s", args.config, exc)


async def cmd_worker(args: argparse.Namespace) -> int:

    config = _optional_config(args.config)
    if configured_redis(args, config) is None:
        args.redis = embedded_address()  # waited for, reconnected to: its port is kept
        if args.redis is None:
            raise CommandError(
                "no Redis configured: workers on other machines need a shared Redis; "
                "set WATCHER_REDIS_URL, --redis, or `redis:` in the YAML (or start "
                "`watcher run` here first: workers here then use its embedded Redis)"
            )
    async with serving_metrics(args, config) as metrics:
        return await _work(args, config, metrics)


async def _work(args: argparse.Namespace, config: Config | None, metrics: Metrics | None) -> int:
    if not await wait_for_redis(args, config):
        return EXIT_OK
    async with open_queue(args, config) as queue:
        if metrics:
            metrics.queue = queue
        console.print(
            f"worker on queue {queue.name!r} at {_safe_url(queue.url or '')}, {_workers(args)}"
        )
        if args.processes > 1:
            supervisor = Supervisor(worker_process(args, queue, config), args.processes)
            if metrics:
                metrics.runs = supervisor.total
            await supervise(supervisor, SyncWatch(queue, expect_synced=True), args)
            return EXIT_OK
        # a queue no sync wrote checks nothing: say so
        await serve_here(args, queue, config, worker={"expect_synced": True}, metrics=metrics)
    return EXIT_OK


def _optional_config(path: str) -> Config | None:
    if not Path(path).exists():
        return None
    return read_config(path)


async def cmd_status(args: argparse.Namespace) -> int:
    from watcher.status import collect, live, render, write_json

    async with open_queue(args, _queue_settings(args.config), existing_data_only=True) as queue:
        if args.live:
            with contextlib.suppress(asyncio.CancelledError, KeyboardInterrupt):
                await live(queue, console, args.interval, args.limit)
            return EXIT_OK
        if args.json:
            await write_json(queue, sys.stdout)
            return EXIT_OK
        console.print(render(await collect(queue, args.limit), args.limit))
    return EXIT_OK


def _queue_settings(path: str) -> QueueSettings | Config | None:
    """What a read command needs of the YAML: which queue on which Redis."""
    if not Path(path).exists():
        return None
    return read_queue_settings(path)


async def cmd_queues(args: argparse.Namespace) -> int:
    from watcher.inventory import survey

    async with open_queue(args, _queue_settings(args.config), existing_data_only=True) as queue:
        found = await survey(queue)
    if not found:
        console.print("no queues in this Redis")
        return EXIT_OK
    table = Table(box=None, header_style="bold")
    for column in ("queue", "resources", "workers", "last synced from", "synced"):
        table.add_column(column, justify="right" if column in ("resources", "workers") else "left")
    for summary in found:
        source = summary.source or "(never synced: made through the API)"
        if summary.orphaned:
            source += f" [yellow](which {summary.orphaned})[/]"
        synced = (
            time.strftime("%Y-%m-%d %H:%M", time.localtime(summary.synced_ms / 1000))
            if summary.synced_ms
            else ""
        )
        table.add_row(summary.name, f"{summary.resources:,}", str(summary.workers), source, synced)
    console.print(table)
    if any(summary.orphaned for summary in found):
        console.print("`watcher prune --dry-run` shows what no config owns; `watcher prune` prunes")
    return EXIT_OK


async def cmd_prune(args: argparse.Namespace) -> int:
    from watcher.inventory import find_orphans, prune

    async with open_queue(args, _queue_settings(args.config), existing_data_only=True) as queue:
        found = await find_orphans(queue)
        if not found:
            console.print("nothing to prune: every resource in this Redis has its config")
            return EXIT_OK
        removed = 0
        for orphans in found:
            owners = "; ".join(f"{path}, which {why}" for path, why in orphans.owners.items())
            what = f"{len(orphans.ids):,} resource(s)"
            if orphans.whole_queue:
                what += " and its history (nothing else is left in it)"
            if orphans.workers:
                console.print(
                    f"[yellow]queue {orphans.queue!r}: {orphans.workers} worker(s) alive on it;"
                    f" left alone (stop them first)[/]: {what} of {owners}",
                    highlight=False,
                )
                continue
            verb = "would remove" if args.dry_run else "removing"
            console.print(f"queue {orphans.queue!r}: {verb} {what} of {owners}", highlight=False)
            if not args.dry_run:
                removed += await prune(queue, orphans)
    if not args.dry_run:
        console.print(f"removed {removed:,} resource(s)")
    return EXIT_OK


async def cmd_history(args: argparse.Namespace) -> int:
    async with open_queue(args, _queue_settings(args.config), existing_data_only=True) as queue:
        entries = await queue.change_entries(args.id, args.limit)
        if args.id and not entries and await queue.get_scheduler(args.id) is None:
            raise UsageError(f"no resource {args.id!r} in queue {queue.name!r}")
        states = await queue.outbox.states([f"{c.id}/{n}" for c, names in entries for n in names])
    if args.json:
        shown = [
            {**c.to_dict(), "deliveries": {n: asdict(states[f"{c.id}/{n}"]) for n in names}}
            for c, names in entries
        ]
        print(json.dumps(shown, indent=2))
        return EXIT_OK
    if not entries:
        console.print("no changes recorded" + (f" for {args.id}" if args.id else ""))
        return EXIT_OK
    for change, names in entries:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(change.time))
        code = f" ({change.status_code})" if change.status_code else ""
        console.print(
            f"[dim]{when}[/] [bold]{escape(change.resource)}[/] {escape(change.summary)}{code}",
            highlight=False,
        )
        if names:
            said = [_delivery_words(states[f"{change.id}/{name}"]) for name in names]
            console.print(Text("  → " + " · ".join(said), style="dim"))
        if change.details:
            from rich.syntax import Syntax

            console.print(Syntax(change.details, "diff", theme="ansi_dark"))
    return EXIT_OK


def _delivery_words(state: DeliveryState) -> str:
    """ "team sent", "ops pending (3 attempts: connection refused)", "ops failed (...)"."""
    words = f"{state.notifier} {state.state}"
    if state.state in ("pending", "sending", "failed") and state.attempts:
        tries = f"{state.attempts} attempt{'s' * (state.attempts > 1)}"
        words += f" ({tries}: {state.error})" if state.error else f" ({tries})"
    return words


async def cmd_check(args: argparse.Namespace) -> int:
    from watcher.oneshot import check_once

    if bool(args.url) == bool(args.id):
        raise UsageError("give a URL or --id ID (one of them)")
    if args.id:
        config = read_config(args.config)
        found = [r for r in config.resources if r.id == args.id]
        if not found:
            raise UsageError(f"no resource {args.id!r} in {config.source}")
        resource = found[0]
        if not args.compare:
            return await check_once(console, resource.template(), resource.check, args.transport)
        async with open_queue(args, config, existing_data_only=True) as queue:
            stored = await queue.get_scheduler(resource.id)
        if stored is None:
            raise CommandError(
                f"resource {resource.id!r} is not in queue {queue.name!r} yet (`watcher sync`)"
            )
        return await check_once(
            console, resource.template(), resource.check, args.transport, compare_with=stored.state
        )
    if args.compare:
        raise UsageError("--compare needs --id ID: a URL has no stored state")
    template = {
        "id": "cli",
        "url": args.url,
        "method": "GET",
        "headers": {},
        "timeout": 10.0,
        "options": {},
    }
    load_check(args.check)
    return await check_once(console, template, args.check, args.transport)


class UsageError(Exception):
    """Bad usage (exit 2)."""


# -- argument parsing ---------------------------------------------------------------------

EXAMPLES = {
    "run": "examples:\n  watcher run\n  watcher run -c prod.yaml --concurrency 200 -q",
    "sync": "examples:\n  watcher sync --dry-run\n  WATCHER_REDIS_URL=redis://db:6379 watcher sync",
    "worker": "examples:\n  WATCHER_REDIS_URL=redis://db:6379 watcher worker --concurrency 100",
    "status": "examples:\n  watcher status\n  watcher status --live\n  watcher status --json | jq",
    "history": "examples:\n  watcher history\n  watcher history docs --limit 5 --json",
    "queues": "examples:\n  watcher queues\n  watcher queues --redis redis://db:6379",
    "prune": "examples:\n  watcher prune --dry-run\n  watcher prune",
    "check": "examples:\n  watcher check https://example.org/\n  watcher check --id docs\n"
    "  watcher check https://example.org/ --check content\n  watcher check --id docs --compare",
}


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(
        prog="watcher",
        description="Watch HTTP resources for changes with Redis job schedulers.",
        epilog="Start with `watcher run` beside a watcher.yaml; `watcher COMMAND --help` for more.",
    )
    top.add_argument("--version", action="version", version=f"watcher {__version__}")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "-c", "--config", default="watcher.yaml", help="YAML file (default: %(default)s)"
    )
    common.add_argument(
        "--redis", type=_redis_url, help="Redis URL (overrides WATCHER_REDIS_URL and the YAML)"
    )
    common.add_argument(
        "--queue", help="queue name (default: the YAML's `queue:`, else named after the file)"
    )
    common.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")
    sub = top.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, help: str, handler: Command) -> argparse.ArgumentParser:
        cmd = sub.add_parser(
            name,
            help=help,
            description=help,
            parents=[common],
            epilog=EXAMPLES[name],
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        cmd.set_defaults(handler=handler)
        return cmd

    run = add("run", "sync the YAML, then run workers until stopped (the main job)", cmd_run)
    worker = add("worker", "run workers only, against a shared Redis (scale out)", cmd_worker)
    for cmd in (run, worker):
        cmd.add_argument(
            "--concurrency", type=int, default=50, help="checks at once per process (default: 50)"
        )
        cmd.add_argument(
            "--processes",
            type=_positive,
            default=os.cpu_count() or 1,
            help="worker processes (default: the number of CPUs, %(default)s here)",
        )
        cmd.add_argument(
            "--transport",
            choices=["aiohttp", "httpx"],
            default="aiohttp",
            help="HTTP transport under the httpx API (default: aiohttp)",
        )
        cmd.add_argument(
            "--no-wait",
            action="store_true",
            help="exit 1 at once if the configured Redis is not up (default: wait for it, "
            "retrying with backoff)",
        )
        output = cmd.add_mutually_exclusive_group()
        output.add_argument(
            "-q", "--quiet", action="store_true", help="changes and failures only, no summary"
        )
        output.add_argument("-v", "--verbose", action="store_true", help="also a line per check")
        cmd.add_argument(
            "--summary",
            type=float,
            default=10.0,
            metavar="SECONDS",
            help="a summary line every SECONDS (default: 10; 0: none)",
        )
        cmd.add_argument(
            "--metrics",
            type=_listen_address,
            metavar="HOST:PORT",
            help="serve Prometheus metrics at http://HOST:PORT/metrics while running, summed "
            "over the worker processes (e.g. 127.0.0.1:9108; docs/metrics.md)",
        )
        cmd.add_argument(
            "--metrics-per-resource",
            action="store_true",
            help="with --metrics: also series per resource (one per resource and outcome: "
            "many, at scale)",
        )
    sync = add("sync", "reconcile the YAML into schedulers and print the plan", cmd_sync)
    sync.add_argument("--dry-run", action="store_true", help="print the plan, change nothing")
    for cmd in (run, sync):
        cmd.add_argument(
            "--adopt",
            action="store_true",
            help="take over this file's resources declared by a config file that is gone "
            "(moved or renamed) or now uses another queue",
        )
    queues = add("queues", "list every queue in the Redis: resources, workers, owner", cmd_queues)
    del queues
    prune = add(
        "prune", "remove the resources no config file owns any more (judged here)", cmd_prune
    )
    prune.add_argument("--dry-run", action="store_true", help="say what would go, change nothing")
    status = add("status", "show every resource: last run, last change, next run", cmd_status)
    status.add_argument("--json", action="store_true", help="machine-readable output")
    status.add_argument("--live", action="store_true", help="refresh in place until Ctrl-C")
    status.add_argument(
        "--limit",
        type=int,
        default=100,
        help="table rows at most, failing first (default: 100; --json has all)",
    )
    status.add_argument("--interval", type=float, default=1.0, help=argparse.SUPPRESS)
    history = add("history", "show the recorded changes, newest first", cmd_history)
    history.add_argument("id", nargs="?", help="only this resource")
    history.add_argument("--limit", type=int, default=20, help="at most N changes (default: 20)")
    history.add_argument("--json", action="store_true", help="machine-readable output")
    check = add("check", "run one check now, in the foreground, without Redis", cmd_check)
    check.add_argument("url", nargs="?", type=_http_url, help="the URL to check")
    check.add_argument("--id", help="a resource of the YAML instead of a URL")
    check.add_argument("--check", default="etag", help="check name (default: etag)")
    check.add_argument(
        "--compare",
        action="store_true",
        help="with --id: one run against the state stored in Redis (writes nothing)",
    )
    check.add_argument(
        "--transport", choices=["aiohttp", "httpx"], default="aiohttp", help=argparse.SUPPRESS
    )
    return top


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    setup_logging(args.debug, verbose=getattr(args, "verbose", False), console=errors)
    handler: Command = args.handler
    try:
        return asyncio.run(handler(args))
    except KeyboardInterrupt:
        return EXIT_OK
    except ConfigError as exc:
        errors.print(Text(str(exc), style="red"))
        return EXIT_USAGE
    except UsageError as exc:
        errors.print(f"[red]error:[/] {exc}")
        return EXIT_USAGE
    except (CommandError, PluginError) as exc:
        errors.print(Text(f"error: {exc}", style="red"))
        return EXIT_FAILURE
    except Exception as exc:
        if args.debug:
            raise
        errors.print(
            Text(f"error: {type(exc).__name__}: {exc} (run with --debug for details)", style="red")
        )
        return EXIT_FAILURE


def _redis_url(text: str) -> str:
    if "://" not in text:
        raise argparse.ArgumentTypeError(f"{text!r} is not a URL: did you mean redis://{text}?")
    return text


def _http_url(text: str) -> str:
    if "://" not in text:
        raise argparse.ArgumentTypeError(f"{text!r} is not a URL: did you mean https://{text}?")
    return text


def _listen_address(text: str) -> tuple[str, int]:
    from watcher.metrics import parse_listen

    try:
        return parse_listen(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


if __name__ == "__main__":
    sys.exit(main())
