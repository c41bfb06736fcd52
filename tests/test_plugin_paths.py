"""Checks by dotted path are imported from the config file's directory, without PYTHONPATH,
by every command that reads the YAML and by the worker processes it starts.

The CLI tests run the `watcher` console script from another working directory than the
config's, against the private test Redis and a local origin.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from watcher import registry, supervisor
from watcher.registry import PluginError, add_plugin_dir, load_check, plugin_dirs
from watcher.supervisor import WorkerProcess

from .helpers import Watcher, wait_for
from .origin import Origin

WATCHER = str(Path(sys.executable).parent / "watcher")

PLUGIN = '''\
"""A check that notes which process ran it, in a file next to itself."""

import os
from pathlib import Path

from watcher.check import CheckContext, CheckResult

RAN = Path(__file__).with_name("ran.txt")


class PidCheck:
    async def __call__(self, ctx: CheckContext) -> CheckResult:
        page = await ctx.fetch()
        with RAN.open("a") as ran:
            ran.write(f"{os.getpid()}\\n")
        return CheckResult(
            changed=False,
            state={"pid": os.getpid()},
            summary=f"plugin ran in pid {os.getpid()}",
            status_code=page.status_code,
            baseline=ctx.first_run,
        )
'''


# -- helpers --------------------------------------------------------------------------------------


def watcher(*args: str, cwd: Path, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if k != "WATCHER_REDIS_URL"}
    environment.update({"COLUMNS": "400", "NO_COLOR": "1"})
    return subprocess.run(
        [WATCHER, *args], cwd=cwd, env=environment, capture_output=True, text=True, timeout=timeout
    )


def project(root: Path, redis_url: str, queue: str, url: str, check: str) -> Path:
    """A config directory with the plugin next to the YAML (as `pidplug.py` and as the package
    `pidpkg.checks`); the YAML's path."""
    directory = root / "project"
    (directory / "pidpkg").mkdir(parents=True)
    (directory / "pidplug.py").write_text(PLUGIN)
    (directory / "pidpkg" / "__init__.py").write_text("")
    (directory / "pidpkg" / "checks.py").write_text(PLUGIN)
    config = directory / "watcher.yaml"
    config.write_text(
        textwrap.dedent(
            f"""\
            redis: {redis_url}
            queue: {queue}
            resources:
              - id: page
                url: {url}
                check: {check}
                every: 300ms
                min_every: 100ms
            """
        )
    )
    return config


@pytest.fixture
def elsewhere(tmp_path: Path) -> Path:
    """The working directory of the commands: not the config's."""
    directory = tmp_path / "elsewhere"
    directory.mkdir()
    return directory


def ran_in(config: Path) -> list[int]:
    """The pids the plugin ran in, as it noted them."""
    ran = config.with_name("ran.txt")
    return [int(line) for line in ran.read_text().split()] if ran.exists() else []


def exited(command: Watcher) -> bool:
    return command.process.poll() is not None


# -- the console script ---------------------------------------------------------------------------


def test_check_id_imports_a_module_next_to_the_config(
    tmp_path: Path, elsewhere: Path, redis_url: str, queue_name: str, origin: Origin
) -> None:
    config = project(tmp_path, redis_url, queue_name, origin.url, "pidplug:PidCheck")
    done = watcher("check", "--id", "page", "-c", str(config), cwd=elsewhere)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "plugin ran in pid" in done.stdout
    assert len(ran_in(config)) == 2  # the baseline run and the second one


def test_sync_dry_run_imports_a_package_next_to_the_config(
    tmp_path: Path, elsewhere: Path, redis_url: str, queue_name: str, origin: Origin
) -> None:
    config = project(tmp_path, redis_url, queue_name, origin.url, "pidpkg.checks:PidCheck")
    relative = os.path.relpath(config, elsewhere)  # `-c ../project/watcher.yaml`
    done = watcher("sync", "--dry-run", "-c", relative, cwd=elsewhere)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "would apply" in done.stdout


def test_a_dotted_path_that_cannot_be_imported_says_where_it_looked(
    tmp_path: Path, elsewhere: Path, redis_url: str, queue_name: str, origin: Origin
) -> None:
    config = project(tmp_path, redis_url, queue_name, origin.url, "pidplugg:PidCheck")
    done = watcher("sync", "--dry-run", "-c", str(config), cwd=elsewhere)
    assert done.returncode == 2, done.stdout + done.stderr
    message = done.stderr
    assert "Traceback" not in message
    lines = [line for line in message.splitlines() if "pidplugg" in line]
    assert len(lines) == 1, message  # one line, at the resource's `check:`
    assert f"{config}:" in lines[0] or "watcher.yaml:" in lines[0]
    assert "cannot import 'pidplugg'" in lines[0]
    assert f"{config.parent} (the config file's directory)" in lines[0]
    assert "PYTHONPATH" in lines[0] and "installed packages" in lines[0]
    assert "entry point in group 'watcher.checks'" in lines[0]


def test_a_dotted_path_into_a_package_that_lacks_the_module_names_the_package(
    tmp_path: Path, elsewhere: Path, redis_url: str, queue_name: str, origin: Origin
) -> None:
    config = project(tmp_path, redis_url, queue_name, origin.url, "pidpkg.nope:PidCheck")
    done = watcher("sync", "--dry-run", "-c", str(config), cwd=elsewhere)
    assert done.returncode == 2, done.stdout + done.stderr
    init = config.parent / "pidpkg" / "__init__.py"
    assert f"no module 'nope' in package 'pidpkg' (from {init})" in done.stderr
    assert "Traceback" not in done.stderr


