"""Worker processes under a supervisor: a child that dies is replaced and its run is run
again; stopping the supervisor stops every child gracefully."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from watcher.jobs import JobInfo, JobState
from watcher.queue import Queue
from watcher.supervisor import Supervisor, WorkerProcess

from .helpers import wait_for
from .origin import Origin

WATCHER = str(Path(sys.executable).parent / "watcher")


async def _active_job(queue: Queue, id: str) -> JobInfo | None:
    info = await queue.get_scheduler(id)
    job = await queue.job(info.active_job) if info and info.active_job else None
    return job if job is not None and job.worker else None


async def _outcome(queue: Queue, id: str) -> str | None:
    info = await queue.get_scheduler(id)
    return (info.report or {}).get("outcome") if info else None


async def test_a_killed_worker_process_is_replaced_and_its_run_is_run_again(
    redis_url: str, queue: Queue
) -> None:
    with Origin(etag='"v1"') as origin:
        data = {"id": "slow", "url": origin.url, "timeout": 30}
        await queue.upsert_scheduler("slow", name="etag", data=data, every=3600, immediately=True)
        origin.set(hang=True)  # the first run stays in flight in one of the children
        options = WorkerProcess(
            redis_url, queue.name, concurrency=5, worker={"lease": 1.0, "grace": 1.0}
        )
        supervisor = Supervisor(options, processes=2)
        task = asyncio.create_task(supervisor.run())
        try:
            job = await wait_for(lambda: _active_job(queue, "slow"), 30, what="a run in flight")
            pid = int((job.worker or "").split(":")[1])
            assert pid in supervisor.pids
            os.kill(pid, signal.SIGKILL)
            await wait_for(
                lambda: supervisor.restarts == 1 and pid not in supervisor.pids,
                15,
                what="the killed child replaced",
            )
            origin.set(hang=False)
            assert await wait_for(lambda: _outcome(queue, "slow"), 30) == "baseline"
            assert len(supervisor.pids) == 2
            rerun = await queue.job(job.id)  # the killed child's run, run again elsewhere
            assert rerun is not None and rerun.state is JobState.DONE and rerun.attempt == 2
            assert rerun.worker and int(rerun.worker.split(":")[1]) != pid
        finally:
            supervisor.stop()
            await asyncio.wait_for(task, 30)
    assert all(not child.process or not child.process.is_alive() for child in supervisor.children)


async def test_stopping_the_supervisor_stops_every_child_within_the_grace_period(
    redis_url: str, queue: Queue
) -> None:
    options = WorkerProcess(redis_url, queue.name, worker={"grace": 1.0})
    supervisor = Supervisor(options, processes=2)
    task = asyncio.create_task(supervisor.run())
    await wait_for(lambda: _workers_alive(queue, 2), 30, what="both children serving")
    started = asyncio.get_running_loop().time()
    supervisor.stop()
    await asyncio.wait_for(task, 30)
    assert asyncio.get_running_loop().time() - started < 1.0 + 5.0
    assert [child.process.exitcode for child in supervisor.children if child.process] == [0, 0]


async def _workers_alive(queue: Queue, n: int) -> bool:
    return len(await queue.workers()) >= n


async def test_watcher_worker_with_processes_stops_every_child_on_sigterm(
    redis_url: str, queue: Queue, tmp_path: Path
) -> None:
    """The console script as a user runs it: one supervisor, two worker processes."""
    environment = {k: v for k, v in os.environ.items() if not k.startswith("WATCHER_")}
    command = [WATCHER, "worker", "--processes", "2", "--redis", redis_url, "--queue", queue.name]
    process = subprocess.Popen(
        command,
        cwd=tmp_path,
        env={**environment, "COLUMNS": "200"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        await wait_for(lambda: _workers_alive(queue, 2), 30, what="two worker processes")
        children = [int(pid) for pid in _children_of(process.pid)]
        assert len(children) == 2
        started = time.monotonic()
        process.send_signal(signal.SIGTERM)
        out, _ = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0, out
    assert time.monotonic() - started < 10.0 + 5.0  # the workers' grace period, and some
    assert "2 processes of 50 concurrent checks each" in out
    assert not [pid for pid in children if Path(f"/proc/{pid}").exists()], out
    assert await queue.workers() == []  # each child took itself off the list


def _children_of(pid: int) -> list[str]:
    """The worker processes `pid` spawned (not multiprocessing's resource tracker)."""
    found = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True)
    return [
        child
        for child in found.stdout.split()
        if b"spawn_main" in Path(f"/proc/{child}/cmdline").read_bytes()
    ]
