"""The example third-party plugin: installed with pip, found through its entry point."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import logging
import shutil
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from pytest_httpx import HTTPXMock

from watcher.check import Check, CheckContext, CheckFailed, Resource, TransientCheckError
from watcher.http import make_client
from watcher.registry import available_checks, load_check

PLUGIN_SOURCE = Path(__file__).resolve().parent.parent / "examples" / "plugins"
URL = "https://example.test/changelog"


def _can_build_wheels_offline() -> bool:
    """setuptools builds wheels by itself from 70.1; before that it needs ``wheel``."""
    if importlib.util.find_spec("wheel") is not None:
        return True
    major, minor = importlib.metadata.version("setuptools").split(".")[:2]
    return (int(major), int(minor)) >= (70, 1)


@pytest.fixture(scope="module")
def plugin_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The plugin installed by pip into a private directory (not on sys.path yet)."""
    # Build from a copy: pip builds in place and would leave build/ and *.egg-info behind.
    source = tmp_path_factory.mktemp("src") / "plugin"
    shutil.copytree(
        PLUGIN_SOURCE, source, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__")
    )
    target = tmp_path_factory.mktemp("site")
    command = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-input"]
    command += ["--disable-pip-version-check", "--target", str(target), str(source)]
    if _can_build_wheels_offline():
        command.append("--no-build-isolation")
    # Otherwise pip fetches setuptools for an isolated build, as `pip install -e .` does.
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)
    if done.returncode:
        pytest.fail(f"pip install of the example plugin failed:\n{done.stdout}\n{done.stderr}")
    return target


@pytest.fixture
def installed(plugin_site: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    monkeypatch.syspath_prepend(str(plugin_site))
    yield plugin_site
    for name in [m for m in sys.modules if m.partition(".")[0] == "watcher_example"]:
        del sys.modules[name]


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with make_client(transport="httpx") as client:
        yield client


def context(check_client: httpx.AsyncClient, state: dict[str, Any], **options: Any) -> CheckContext:
    async def upsert(*, state: Any = None, every: float | None = None) -> bool:
        return True

    resource = Resource(id="changelog", url=URL, options=options)
    return CheckContext(resource, dict(state), check_client, logging.getLogger("test"), upsert)


def test_found_through_its_entry_point(installed: Path) -> None:
    assert "word-count" in available_checks()
    check = load_check("word-count")
    module = sys.modules[check.__module__]
    assert module.__file__ is not None
    assert Path(module.__file__).is_relative_to(installed)


def test_found_by_dotted_path(installed: Path) -> None:
    assert load_check("watcher_example.word_count:check") is load_check("word-count")


async def test_runs_against_a_mocked_page(
    installed: Path, httpx_mock: HTTPXMock, client: httpx.AsyncClient
) -> None:
    check: Check = load_check("word-count")
    page = "<html><style>p {{ color: red }}</style><body><p>{}</p></body></html>"
    httpx_mock.add_response(url=URL, html=page.format("one two three"))
    httpx_mock.add_response(url=URL, html=page.format("one two three four"))

    first = await check(context(client, {}))
    assert first.baseline and not first.changed
    assert first.state == {"words": 3}

    second = await check(context(client, first.state))
    assert second.changed
    assert second.summary == "3 → 4 words"
    assert second.state == {"words": 4}
    assert (second.old, second.new) == ({"words": 3}, {"words": 4})
    assert second.status_code == 200


async def test_min_delta_keeps_the_reported_count(
    installed: Path, httpx_mock: HTTPXMock, client: httpx.AsyncClient
) -> None:
    check = load_check("word-count")
    httpx_mock.add_response(url=URL, text="a b c d")
    result = await check(context(client, {"words": 3}, min_delta=5))
    assert not result.changed
    assert result.state == {"words": 3}


async def test_a_page_over_max_bytes_fails(
    installed: Path, httpx_mock: HTTPXMock, client: httpx.AsyncClient
) -> None:
    httpx_mock.add_response(url=URL, text="word " * 100)
    with pytest.raises(CheckFailed, match="body too large"):
        await load_check("word-count")(context(client, {"words": 1}, max_bytes=64))


@pytest.mark.parametrize(
    ("respond", "error"),
    [
        ({"status_code": 404}, CheckFailed),
        ({"status_code": 503}, TransientCheckError),
        ({"exception": httpx.ConnectError("refused")}, TransientCheckError),
    ],
)
async def test_errors(
    installed: Path,
    httpx_mock: HTTPXMock,
    client: httpx.AsyncClient,
    respond: dict[str, Any],
    error: type[Exception],
) -> None:
    if "exception" in respond:
        httpx_mock.add_exception(respond["exception"], url=URL)
    else:
        httpx_mock.add_response(url=URL, **respond)
    with pytest.raises(error) as caught:
        await load_check("word-count")(context(client, {"words": 1}))
    if error is CheckFailed:
        assert not isinstance(caught.value, TransientCheckError)