async def test_run_with_processes_runs_the_plugin_in_the_worker_processes(
    tmp_path: Path, elsewhere: Path, redis_url: str, queue_name: str, origin: Origin
) -> None:
    config = project(tmp_path, redis_url, queue_name, origin.url, "pidplug:PidCheck")
    run = Watcher("run", "--processes", "2", "-c", str(config), cwd=elsewhere)
    try:
        await wait_for(lambda: len(ran_in(config)) >= 3 or exited(run), 30, 0.1, what="runs")
    finally:
        code = run.stop()
    assert code == 0, run.output
    assert run.process.pid not in ran_in(config), "ran in the supervisor, not a worker process"
    assert not run.saying("cannot import"), run.output


async def test_worker_imports_a_module_next_to_its_config(
    tmp_path: Path, elsewhere: Path, redis_url: str, queue_name: str, origin: Origin
) -> None:
    config = project(tmp_path, redis_url, queue_name, origin.url, "pidplug:PidCheck")
    synced = watcher("sync", "-c", str(config), cwd=elsewhere)
    assert synced.returncode == 0, synced.stdout + synced.stderr
    worker = Watcher("worker", "--processes", "1", "-c", str(config), cwd=elsewhere)
    try:
        await wait_for(lambda: len(ran_in(config)) >= 2 or exited(worker), 30, 0.1, what="runs")
    finally:
        code = worker.stop()
    assert code == 0, worker.output
    assert set(ran_in(config)) == {worker.process.pid}
    assert not worker.saying("cannot import"), worker.output


# -- the API --------------------------------------------------------------------------------------


@pytest.fixture
def fresh_path(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """sys.path and the plugin directories restored afterwards; modules the test imported
    (named `pathtest_*`) forgotten."""
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.setattr(registry, "_plugin_dirs", [])
    yield
    for name in [n for n in sys.modules if n.startswith("pathtest_")]:
        del sys.modules[name]


@pytest.mark.usefixtures("fresh_path")
def test_add_plugin_dir_puts_the_directory_first_once(tmp_path: Path) -> None:
    (tmp_path / "pathtest_one.py").write_text("def check(ctx): ...\n")
    add_plugin_dir(tmp_path)
    add_plugin_dir(str(tmp_path) + "/")
    add_plugin_dir(tmp_path / "sub" / "..")
    assert sys.path[0] == str(tmp_path)
    assert sys.path.count(str(tmp_path)) == 1
    assert plugin_dirs() == (str(tmp_path),)
    assert callable(load_check("pathtest_one:check"))


@pytest.mark.usefixtures("fresh_path")
def test_a_relative_directory_is_made_absolute(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    add_plugin_dir(".")
    assert plugin_dirs() == (str(tmp_path),) and sys.path[0] == str(tmp_path)


@pytest.mark.usefixtures("fresh_path")
def test_a_module_not_found_names_the_plugin_directories(tmp_path: Path) -> None:
    add_plugin_dir(tmp_path)
    with pytest.raises(PluginError) as caught:
        load_check("pathtest_missing:check", resource="r1")
    message = str(caught.value)
    assert message.startswith("check 'pathtest_missing:check' (resource 'r1'): cannot import")
    assert f"looked in {tmp_path} (the config file's directory), then on PYTHONPATH" in message
    assert "\n" not in message


@pytest.mark.usefixtures("fresh_path")
def test_a_missing_dependency_of_the_plugin_is_named_as_such(tmp_path: Path) -> None:
    (tmp_path / "pathtest_needy.py").write_text("import pathtest_not_installed\n")
    add_plugin_dir(tmp_path)
    with pytest.raises(PluginError) as caught:
        load_check("pathtest_needy:check")
    message = str(caught.value)
    assert message.endswith(
        "cannot import 'pathtest_needy': "
        "ModuleNotFoundError: No module named 'pathtest_not_installed'"
    )


@pytest.mark.usefixtures("fresh_path")
def test_a_missing_attribute_names_the_file_imported(tmp_path: Path) -> None:
    module = tmp_path / "pathtest_two.py"
    module.write_text("")
    add_plugin_dir(tmp_path)
    with pytest.raises(PluginError) as caught:
        load_check("pathtest_two:Nope")
    assert str(caught.value).endswith(f"'pathtest_two' has no attribute 'Nope' (from {module})")


@pytest.mark.usefixtures("fresh_path")
def test_a_worker_process_applies_its_plugin_dirs_before_serving(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[tuple[str, ...]] = []

    async def serve(options: WorkerProcess, reports: object) -> None:
        seen.append((sys.path[0], *plugin_dirs()))

    monkeypatch.setattr(supervisor, "_serve", serve)
    monkeypatch.setattr(supervisor, "setup_logging", lambda *args, **kwargs: None)
    options = WorkerProcess(redis_url="redis://unused", queue="q", plugin_dirs=(str(tmp_path),))
    supervisor.run_worker_process(options, reports=None)  # type: ignore[arg-type]
    assert seen == [(str(tmp_path), str(tmp_path))]
